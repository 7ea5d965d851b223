"""iSCSI attach/detach in the real-kernel guest: one volume, and N at once (iscsi_ops.py does the work)."""

from __future__ import annotations

from benchmarks import guest
from benchmarks.context import Context
from benchmarks.model import BLOCKLINK, FLOOR, OSBRICK, Outcome

TITLE = "iSCSI attach/detach (guest)"


def run(ctx: Context) -> Outcome:
    out = Outcome("iscsi_guest", TITLE)
    why = guest.not_landed(("blocklink.initiator.iscsi", "the iSCSI connector (blocklink/initiator/iscsi.py)"),
                            ("blocklink.target.lio", "the LIO target helper (blocklink/target/lio.py)")) or guest.harness_missing()
    if why:
        out.skip(why)
        return out
    conc = 4 if ctx.quick else 16
    reps, creps = ctx.reps(3, 1), ctx.reps(2, 1)
    res = guest.run_task(ctx, "iscsi", ["--reps", str(reps), "--creps", str(creps), "--concurrency", str(conc)],
                         timeout=5400)
    impl_key = {BLOCKLINK: "blocklink", OSBRICK: "os-brick", FLOOR: "floor"}
    for kind, label in (("single", "one volume"), ("concurrent", f"{conc} volumes at once")):
        for r in res[kind].values():
            r["attach_idle"] = [a + s for a, s in zip(r["attach"], r["settle"])]
        for phase, name in (("attach", f"attach {label}"), ("attach_idle", f"attach {label}, until udev is idle"),
                            ("detach", f"detach {label}")):
            row = out.row(name, "s")
            for impl, key in impl_key.items():
                row.samples[impl] = list(res[kind][key][phase])
    setup = "; ".join(f"{k}: {v}" for k, v in res.get("setup", {}).items())
    out.notes.append(
        f"In the real-kernel guest (qemu TCG, 2 vCPUs: absolute times are inflated many times, compare the ratios; "
        f"every program started from the 9p root costs the guest a lot, which weighs on command-heavy paths). "
        f"{conc} LIO exports (fileio, 16 MiB, CHAP) made once with blocklink's LioTarget on 127.0.0.1:3260; the same "
        f"targets for all three initiators; iscsid running (setsid, stopped with iscsiadm -k 0). Each measurement "
        f"attaches (sequentially, or from {conc} threads released together), checks every returned path is a "
        f"distinct block device, waits (untimed) for udev's queue to empty (`udevadm settle`): blocklink returns a "
        f"disk as soon as it can be opened while udev may still be probing it, the floor and os-brick wait for its "
        f"by-path link, and udev work left running would land inside the detach timing. Then it detaches the same "
        f"way and lets udev settle again; the 'until udev is idle' rows add the first wait to the attach time; "
        f"no session or sd device may remain afterwards "
        f"(checked). One untimed warm-up attach+detach per implementation; then {reps} single and {creps} "
        f"concurrent rounds in rotating order. Setup: {setup}. The floor: iscsiadm node new, 3 × node update "
        f"(CHAP method, user, password), login, `udevadm wait` for the by-path link; logout, node delete.")
    return out
