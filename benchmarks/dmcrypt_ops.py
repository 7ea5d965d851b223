"""Inside the guest: sequential 1 MiB O_DIRECT throughput through blocklink's dm-crypt mapping vs the raw
device below it (``python -m benchmarks.guest_tasks dmcrypt``).

The device is a brd RAM disk, so the storage costs next to nothing and the ratio is the host-side
encryption's own price (dm-crypt's AES-XTS in the guest's CPU, the extra block layer), the worst case a
real volume would see. The mapping is opened by :class:`blocklink.encryption.LuksEncryptor` with its
defaults (LUKS2, aes-xts-plain64, 512-bit key); the PBKDF cost is pinned so the unlock is quick and
not what is measured.
"""

from __future__ import annotations

import argparse
import mmap
import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, List

MiB = 1 << 20
BLOCK = MiB


def _pass(path: str, size: int, write: bool, buf: mmap.mmap) -> float:
    """One sequential pass over ``size`` bytes in 1 MiB O_DIRECT requests; MiB/s."""
    fd = os.open(path, (os.O_WRONLY if write else os.O_RDONLY) | os.O_DIRECT)
    try:
        t0 = time.perf_counter()
        for off in range(0, size, BLOCK):
            n = os.pwritev(fd, [buf], off) if write else os.preadv(fd, [buf], off)
            if n != BLOCK:
                raise RuntimeError(f"short {'write' if write else 'read'} on {path} at {off}: {n}")
        if write:
            os.fsync(fd)
        return size / MiB / (time.perf_counter() - t0)
    finally:
        os.close(fd)


def task_dmcrypt(args: argparse.Namespace) -> Dict[str, Any]:
    from blocklink.connection import AttachedDevice
    from blocklink.encryption import LuksEncryptor
    from blocklink.encryption.spec import EncryptionSpec
    from blocklink.masking import Secret

    size = args.mib * MiB
    # a RAM disk a little larger than the pass (room for the LUKS2 header, 16 MiB)
    subprocess.run(["modprobe", "brd", "rd_nr=1", f"rd_size={(args.mib + 32) * 1024}"], check=True,
                   capture_output=True)
    raw = "/dev/ram0"
    enc = LuksEncryptor(EncryptionSpec(pbkdf_force_iterations=4, pbkdf_memory_kib=32 * 1024),
                        lock_path="/run/blocklink/bench-locks")
    volume = "bench-dmcrypt"
    samples: Dict[str, Dict[str, List[float]]] = {"write": {"blocklink": [], "floor": []},
                                                  "read": {"blocklink": [], "floor": []}}
    buf = mmap.mmap(-1, BLOCK)
    buf.write(os.urandom(BLOCK))
    try:
        dev = enc.attach(AttachedDevice(protocol="local", path=raw, type="block"), Secret(os.urandom(32).hex()),
                         volume_id=volume, new_volume=True)
        mapped = dev.path or ""
        try:
            for r in range(-1, args.reps):  # round -1 warms both paths up, not recorded
                order = [("blocklink", mapped), ("floor", raw)]
                for impl, path in (order if r % 2 == 0 else order[::-1]):
                    for phase in ("write", "read"):
                        rate = _pass(path, size, phase == "write", buf)
                        if r >= 0:
                            samples[phase][impl].append(rate)
                        print(f"dmcrypt rep {r} {impl} {phase}: {rate:.1f} MiB/s", file=sys.stderr, flush=True)
        finally:
            enc.detach(volume)
    finally:
        buf.close()
        subprocess.run(["rmmod", "brd"], check=False, capture_output=True)
    return {"mib": args.mib, "reps": args.reps, "samples": samples, "cipher_alone": _cipher_alone(),
            "cipher": enc.spec.cipher, "key_size": enc.spec.key_size, "format": enc.spec.format}


def _cipher_alone() -> Dict[str, float]:
    """The kernel's AES-XTS-512 in memory alone (``cryptsetup benchmark``): the ceiling dm-crypt can reach here."""
    res = subprocess.run(["cryptsetup", "benchmark", "-c", "aes-xts-plain64", "-s", "512"], capture_output=True,
                         text=True, timeout=600)
    m = re.search(r"aes-xts\s+512b\s+([\d.]+)\s+MiB/s\s+([\d.]+)\s+MiB/s", res.stdout)
    return {"encrypt": float(m.group(1)), "decrypt": float(m.group(2))} if m else {}
