"""LIO target side in the real-kernel guest: LioTarget vs rtslib-fb called directly (target_exports.py)."""

from __future__ import annotations

import importlib.util

from benchmarks import guest
from benchmarks.context import Context
from benchmarks.model import BLOCKLINK, FLOOR, Outcome

WHAT = "target side, LIO (guest)"


def _landed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_lio(ctx: Context, out: Outcome) -> None:
    if not _landed("blocklink.target.lio"):
        out.skip("blocklink/target/lio.py (LioTarget) has not landed yet", WHAT)
        return
    why = guest.harness_missing()
    if why:
        out.skip(why, WHAT)
        return
    n = 20 if ctx.quick else 100
    reps = ctx.reps(3, 1)
    res = guest.run_task(ctx, "lio", ["--n", str(n), "--reps", str(reps)], timeout=1800)
    create = out.row(f"LIO (guest): {n} × (create_export + initialize_connection)", "s",
                     note="floor: rtslib-fb objects created directly")
    remove = out.row(f"LIO (guest): {n} × (terminate_connection + remove_export)", "s",
                     note="floor: target.delete() + storage_object.delete()")
    for impl in (BLOCKLINK, FLOOR):
        create.samples[impl] = list(res["samples"]["create"][impl])
        remove.samples[impl] = list(res["samples"]["remove"][impl])
    out.notes.append(
        f"LIO: in the real-kernel guest (qemu TCG: absolute times are inflated, compare the ratios), {n} sparse "
        f"1 MiB fileio backstores on the guest's RAM-backed /tmp, CHAP on, portal 127.0.0.1:3260, the NodeACL with "
        f"its CHAP credentials and mapped LUN 0 added by initialize_connection. {reps} repetitions alternating which "
        f"side goes first; LIO is checked empty after every teardown. The floor makes the same rtslib-fb objects "
        f"(FileIOStorageObject, Target, TPG + attributes, LUN, NetworkPortal, NodeACL + CHAP, MappedLUN) with no "
        f"existence checks, no locks and no saved configuration; blocklink takes the host's LIO lock once per "
        f"call, checks for an existing export inside the same privileged call, keeps the volume's CHAP "
        f"credentials in the TPG's auth attributes, and validates names and the connector.")
