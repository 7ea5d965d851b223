"""Nova's LibvirtISCSIVolumeDriver connect + disconnect in the real-kernel guest: on blocklink's os-brick
facade vs on the real os-brick, same run (nova_ops.py does the work)."""

from __future__ import annotations

import os

from benchmarks import guest
from benchmarks.context import REPO, Context
from benchmarks.model import BLOCKLINK, OSBRICK, Outcome

TITLE = "Nova iSCSI volume driver (guest)"


def compat_python() -> str:
    """The compat virtualenv's interpreter (Nova 34.0.0 + Cinder 29.0.0 + blocklink, scripts/compat-venv):
    ``BLOCKLINK_COMPAT_PYTHON``, else ``.venv-compat`` of this checkout."""
    return os.environ.get("BLOCKLINK_COMPAT_PYTHON") or os.path.join(REPO, ".venv-compat", "bin", "python")


def run(ctx: Context) -> Outcome:
    out = Outcome("nova_guest", TITLE)
    py = compat_python()
    if not os.access(py, os.X_OK):
        out.skip(f"no compat virtualenv at {py} (scripts/compat-venv builds it; or set BLOCKLINK_COMPAT_PYTHON)")
        return out
    why = guest.harness_missing()
    if why:
        out.skip(why)
        return out
    reps = ctx.reps(5, 3)
    res = guest.run_task(ctx, "nova_iscsi", ["--reps", str(reps), "--compat-python", py], timeout=3600)
    for phase, what in (("connect", "connect_volume"), ("disconnect", "disconnect_volume")):
        row = out.row(f"Nova LibvirtISCSIVolumeDriver.{what}", "s")
        row.samples[BLOCKLINK] = list(res["blocklink"][phase])
        row.samples[OSBRICK] = list(res["os-brick"][phase])
    out.notes.append(
        "In the real-kernel guest (qemu TCG: compare the ratios). The real Nova 34.0.0 code, unmodified, in two "
        "service interpreters of the compat virtualenv: one with blocklink.compat.os_brick.activate() (the "
        "'blocklink' column: the facade), one on the real os-brick 7.1.1 (privsep daemon, as nova-compute runs "
        "it; as root, no sudo/rootwrap in front). One LIO export (fileio, 16 MiB, CHAP) for Nova's own connector "
        "(LibvirtDriver.get_volume_connector); each round: LibvirtISCSIVolumeDriver.connect_volume then "
        "disconnect_volume (device_info None, as Nova calls it), timed around those calls only; one untimed "
        f"warm-up round; {reps} rounds in rotating order; no session or SCSI disk may remain after a round.")
    return out
