"""``blocklink demo``: the attach sequence on throwaway local backends, printed step by step.

Starts a real single-node Ceph cluster on 127.0.0.1 (cephx on), creates a volume, walks the seed's
sequence for it (connector properties → initialize_connection → connect_volume → I/O →
disconnect_volume → terminate_connection), checks that nothing is left, and tears everything down.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, TypeVar

T = TypeVar("T")


class Narrator:
    """Prints numbered steps with their duration; records them for the JSON summary."""

    def __init__(self, stream: Any = sys.stdout) -> None:
        self.stream = stream
        self.steps: List[Dict[str, Any]] = []

    def step(self, title: str, fn: Callable[[], T], show: Callable[[T], str] = lambda r: "") -> T:
        n = len(self.steps) + 1
        self.stream.write(f"[{n:2d}] {title} ... ")
        self.stream.flush()
        t0 = time.monotonic()
        try:
            result = fn()
        except BaseException as e:
            self.stream.write(f"FAILED ({type(e).__name__}: {e})\n")
            self.steps.append({"step": title, "ok": False, "error": str(e)})
            raise
        ms = (time.monotonic() - t0) * 1000
        detail = show(result)
        self.stream.write(f"ok ({ms:.0f} ms)\n")
        for line in detail.splitlines():
            self.stream.write(f"       {line}\n")
        self.steps.append({"step": title, "ok": True, "ms": round(ms, 1)})
        return result

    def note(self, text: str) -> None:
        self.stream.write(f"     {text}\n")


def _masked(d: Dict[str, Any]) -> str:
    data = dict(d.get("data", d))
    for k in ("keyring", "auth_password", "discovery_auth_password"):
        if k in data:
            data[k] = "***"
    return json.dumps({"driver_volume_type": d.get("driver_volume_type"), "data": data}, indent=1, sort_keys=True)


def rbd_demo(say: Narrator, stack: ExitStack) -> None:
    import blocklink
    from blocklink.testing.ceph import CephCluster

    ceph = say.step("start a throwaway Ceph cluster (mon + osd, cephx, 127.0.0.1)", CephCluster.start,
                    lambda c: f"{c.conffile}  mon port {c.mon_port}")
    stack.callback(lambda: say.step("stop the Ceph cluster (daemons by PID, directory removed)", ceph.stop))
    target = ceph.rbd_target(include_keyring=True, secret_uuid="b0b0b0b0-0000-4000-8000-000000000001")
    stack.callback(target.close)
    vid = "demo-" + os.urandom(3).hex()
    say.step(f"create volume {vid} (64 MiB RBD image)", lambda: target.create_volume(vid, 64 << 20),
             lambda name: f"{ceph.pool}/{name}")
    props = say.step("get_connector_properties() on this host", lambda: blocklink.get_connector_properties(
        ip="127.0.0.1"), lambda p: ", ".join(f"{k}={p[k]}" for k in ("host", "ip", "initiator", "multipath") if k in p))
    info = say.step("initialize_connection (target side → os-brick/Cinder connection info)",
                    lambda: target.initialize_connection(vid, props), lambda i: _masked(i.to_dict()))
    conn = blocklink.connector_for("rbd")
    dev = say.step("connect_volume (librbd handle)", lambda: conn.connect_volume(info.to_dict()),
                   lambda d: repr(d.handle))
    data = os.urandom(4 << 20)

    def write_read() -> str:
        dev.handle.seek(8 << 20)
        dev.handle.write(data)
        dev.handle.flush()
        dev.handle.seek(8 << 20)
        back = dev.handle.read(len(data))
        if back != data:
            raise RuntimeError("read back differs from what was written")
        return hashlib.sha256(back).hexdigest()[:16]

    say.step("write 4 MiB at offset 8 MiB, flush, read back", write_read, lambda h: f"sha256 {h}… identical")
    say.step("watchers on the image while attached", lambda: ceph.watchers(f"volume-{vid}"),
             lambda w: f"{len(w)} watcher(s)")
    say.step("extend the volume to 128 MiB (target) and extend_volume (host)",
             lambda: (target.extend_volume(vid, 128 << 20), conn.extend_volume(info))[1],
             lambda size: f"host sees {size} bytes")
    say.step("disconnect_volume", lambda: conn.disconnect_volume(info, dev))
    w = say.step("watchers on the image after detach", lambda: ceph.watchers(f"volume-{vid}"),
                 lambda w: f"{len(w)} watcher(s)")
    if w:
        raise RuntimeError(f"image still has watchers after detach: {w}")
    say.step("terminate_connection (RBD: nothing to undo)", lambda: target.terminate_connection(vid, props))
    say.step(f"delete volume {vid}", lambda: target.delete_volume(vid))


DEMOS: Dict[str, Callable[[Narrator, ExitStack], None]] = {"rbd": rbd_demo}


def run(which: List[str], stream: Any = sys.stdout) -> Dict[str, Any]:
    say = Narrator(stream)
    results: Dict[str, Any] = {}
    for name in which:
        stream.write(f"\n=== {name} volume ===\n")
        with ExitStack() as stack:
            DEMOS[name](say, stack)
        results[name] = "ok"
    return {"demos": results, "steps": say.steps}


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="walk the attach sequence on throwaway local backends")
    p.add_argument("--only", choices=sorted(DEMOS), action="append", help="run only this demo (repeatable)")
    p.add_argument("--json", action="store_true", help="also print a JSON summary of the steps")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    summary = run(args.only or list(DEMOS))
    sys.stdout.write("\nall demo steps succeeded; everything was cleaned up\n")
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0
