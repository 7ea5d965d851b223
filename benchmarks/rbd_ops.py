"""Functions the RBD benchmark calls inside its workers (see worker.py); one open volume per worker.

``impl`` picks the access path to the same image:

* ``blocklink``: ``blocklink.connector_for("rbd").connect_volume(info).handle`` (RbdHandle)
* ``os-brick``: ``InitiatorConnector.factory("RBD", ...).connect_volume(data)["path"]``
  (os-brick's RBDVolumeIOWrapper)
* ``floor``: raw librbd, ``rbd.Image.read/write`` at explicit offsets, no file-like layer

Handles are used the way a consumer uses a file object: ``seek`` then ``write``/``read``.
"""

from __future__ import annotations

import random
import time
from typing import Any, Dict, List, Optional

_state: Dict[str, Any] = {}


def _open(impl: str, info: Dict[str, Any]) -> Dict[str, Any]:
    data = info["data"]
    if impl == "blocklink":
        import blocklink

        conn = blocklink.connector_for("rbd")
        dev = conn.connect_volume(info)
        return {"conn": conn, "dev": dev, "h": dev.handle}
    if impl == "os-brick":
        from os_brick.initiator import connector

        conn = connector.InitiatorConnector.factory("RBD", "sudo", do_local_attach=False)
        dev = conn.connect_volume(dict(data))
        return {"conn": conn, "dev": dev, "h": dev["path"]}
    if impl == "floor":
        import rados
        import rbd

        keyring = data["keyring"]
        key = [ln.split("=", 1)[1].strip() for ln in keyring.splitlines() if ln.strip().startswith("key")][0]
        mons = ",".join(f"{h}:{p}" for h, p in zip(data["hosts"], data["ports"]))
        cluster = rados.Rados(rados_id=data["auth_username"], conffile="/dev/null",
                              conf={"mon_host": mons, "key": key})
        cluster.connect()
        pool, image = data["name"].split("/", 1)
        ioctx = cluster.open_ioctx(pool)
        return {"cluster": cluster, "ioctx": ioctx, "image": rbd.Image(ioctx, image)}
    raise ValueError(f"unknown implementation {impl!r}")


def _close(impl: str, info: Dict[str, Any], s: Dict[str, Any]) -> None:
    if impl == "blocklink":
        s["conn"].disconnect_volume(info, s["dev"])
    elif impl == "os-brick":
        s["conn"].disconnect_volume(dict(info["data"]), s["dev"])
    else:
        s["image"].close()
        s["ioctx"].close()
        s["cluster"].shutdown()


def connect(impl: str, info: Dict[str, Any]) -> float:
    """Open the volume for the I/O calls below; returns the seconds connect_volume took."""
    if "s" in _state:
        raise RuntimeError("already connected")
    t0 = time.perf_counter()
    s = _open(impl, info)
    dt = time.perf_counter() - t0
    _state.update(impl=impl, info=info, s=s)
    return dt


def disconnect() -> float:
    t0 = time.perf_counter()
    _close(_state["impl"], _state["info"], _state.pop("s"))
    return time.perf_counter() - t0


def connect_cycle(impl: str, info: Dict[str, Any]) -> List[float]:
    """One connect_volume + disconnect_volume on a fresh connection: [connect s, disconnect s]."""
    t0 = time.perf_counter()
    s = _open(impl, info)
    t1 = time.perf_counter()
    _close(impl, info, s)
    return [t1 - t0, time.perf_counter() - t1]


def offsets(size: int, bs: int, count: int, seed: int) -> List[int]:
    rnd = random.Random(seed)
    return [rnd.randrange(0, size // bs) * bs for _ in range(count)]


def io(pattern: str, bs: int, size: int, count: int = 0, seed: int = 1, passes: int = 1) -> Dict[str, float]:
    """Run one sample; returns {"seconds": ..., "bytes": ..., "ops": ...}.

    ``seqwrite``/``seqread``: ``passes`` times ``size`` bytes from offset 0 in ``bs`` blocks; ``randwrite``/
    ``randread``: ``count`` ops of ``bs`` at random ``bs``-aligned offsets (same seed = same offsets
    for every implementation). Writes end with a flush (included in the time).
    """
    impl, s = _state["impl"], _state["s"]
    buf = bytes(random.Random(seed).getrandbits(8) for _ in range(min(bs, 4096))) * max(1, bs // 4096)
    buf = buf[:bs]
    if pattern.startswith("seq"):
        offs = list(range(0, size - size % bs, bs)) * passes
    else:
        offs = offsets(size, bs, count, seed)
    write = pattern.endswith("write")
    got = 0
    if impl == "floor":
        img = s["image"]
        t0 = time.perf_counter()
        if write:
            for off in offs:
                img.write(buf, off)
            img.flush()
        else:
            for off in offs:
                got += len(img.read(off, bs))
        dt = time.perf_counter() - t0
    else:
        h = s["h"]
        t0 = time.perf_counter()
        if pattern.startswith("seq"):
            for off in offs:
                if off == 0:
                    h.seek(0)  # each pass starts over at the beginning
                if write:
                    h.write(buf)
                else:
                    got += len(h.read(bs))
            if write:
                h.flush()
        else:
            if write:
                for off in offs:
                    h.seek(off)
                    h.write(buf)
                h.flush()
            else:
                for off in offs:
                    h.seek(off)
                    got += len(h.read(bs))
        dt = time.perf_counter() - t0
    if not write and got != len(offs) * bs:
        raise RuntimeError(f"{impl} read {got} bytes, expected {len(offs) * bs}")
    return {"seconds": dt, "bytes": float(len(offs) * bs), "ops": float(len(offs))}


def checksum(size: int, bs: int = 4 << 20) -> Optional[str]:
    """sha256 of the whole image read through this worker's access path (all paths must agree)."""
    import hashlib

    impl, s = _state["impl"], _state["s"]
    hsh = hashlib.sha256()
    for off in range(0, size, bs):
        n = min(bs, size - off)
        if impl == "floor":
            hsh.update(s["image"].read(off, n))
        else:
            s["h"].seek(off)
            hsh.update(s["h"].read(n))
    return hsh.hexdigest()
