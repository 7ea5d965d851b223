"""Is a device blank, a ``fs_type`` filesystem, or something else? Decided from two low-level probes.

``blkid -p -o export`` (libblkid's low-level probe, no cache) names the superblock (TYPE, USAGE) or the
partition table (PTTYPE); ``wipefs -n -J`` lists every signature it finds, including ones blkid does
not report as the device's type. Anything either probe reports means "never format". Only a device
both probes call empty is blank; a probe that fails or answers in a way we cannot read is a refusal.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from blocklink.staging.errors import DeviceInUse, ForeignSignature, ProbeFailed

BLKID_FOUND, BLKID_NOTHING, BLKID_AMBIVALENT = 0, 2, 8  # blkid(8) exit codes


@dataclass(frozen=True)
class Signature:
    type: str
    offset: str = ""
    uuid: Optional[str] = None


@dataclass(frozen=True)
class BlkidResult:
    exit_code: int
    values: Dict[str, str]
    stderr: str = ""

    @property
    def type(self) -> Optional[str]:
        return self.values.get("TYPE")

    @property
    def usage(self) -> Optional[str]:
        return self.values.get("USAGE")

    @property
    def pttype(self) -> Optional[str]:
        return self.values.get("PTTYPE")

    @property
    def uuid(self) -> Optional[str]:
        return self.values.get("UUID")


def parse_blkid_export(exit_code: int, stdout: str, stderr: str = "") -> BlkidResult:
    values: Dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = value.strip()
    return BlkidResult(exit_code, values, stderr.strip())


def parse_wipefs_json(stdout: str) -> Tuple[Signature, ...]:
    """Signatures from ``wipefs -n -J``; empty output means none. Unreadable JSON raises ValueError."""
    if not stdout.strip():
        return ()
    doc = json.loads(stdout)
    sigs = doc.get("signatures") if isinstance(doc, dict) else None
    if not isinstance(sigs, list):
        raise ValueError("no 'signatures' list in wipefs output")
    return tuple(Signature(str(s.get("type") or "?"), str(s.get("offset") or ""), s.get("uuid"))
                 for s in sigs if isinstance(s, dict))


class Action(enum.Enum):
    FORMAT = "format"
    MOUNT = "mount"


@dataclass(frozen=True)
class Probe:
    """What the kernel and the probes tell about a device before staging."""

    blkid: BlkidResult
    wipefs: Tuple[Signature, ...]
    partitions: Tuple[str, ...] = ()  # /sys/block/<dev>/<dev>N entries
    holders: Tuple[str, ...] = ()  # /sys/block/<dev>/holders (dm-crypt, LVM, md)


def describe(blkid: BlkidResult, wipefs: Sequence[Signature]) -> str:
    """A short account of what is on the device, for error messages."""
    parts = []
    if blkid.type:
        parts.append(f"{blkid.type} ({blkid.usage or 'unknown usage'})" + (f" UUID {blkid.uuid}" if blkid.uuid else ""))
    if blkid.pttype:
        parts.append(f"a {blkid.pttype} partition table")
    seen = {blkid.type, blkid.pttype}
    extra = sorted({s.type for s in wipefs if s.type not in seen})
    if extra:
        parts.append("signatures " + ", ".join(extra))
    return "; ".join(parts) or "unknown data"


def decide(device: str, path: str, fs_type: str, probe: Probe) -> Action:
    """FORMAT only for a blank device, MOUNT only for exactly a ``fs_type`` filesystem; else a typed refusal."""
    if probe.holders:
        raise DeviceInUse(device, path, "held by " + ", ".join(probe.holders) + " (dm-crypt, LVM or md on it)")
    b = probe.blkid
    if b.exit_code == BLKID_AMBIVALENT:
        raise ForeignSignature(device, path, "several signatures (blkid: ambivalent result)"
                               + (f": {', '.join(sorted({s.type for s in probe.wipefs}))}" if probe.wipefs else ""),
                               fs_type)
    if b.exit_code not in (BLKID_FOUND, BLKID_NOTHING):
        raise ProbeFailed(device, path, f"blkid exit {b.exit_code}: {b.stderr or 'no message'}")
    if probe.partitions:
        found = describe(b, probe.wipefs) if b.values or probe.wipefs else ""
        raise ForeignSignature(device, path, "; ".join(x for x in (found, "partitions " + ", ".join(probe.partitions))
                                                       if x), fs_type)
    if b.exit_code == BLKID_NOTHING and not b.values:
        if probe.wipefs:  # blkid saw nothing but a signature is there: not blank
            raise ForeignSignature(device, path, describe(b, probe.wipefs), fs_type)
        return Action.FORMAT
    if b.exit_code == BLKID_NOTHING:  # "nothing found" yet values printed: do not guess
        raise ProbeFailed(device, path, f"blkid reported nothing but printed {sorted(b.values)}")
    others = {s.type for s in probe.wipefs} - {fs_type}
    if b.type == fs_type and b.usage == "filesystem" and not b.pttype and not others:
        return Action.MOUNT
    raise ForeignSignature(device, path, describe(b, probe.wipefs), fs_type)


__all__ = ["Action", "BlkidResult", "Probe", "Signature", "decide", "describe", "parse_blkid_export",
           "parse_wipefs_json"]
