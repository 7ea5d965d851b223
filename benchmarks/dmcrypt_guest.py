"""Host-side encryption's price: sequential 1 MiB O_DIRECT read/write through blocklink's dm-crypt mapping
vs the raw device, in the real-kernel guest (dmcrypt_ops.py does the work)."""

from __future__ import annotations

from benchmarks import guest
from benchmarks.context import Context
from benchmarks.model import BLOCKLINK, FLOOR, Outcome

TITLE = "dm-crypt vs raw device (guest)"


def run(ctx: Context) -> Outcome:
    out = Outcome("dmcrypt_guest", TITLE)
    why = guest.harness_missing()
    if why:
        out.skip(why)
        return out
    mib, reps = (64, 2) if ctx.quick else (256, 5)
    res = guest.run_task(ctx, "dmcrypt", ["--mib", str(mib), "--reps", str(reps)], timeout=3600)
    for phase in ("write", "read"):
        row = out.row(f"sequential {phase}, 1 MiB O_DIRECT", "MiB/s", higher_is_better=True)
        row.samples[BLOCKLINK] = list(res["samples"][phase]["blocklink"])
        row.samples[FLOOR] = list(res["samples"][phase]["floor"])
    out.notes.append(
        f"In the real-kernel guest (qemu TCG, 2 vCPUs: AES runs as emulated instructions, so the absolute rates "
        f"and the ratio are far below a real CPU's with AES-NI; the ratio is the upper bound of the cost). A brd RAM "
        f"disk of {mib + 32} MiB; blocklink: LuksEncryptor.attach (new blank volume: {res['format']}, "
        f"{res['cipher']}, {res['key_size']}-bit key) and passes over /dev/mapper/crypt-…; floor: the same passes "
        f"over /dev/ram0 itself. {reps} rounds of {mib} MiB write (then fsync) and read per path, order rotating, "
        f"one warm-up round each. os-brick has no row here: its encryptors run the same cryptsetup/dm-crypt, so the "
        f"data path is the kernel's either way.")
    alone = res.get("cipher_alone") or {}
    if alone:
        out.notes.append(
            f"Where the time goes: the kernel's aes-xts-512 alone (cryptsetup benchmark, in memory, same guest) runs at "
            f"{alone['encrypt']:.0f} MiB/s encrypt, {alone['decrypt']:.0f} MiB/s decrypt; the mapping's rates above are "
            f"that cipher's, not blocklink's (blocklink is not on the data path once the mapping is open).")
    return out
