"""What a block device already carries, read with libblkid's low-level probe (``blkid --probe``).

The encryptor formats only a device on which this finds nothing: a filesystem, a LUKS header, a
partition table, an LVM physical volume or a RAID member all mean data that a format would destroy.
``--probe`` reads the device itself (no cache), so a signature written a moment ago is seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from blocklink.encryption.errors import EncryptionError
from blocklink.executor import Executor

# blkid exit codes: 0 found, 2 nothing found, 8 ambivalent (several superblocks), 4 usage error
_NOTHING = 2
_AMBIVALENT = 8


@dataclass(frozen=True)
class Signature:
    kind: str            # "luks" | "filesystem" | "partition-table" | "lvm" | "raid" | "other"
    type: str            # blkid's TYPE (ext4, crypto_LUKS, LVM2_member) or PTTYPE (gpt, dos)
    version: Optional[str] = None
    uuid: Optional[str] = None
    label: Optional[str] = None

    def describe(self) -> str:
        what = {"luks": f"a LUKS{self.version or ''} header", "partition-table": f"a {self.type} partition table",
                "lvm": "an LVM physical volume", "raid": f"a {self.type} RAID member",
                "filesystem": f"a {self.type} filesystem"}.get(self.kind, f"a {self.type} signature")
        return what + (f" (UUID {self.uuid})" if self.uuid else "")


def parse_export(text: str) -> Tuple[Signature, ...]:
    """Signatures in ``blkid --probe --output export`` output (KEY=value lines)."""
    kv: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            kv[key.strip()] = value.strip()
    out = []
    kind_type = kv.get("TYPE")
    if kind_type:
        usage = kv.get("USAGE", "")
        if kind_type == "crypto_LUKS":
            kind = "luks"
        elif kind_type == "LVM2_member":
            kind = "lvm"
        elif usage in ("raid", "filesystem"):
            kind = usage
        else:
            kind = "other"
        out.append(Signature(kind, kind_type, kv.get("VERSION"), kv.get("UUID"), kv.get("LABEL")))
    if kv.get("PTTYPE"):
        out.append(Signature("partition-table", kv["PTTYPE"], None, kv.get("PTUUID")))
    return tuple(out)


def probe(executor: Executor, path: str, *, timeout: float = 60.0) -> Tuple[Signature, ...]:
    """Every signature on ``path``; empty for a blank device."""
    res = executor.run(["blkid", "--probe", "--output", "export", path], check=False,
                       ok_codes=(0, _NOTHING, _AMBIVALENT), timeout=timeout)
    if res.exit_code == _NOTHING:
        return ()
    if res.exit_code == _AMBIVALENT:  # several superblocks: certainly not blank
        return (Signature("other", "ambivalent (several signatures)"),)
    if res.exit_code != 0:
        raise EncryptionError(path, f"blkid could not probe it (exit {res.exit_code}): {res.stderr.strip()}")
    found = parse_export(res.stdout)
    return found or (Signature("other", "unrecognised"),)


def luks_version(signatures: Tuple[Signature, ...]) -> Optional[str]:
    """``"luks1"``/``"luks2"`` when the only signature is a LUKS header, else None."""
    if len(signatures) == 1 and signatures[0].kind == "luks":
        return "luks2" if signatures[0].version == "2" else "luks1"
    return None


__all__ = ["Signature", "luks_version", "parse_export", "probe"]
