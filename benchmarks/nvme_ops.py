"""NVMe/TCP connect+disconnect in the real-kernel guest: blocklink vs the nvme-cli path (the floor).

:func:`task_nvme` runs in the guest (guest_tasks.py): it loads the modules, exports one volume with
blocklink's NvmetTarget on 127.0.0.1:4420 (nvmet-tcp over loopback, a file on tmpfs) and allows this
host's NQN, then alternates, repetition by repetition in rotating order:

* ``blocklink``: ``connector_for("nvmeof").connect_volume(info)`` / ``disconnect_volume`` — one write to
  /dev/nvme-fabrics, the namespace found by its UUID, controller deleted through sysfs; no child process
* ``floor``: what os-brick runs: ``nvme connect -t tcp -a ADDR -s PORT -n NQN -q HOSTNQN -I HOSTID``,
  then waiting for the namespace's block device (its ``wwid`` in /sys/block, the /dev node), then
  ``nvme disconnect -n NQN``

Both connect with the same host NQN and host ID to the same subsystem. After every connect the path is
checked to be a block device; after every disconnect no NVMe controller may be left (checked).
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

IMPLS = ("blocklink", "floor")
NVME_MODULES = ("nvmet", "nvmet-tcp", "nvme-tcp", "nvme-fabrics")
ADDR, PORT = "127.0.0.1", 4420


def _controllers() -> List[str]:
    return sorted(os.listdir("/sys/class/nvme")) if os.path.isdir("/sys/class/nvme") else []


def _is_disk(path: Optional[str]) -> bool:
    try:
        return bool(path) and stat.S_ISBLK(os.stat(str(path)).st_mode)
    except OSError:
        return False


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _nvme(*args: str) -> str:
    p = subprocess.run(["nvme", *args], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"nvme {args[0]}: exit {p.returncode}: {p.stderr.strip()[:300]}")
    return p.stdout


def _wait_namespace(uuid: str, timeout: float = 60.0) -> str:
    """The /dev node of the namespace whose wwid is ``uuid.<uuid>`` (sysfs polled every 2 ms, as a
    script does; os-brick polls the same way, with longer sleeps)."""
    deadline = time.monotonic() + timeout
    want = f"uuid.{uuid}"
    while time.monotonic() < deadline:
        for name in os.listdir("/sys/block"):
            if name.startswith("nvme") and _read(f"/sys/block/{name}/wwid") == want and _is_disk(f"/dev/{name}"):
                return f"/dev/{name}"
        time.sleep(0.002)
    raise RuntimeError(f"no block device for namespace {uuid} after {timeout:.0f} s")


def floor_connect(info: Dict[str, Any], hostnqn: str, hostid: str) -> str:
    d = info["data"]
    addr, port, transport = d["portals"][0]
    _nvme("connect", "-t", transport, "-a", addr, "-s", str(port), "-n", d["target_nqn"], "-q", hostnqn,
          "-I", hostid)
    return _wait_namespace(d["vol_uuid"])


def floor_disconnect(info: Dict[str, Any]) -> None:
    _nvme("disconnect", "-n", info["data"]["target_nqn"])


def _check_clean(when: str) -> None:
    left = _controllers()
    if left:
        raise RuntimeError(f"after {when}: NVMe controllers {left} remain")


def task_nvme(args: argparse.Namespace) -> Dict[str, Any]:
    from benchmarks.guest_tasks import modprobe
    from blocklink.connection import HostConnector
    from blocklink.initiator.nvmeof import NVMeOFConnector
    from blocklink.registry import connector_for
    from blocklink.target.nvmet import NvmetTarget

    modprobe(*NVME_MODULES)
    _check_clean("start")
    work = tempfile.mkdtemp(prefix="bench-nvme.", dir="/run")  # tmpfs: nvmet cannot serve overlayfs files
    target = NvmetTarget(portals=[f"{ADDR}:{PORT}"], backing_dir=work, lock_path=os.path.join(work, "target-locks"))
    conn = connector_for("nvmeof", run_dir=os.path.join(work, "run"), timeout=60.0)
    assert isinstance(conn, NVMeOFConnector)
    props = conn.get_connector_properties()
    hostnqn, hostid = props["nqn"], props.get("nvme_hostid") or ""
    if not hostid:
        raise RuntimeError("the guest has no /etc/nvme/hostid (nvme-cli and blocklink must send the same one)")
    vid = "bench-nvme-0001"
    result: Dict[str, Any] = {impl: {"connect": [], "disconnect": [], "total": []} for impl in IMPLS}
    result["kernel"] = os.uname().release
    result["nvme_cli"] = _nvme("version").splitlines()[0].strip()
    try:
        target.create_export(vid, size=16 << 20)
        info = target.initialize_connection(vid, HostConnector.from_dict({"host": "blguest", **props})).to_dict()

        def one(impl: str) -> Dict[str, float]:
            t0 = time.perf_counter()
            if impl == "blocklink":
                dev = conn.connect_volume(info)
                path: Optional[str] = dev.path
            else:
                path = floor_connect(info, hostnqn, hostid)
            t1 = time.perf_counter()
            if not _is_disk(path):
                raise RuntimeError(f"{impl}: {path} is not a block device")
            t2 = time.perf_counter()
            if impl == "blocklink":
                conn.disconnect_volume(info, dev)
            else:
                floor_disconnect(info)
            t3 = time.perf_counter()
            _check_clean(f"{impl} disconnect")
            return {"connect": t1 - t0, "disconnect": t3 - t2, "total": (t1 - t0) + (t3 - t2)}

        for impl in IMPLS:  # warm-up: first connect, lazy imports, nvme-cli from the 9p root into the page cache
            one(impl)
        for r in range(args.reps):
            k = r % len(IMPLS)
            for impl in IMPLS[k:] + IMPLS[:k]:
                m = one(impl)
                for key, v in m.items():
                    result[impl][key].append(v)
                print(f"nvme rep {r} {impl}: connect {m['connect']:.3f} s, disconnect {m['disconnect']:.3f} s",
                      file=sys.stderr, flush=True)
    finally:
        try:
            if _controllers():
                subprocess.run(["nvme", "disconnect-all"], capture_output=True, timeout=120)
            for volume in target.list_exports():
                target.remove_export(volume)
        except Exception as e:  # report, the result is still printed
            print(f"cleanup: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return result
