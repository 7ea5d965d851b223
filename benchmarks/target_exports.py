"""Target side: 100 exports + initialize_connection, then their teardown, against the raw tool calls.

os-brick has no target side (Cinder's target helpers live in Cinder), so the comparison here is
blocklink against the floor: the bare tool sequence that makes the same exports.

* tgtd (on this host): :class:`blocklink.target.tgt.TgtTarget` on a throwaway
  :class:`blocklink.testing.tgt.TgtDaemon`, against the ``tgtadm`` sequence per volume (new
  target, new LUN, LUN scsi_id/scsi_sn, new CHAP account, bind it, bind the initiator name; and
  for teardown: unbind the initiator, delete the target with --force, delete the account).
* LIO (in the real-kernel guest): :class:`blocklink.target.lio.LioTarget` against rtslib-fb called
  directly; see target_lio.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
import traceback
from typing import Any, List, Tuple

from benchmarks.context import Context
from benchmarks.model import BLOCKLINK, FLOOR, Outcome

TITLE = "target side"
INITIATOR = "iqn.2004-10.org.debian:01:blocklink-bench"
CONNECTOR = {"host": "bench-host", "initiator": INITIATOR, "ip": "127.0.0.1", "platform": "x86_64",
             "os_type": "linux", "multipath": False}
IQN_PREFIX = "iqn.2010-10.org.openstack:"


def _tgtadm(port: int, *args: str) -> None:
    p = subprocess.run(["tgtadm", "-C", str(port), "--lld", "iscsi", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"tgtadm {' '.join(args[:4])} failed: {p.stderr.strip()}")


def floor_export(port: int, tid: int, vid: str, path: str, initiator: str = INITIATOR) -> Tuple[str, str, str]:
    """Cinder-tgtadm-equivalent export + initialize_connection with raw tgtadm calls (the floor of this
    row and of attach_flow's iSCSI row); returns (iqn, CHAP user, CHAP password)."""
    iqn = f"{IQN_PREFIX}volume-{vid}"
    user = "u" + secrets.token_hex(8)
    password = secrets.token_urlsafe(15)  # throwaway, for this throwaway tgtd only
    _tgtadm(port, "--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
    _tgtadm(port, "--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1", "-b", path)
    _tgtadm(port, "--op", "update", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1",
            "--params", f"scsi_id={vid},scsi_sn={vid}")
    _tgtadm(port, "--op", "new", "--mode", "account", "--user", user, "--password", password)
    _tgtadm(port, "--op", "bind", "--mode", "account", "--tid", str(tid), "--user", user)
    _tgtadm(port, "--op", "bind", "--mode", "target", "--tid", str(tid), "--initiator-name", initiator)
    return iqn, user, password


def floor_unexport(port: int, tid: int, user: str, initiator: str = INITIATOR) -> None:
    _tgtadm(port, "--op", "unbind", "--mode", "target", "--tid", str(tid), "--initiator-name", initiator)
    _tgtadm(port, "--op", "delete", "--mode", "target", "--tid", str(tid), "--force")
    _tgtadm(port, "--op", "delete", "--mode", "account", "--user", user)


def _missing_tgt() -> str:
    for tool in ("tgtd", "tgtadm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package tgt)"
    try:
        import blocklink.target.tgt  # noqa: F401
        import blocklink.testing.tgt  # noqa: F401
    except ImportError as e:
        return f"blocklink's tgt target helper is not importable: {e}"
    return ""


def run_tgt(ctx: Context, out: Outcome) -> None:
    why = _missing_tgt()
    if why:
        out.skip(why, "target side, tgtd")
        return
    from blocklink.testing.tgt import TgtDaemon

    n = 100 if not ctx.quick else 20
    reps = ctx.reps(5, 2)
    files = tempfile.mkdtemp(prefix="blocklink-bench-tgt.")
    daemon: Any = None
    try:
        paths = []
        for i in range(n):
            p = os.path.join(files, f"disk{i:03d}")
            with open(p, "wb") as f:
                f.truncate(1 << 20)
            paths.append(p)
        daemon = TgtDaemon.start()
        target = daemon.target()
        create = out.row(f"tgtd: {n} × (create_export + initialize_connection)", "s",
                         note="floor: 6 tgtadm calls per volume")
        remove = out.row(f"tgtd: {n} × (terminate_connection + remove_export)", "s",
                         note="floor: 3 tgtadm calls per volume")
        for r in range(-1, reps):  # round -1: a 2-volume warm-up (first-use imports), not recorded
            order = [BLOCKLINK, FLOOR] if r % 2 == 0 else [FLOOR, BLOCKLINK]
            for impl in order:
                vids = [f"bench-{impl[0]}{r + 1}-{i:03d}" for i in range(n if r >= 0 else 2)]
                if impl == BLOCKLINK:
                    t0 = time.perf_counter()
                    for vid, path in zip(vids, paths):
                        target.create_export(vid, path)
                        target.initialize_connection(vid, CONNECTOR)
                    t1 = time.perf_counter()
                    for vid in vids:
                        target.terminate_connection(vid, CONNECTOR)
                        target.remove_export(vid)
                    t2 = time.perf_counter()
                else:
                    port = daemon.control_port
                    t0 = time.perf_counter()
                    users: List[str] = [floor_export(port, i + 1, vid, path)[1]
                                        for i, (vid, path) in enumerate(zip(vids, paths))]
                    t1 = time.perf_counter()
                    for i, user in enumerate(users):
                        floor_unexport(port, i + 1, user)
                    t2 = time.perf_counter()
                left = daemon.admin.show_targets()
                if left:
                    raise RuntimeError(f"{impl} left {len(left)} targets behind on tgtd")
                if r < 0:
                    continue
                create.add(impl, t1 - t0)
                remove.add(impl, t2 - t1)
            if r >= 0:
                ctx.log(f"tgtd repetition {r + 1}/{reps} done")
        out.notes.append(
            f"tgtd: one throwaway tgtd (`tgtd -f -C <port>`, portal on 127.0.0.1), {n} sparse 1 MiB backing "
            f"files, CHAP on every export, the initiator name ACL added by initialize_connection. {reps} "
            f"repetitions alternating which side goes first; every repetition ends with tgtd empty (checked). "
            f"blocklink talks to tgtd's management socket in-process (no tgtadm processes, no CHAP password on "
            f"any command line); the floor runs `tgtadm` {6 * n} times for the exports and {3 * n} for the "
            f"teardown, with throwaway random CHAP passwords on tgtadm's command line (the exposure blocklink "
            f"avoids). blocklink reads tgtd's state once per call (and again after an unbind, for sessions that "
            f"logged in meanwhile) and writes a durable 0600 export record per volume (file and directory fsync).")
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(files, ignore_errors=True)


def run(ctx: Context) -> Outcome:
    from benchmarks import target_lio

    out = Outcome("target_exports", TITLE)
    for part, what in ((run_tgt, "target side, tgtd"), (target_lio.run_lio, target_lio.WHAT)):
        kept = len(out.rows)
        try:
            part(ctx, out)
        except Exception as e:  # one part failing must not drop the other's numbers
            traceback.print_exc()
            del out.rows[kept:]  # a half-filled row would be misleading
            out.skip(f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", what)
    return out
