"""iSCSI attach/detach in the real-kernel guest: blocklink vs os-brick vs raw iscsiadm (the floor).

:func:`task_iscsi` runs in the guest (guest_tasks.py): it loads the modules, starts iscsid, makes
the LIO exports with blocklink's LioTarget (the same targets for all three initiators), and drives
three long-lived workers (worker.py), one per implementation, in rotating order:

* ``blocklink``: ``blocklink.connector_for("iscsi").connect_volume(info)`` / ``disconnect_volume``
* ``os-brick``: ``InitiatorConnector.factory("ISCSI", ...)`` from its own venv, set up as a consumer
  must (oslo.config parsed, ``os_brick.setup``, lock_path, privsep in-process as root)
* ``floor``: raw ``iscsiadm`` (node new, CHAP settings, login; logout, node delete) and waiting
  for the by-path link with ``udevadm wait``; concurrent iscsiadm runs can collide on the node
  database (exit 6), which any caller must retry, so the floor retries those

The worker functions (setup, attach_detach) are below as well.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

IMPLS = ("blocklink", "os-brick", "floor")
_st: Dict[str, Any] = {}


# ---------------------------------------------------------------------------------- in the workers
def setup(impl: str, lock_dir: str) -> str:
    """Build this worker's connector; returns a description of how it was set up."""
    _st["impl"] = impl
    if impl == "blocklink":
        import blocklink

        _st["conn"] = blocklink.connector_for("iscsi")  # its defaults (locks under /run/blocklink)
        return "connector_for('iscsi')"
    if impl == "os-brick":
        from oslo_config import cfg

        cfg.CONF(args=[], project="blocklink-bench", default_config_files=[])
        import os_brick
        from os_brick import privileged
        from os_brick.initiator import connector

        os_brick.setup(cfg.CONF)
        cfg.CONF.set_override("lock_path", lock_dir, group="oslo_concurrency")
        for ctx in (privileged.default, privileged.brick_privsep_hide_output):
            ctx.set_client_mode(False)
        _st["conn"] = connector.InitiatorConnector.factory("ISCSI", "sudo", use_multipath=False)
        return "os_brick.setup(CONF); lock_path; privsep in-process; factory('ISCSI', use_multipath=False)"
    if impl == "floor":
        return "iscsiadm + udevadm wait"
    raise ValueError(f"unknown implementation {impl!r}")


def _by_path(info: Dict[str, Any]) -> str:
    d = info["data"]
    return f"/dev/disk/by-path/ip-{d['target_portal']}-iscsi-{d['target_iqn']}-lun-{d['target_lun']}"


ISCSI_ERR_IDBM = 6  # iscsiadm: node database busy/failed (concurrent iscsiadm processes)


ISCSI_ERR_NO_OBJS_FOUND = 21


def _iscsiadm(*args: str, tries: int = 20) -> None:
    for attempt in range(tries):
        p = subprocess.run(["iscsiadm", *args], capture_output=True, text=True)
        if p.returncode == 0 or (attempt > 0 and p.returncode == ISCSI_ERR_NO_OBJS_FOUND):
            return  # (an earlier attempt that reported the collision had done the job)
        if p.returncode != ISCSI_ERR_IDBM or attempt == tries - 1:
            break
        time.sleep(0.05 * (attempt + 1))  # bounded: concurrent iscsiadm runs collide on the node database
    nodes = sorted(os.listdir("/etc/iscsi/nodes")) if os.path.isdir("/etc/iscsi/nodes") else []
    shown = [("***" if i and args[i - 1] == "-v" else a) for i, a in enumerate(args)]  # values may be secrets
    raise RuntimeError(f"iscsiadm {' '.join(shown)[:200]}: exit "
                       f"{p.returncode} after {attempt + 1} tries: {p.stderr.strip()} ({len(nodes)} node records left)")


def _floor_attach(info: Dict[str, Any]) -> str:
    d = info["data"]
    node = ["-m", "node", "-T", d["target_iqn"], "-p", d["target_portal"]]
    _iscsiadm(*node, "--op", "new")
    _iscsiadm(*node, "--op", "update", "-n", "node.session.auth.authmethod", "-v", "CHAP")
    _iscsiadm(*node, "--op", "update", "-n", "node.session.auth.username", "-v", d["auth_username"])
    # a throwaway password for a throwaway guest target: the raw tool can only take it on argv
    _iscsiadm(*node, "--op", "update", "-n", "node.session.auth.password", "-v", d["auth_password"])
    _iscsiadm(*node, "--login")
    link = _by_path(info)
    p = subprocess.run(["udevadm", "wait", "--timeout=60", link], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"udevadm wait {link}: {p.stderr.strip()}")
    return os.path.realpath(link)


def _floor_detach(info: Dict[str, Any]) -> None:
    d = info["data"]
    node = ["-m", "node", "-T", d["target_iqn"], "-p", d["target_portal"]]
    _iscsiadm(*node, "--logout")
    _iscsiadm(*node, "--op", "delete")


def _attach(info: Dict[str, Any]) -> Tuple[str, Any]:
    impl = _st["impl"]
    if impl == "blocklink":
        dev = _st["conn"].connect_volume(info)
        return dev.path, dev
    if impl == "os-brick":
        dev = _st["conn"].connect_volume(dict(info["data"]))
        return dev["path"], dev
    path = _floor_attach(info)
    return path, path


def _detach(info: Dict[str, Any], dev: Any) -> None:
    impl = _st["impl"]
    if impl == "blocklink":
        _st["conn"].disconnect_volume(info, dev)
    elif impl == "os-brick":
        _st["conn"].disconnect_volume(dict(info["data"]), dev)
    else:
        _floor_detach(info)


def _is_disk(path: Optional[str]) -> bool:
    import stat

    try:
        return bool(path) and stat.S_ISBLK(os.stat(str(path)).st_mode)
    except OSError:
        return False


def _parallel(fn: Any, items: List[Any]) -> Tuple[float, List[Any]]:
    """Run fn(item) in one thread per item, released together; (wall seconds, results)."""
    results: List[Any] = [None] * len(items)
    errors: List[BaseException] = []
    start = threading.Barrier(len(items) + 1)

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(items[i])
        except BaseException as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(items)} failed; first: {type(errors[0]).__name__}: {errors[0]}")
    return dt, results


def attach_detach(infos: List[Dict[str, Any]], concurrent: bool = False) -> Dict[str, Any]:
    """Attach every volume (one at a time, or all at once from one thread each), check each is a block
    device, then detach them all the same way; returns the two wall times and the device paths."""
    if concurrent and len(infos) > 1:
        t_att, attached = _parallel(_attach, infos)
    else:
        t0 = time.perf_counter()
        attached = [_attach(i) for i in infos]
        t_att = time.perf_counter() - t0
    paths = [p for p, _ in attached]
    bad = [p for p in paths if not _is_disk(p)]
    if bad or len(set(paths)) != len(paths):
        raise RuntimeError(f"{_st['impl']}: attached paths are not distinct block devices: {paths}")
    # blocklink hands the disk out once it can be opened; udev may still be probing it (blkid,
    # scsi_id, links), which the floor and os-brick wait for. Left running, that work lands in the
    # next timing: each detach starts from an idle udev, and the wait is reported on its own.
    t_settle = _settle()
    pairs = list(zip(infos, [d for _, d in attached]))
    if concurrent and len(infos) > 1:
        t_det, _ = _parallel(lambda pair: _detach(*pair), pairs)
    else:
        t0 = time.perf_counter()
        for info, dev in pairs:
            _detach(info, dev)
        t_det = time.perf_counter() - t0
    _settle()  # the removals' udev work stays out of the next round as well
    return {"attach": t_att, "settle": t_settle, "detach": t_det, "paths": paths}


def _settle() -> float:
    """Wait until udev's queue is empty; the seconds it took."""
    t0 = time.perf_counter()
    p = subprocess.run(["udevadm", "settle", "--timeout=300"], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"udevadm settle: exit {p.returncode}: {p.stderr.strip()}")
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------- the guest task
def _sessions() -> List[str]:
    p = subprocess.run(["iscsiadm", "-m", "session"], capture_output=True, text=True)
    return [ln for ln in p.stdout.splitlines() if ln.strip()] if p.returncode == 0 else []


def _scsi_disks() -> List[str]:
    return sorted(d for d in os.listdir("/sys/block") if d.startswith("sd"))


def task_iscsi(args: argparse.Namespace) -> Dict[str, Any]:
    from benchmarks.guest_tasks import CONNECTOR, PORTAL, backing_files, modprobe
    from benchmarks.worker import Worker
    from blocklink.target.lio import LioTarget
    from tests.harness.guest.daemons import Iscsid

    modprobe("target_core_mod", "target_core_file", "iscsi_target_mod", "iscsi_tcp", "sd_mod")
    work = tempfile.mkdtemp(prefix="bench-iscsi.")
    n = max(1, args.concurrency)
    paths = backing_files(work, n, 16 << 20)
    iscsid = Iscsid(log_path=os.path.join(work, "iscsid.log")).start()
    target = LioTarget(portals=[f"{PORTAL[0]}:{PORTAL[1]}"], backstore="fileio",
                       lock_path=os.path.join(work, "target-locks"))
    workers: Dict[str, Worker] = {}
    vids = [f"bench{i:02d}" for i in range(n)]
    impls = [i for i in IMPLS if i in args.impls.split(",")]
    result: Dict[str, Any] = {"single": {i: {"attach": [], "settle": [], "detach": []} for i in impls},
                              "concurrent": {i: {"attach": [], "settle": [], "detach": []} for i in impls},
                              "setup": {}, "concurrency": n}
    try:
        infos = []
        for vid, path in zip(vids, paths):
            target.create_export(vid, path)
            infos.append(target.initialize_connection(vid, CONNECTOR).to_dict())
        pythons = {"blocklink": sys.executable, "os-brick": args.osbrick_python, "floor": sys.executable}
        for impl in impls:
            py = pythons[impl]
            workers[impl] = Worker(py, impl, os.path.join(work, f"worker-{impl}.log"), os.getcwd())
            result["setup"][impl] = workers[impl].call("benchmarks.iscsi_ops:setup", impl=impl,
                                                       lock_dir=os.path.join(work, f"locks-{impl}"))
        for w in workers.values():  # warm-up: first login, node DB, lazy imports
            w.call("benchmarks.iscsi_ops:attach_detach", infos=infos[:1])
        _check_clean("warm-up")
        order = list(impls)
        for kind, reps, batch, conc in (("single", args.reps, infos[:1], False),
                                        ("concurrent", args.creps, infos, True)):
            for r in range(reps):
                k = r % len(order)
                for impl in order[k:] + order[:k]:
                    res = workers[impl].call("benchmarks.iscsi_ops:attach_detach", infos=batch, concurrent=conc)
                    _check_clean(f"{impl} {kind} round {r}")
                    result[kind][impl]["attach"].append(res["attach"])
                    result[kind][impl]["settle"].append(res["settle"])
                    result[kind][impl]["detach"].append(res["detach"])
                    print(f"{kind} {r} {impl}: {res['attach']:.2f} s / {res['detach']:.2f} s", file=sys.stderr,
                          flush=True)
    finally:
        for w in workers.values():
            w.close()
        for vid in vids:
            try:
                target.terminate_connection(vid, CONNECTOR)
                target.remove_export(vid)
            except Exception as e:  # report, keep cleaning
                print(f"cleanup of {vid}: {e}", file=sys.stderr)
        iscsid.stop()
    return result


def _check_clean(when: str) -> None:
    s, d = _sessions(), _scsi_disks()
    if s or d:
        raise RuntimeError(f"after {when}: sessions {s} / disks {d} remain")
