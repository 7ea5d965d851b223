"""Nova's LibvirtISCSIVolumeDriver connect + disconnect in the real-kernel guest, on blocklink's os-brick
facade and on the real os-brick (benchmarks/nova_guest.py starts it through guest_tasks.py).

:func:`task_nova_iscsi` runs in the guest: it starts iscsid, exports one LIO volume (fileio, 16 MiB,
CHAP) and two Nova service interpreters of the compat virtualenv (``python -m tests.compat.scenarios
serve``: Nova 34.0.0 imported once each; one with ``activate()``, one on the real os-brick). Each round
asks both, in rotating order, for ``nova_volume_driver`` connect then disconnect of that volume; the
times are the ones the scenario measures around Nova's ``connect_volume`` and ``disconnect_volume``
calls (not the configuration parsing around them). No session or SCSI disk may remain after a round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict

from benchmarks.iscsi_ops import _check_clean

LIBS = {"blocklink": True, "os-brick": False}  # implementation -> facade?


class Service:
    """One ``tests.compat.scenarios serve`` interpreter: a request per JSON line, a reply per line."""

    def __init__(self, python: str, work: str, name: str) -> None:
        self.locks = os.path.join(work, f"locks-{name}")
        os.makedirs(self.locks)
        self.err = open(os.path.join(work, f"service-{name}.log"), "w")
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        self.proc = subprocess.Popen([python, "-m", "tests.compat.scenarios", "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)

    def __call__(self, name: str, **args: Any) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"name": name, "args": dict(args, lock_path=self.locks)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        reply: Dict[str, Any] = json.loads(line) if line.strip() else {"error": f"exited with {self.proc.wait()}"}
        if "error" in reply:
            raise RuntimeError(f"scenario {name}: {reply['error']} (see {self.err.name})")
        result: Dict[str, Any] = reply["result"]
        return result

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def task_nova_iscsi(args: argparse.Namespace) -> Dict[str, Any]:
    from benchmarks.guest_tasks import PORTAL, backing_files, modprobe
    from blocklink.target.lio import LioTarget
    from tests.harness.guest.daemons import Iscsid

    modprobe("target_core_mod", "target_core_file", "iscsi_target_mod", "iscsi_tcp", "sd_mod")
    work = tempfile.mkdtemp(prefix="bench-nova.")
    (path,) = backing_files(work, 1, 16 << 20)
    iscsid = Iscsid(log_path=os.path.join(work, "iscsid.log")).start()
    target = LioTarget(portals=[f"{PORTAL[0]}:{PORTAL[1]}"], backstore="fileio",
                       lock_path=os.path.join(work, "target-locks"))
    services: Dict[str, Service] = {}
    result: Dict[str, Any] = {impl: {"connect": [], "disconnect": []} for impl in LIBS}
    vid, conn = "novabench", None
    try:
        for impl in LIBS:
            services[impl] = Service(args.compat_python, work, impl)
        # Nova's own connector (LibvirtDriver.get_volume_connector) for the export; imports Nova in each
        conns = {impl: s("nova_volume_connector", facade=LIBS[impl])["connector"] for impl, s in services.items()}
        conn = conns["blocklink"]
        target.create_export(vid, path)
        info = target.initialize_connection(vid, conn).to_dict()
        ci = {"driver_volume_type": "iscsi", "serial": vid, "data": info["data"]}
        disk = {"bus": "virtio", "dev": "vdb", "type": "disk"}
        order = list(LIBS)
        for r in range(-1, args.reps):  # round -1: untimed warm-up (first login, node DB, lazy imports)
            k = max(r, 0) % len(order)
            for impl in order[k:] + order[:k]:
                s, facade = services[impl], LIBS[impl]
                c = s("nova_volume_driver", facade=facade, driver="iscsi.LibvirtISCSIVolumeDriver", step="connect",
                      connection_info=json.loads(json.dumps(ci)), disk_info=disk)
                if not c["library"].startswith("blocklink" if facade else "os_brick"):
                    raise RuntimeError(f"{impl}: the scenario ran on {c['library']}")
                d = s("nova_volume_driver", facade=facade, driver="iscsi.LibvirtISCSIVolumeDriver",
                      step="disconnect", connection_info=c["connection_info"])
                _check_clean(f"{impl} round {r}")
                if r >= 0:
                    result[impl]["connect"].append(c["seconds"])
                    result[impl]["disconnect"].append(d["seconds"])
                print(f"nova round {r} {impl}: {c['seconds']:.2f} s / {d['seconds']:.2f} s", file=sys.stderr,
                      flush=True)
    finally:
        for s in services.values():
            s.close()
        if conn is not None:
            try:
                target.terminate_connection(vid, conn)
                target.remove_export(vid)
            except Exception as e:  # report, keep cleaning
                print(f"cleanup of {vid}: {e}", file=sys.stderr)
        iscsid.stop()
    result["reps"] = args.reps
    return result


__all__ = ["task_nova_iscsi"]
