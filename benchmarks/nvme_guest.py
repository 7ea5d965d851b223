"""NVMe/TCP connect+disconnect in the real-kernel guest: blocklink vs nvme-cli (nvme_ops.py does the work)."""

from __future__ import annotations

from benchmarks import guest
from benchmarks.context import Context
from benchmarks.model import BLOCKLINK, FLOOR, Outcome

TITLE = "NVMe/TCP connect/disconnect (guest)"


def run(ctx: Context) -> Outcome:
    out = Outcome("nvme_guest", TITLE)
    why = guest.not_landed(("blocklink.initiator.nvmeof", "the NVMe-oF connector (blocklink/initiator/nvmeof.py)"),
                            ("blocklink.target.nvmet", "the nvmet target helper (blocklink/target/nvmet.py)")) or guest.harness_missing()
    if why:
        out.skip(why)
        return out
    reps = ctx.reps(30, 8)
    res = guest.run_task(ctx, "nvme", ["--reps", str(reps)], timeout=3600)
    for key, label in (("total", "connect+disconnect one volume"), ("connect", "connect one volume"),
                       ("disconnect", "disconnect one volume")):
        row = out.row(label, "s", note="floor: nvme-cli (nvme connect + wait for the device; nvme disconnect -n)"
                      if key == "total" else "")
        row.samples[BLOCKLINK] = list(res[BLOCKLINK][key])
        row.samples[FLOOR] = list(res["floor"][key])
    out.notes.append(
        f"In the real-kernel guest (kernel {res.get('kernel', '?')}, qemu TCG, 2 vCPUs: absolute times are inflated, "
        f"compare the ratios). One 16 MiB export (a file on tmpfs) made with blocklink's NvmetTarget on "
        f"127.0.0.1:4420 (nvmet-tcp over loopback), this host's NQN allowed. blocklink: "
        f"`connector_for('nvmeof').connect_volume(info)` (one write of the options to /dev/nvme-fabrics, the "
        f"namespace found by its UUID and its /dev node waited for on kernel events, a record fsynced under the "
        f"subsystem's lock; no child process, see test_nvme_auth.py::test_connect_spawns_no_child_process) and "
        f"`disconnect_volume` (holders and openers checked, the controller deleted through sysfs, waited until "
        f"gone). The floor is the nvme-cli path os-brick takes ({res.get('nvme_cli', 'nvme-cli')}): "
        f"`nvme connect -t tcp -a -s -n -q -I` (same host NQN and host ID), then the namespace's block device "
        f"waited for by polling /sys/block/*/wwid every 2 ms; `nvme disconnect -n NQN` — two child processes "
        f"per round trip. One untimed warm-up each, then {reps} rounds in alternating order; after every "
        f"disconnect no NVMe controller may remain (checked). os-brick's own NVMeOFConnector is not measured "
        f"here (it adds its privsep, lock and nvme list-subsys calls on top of the same nvme-cli commands).")
    return out
