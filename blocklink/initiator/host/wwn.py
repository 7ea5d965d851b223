"""SCSI device identity: the WWN as udev's ``scsi_id`` and dm-multipath spell it.

multipath names a map ``mpath-<wwid>`` where the WWID is ``scsi_id --page 0x83`` output: one
digit for the designator type (``3`` NAA, ``2`` EUI-64, ``1`` T10 vendor ID, ``8`` SCSI name
string) followed by the designator in hex. We compute the same string from the raw VPD page
0x83 in sysfs (``/sys/block/X/device/vpd_pg83``), falling back to the kernel's ``wwid``
attribute (``naa.6001405...``), so no child process is needed to identify a device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

from blocklink.hostpaths import HostPaths

# designator types (SPC-4 7.8.6.1)
T10_VENDOR, EUI64, NAA, SCSI_NAME = 1, 2, 3, 8
_BINARY, _ASCII, _UTF8 = 1, 2, 3
_LU_ASSOCIATION = 0
_WWID_PREFIX = {"t10.": "1", "eui.": "2", "naa.": "3"}


@dataclass(frozen=True)
class Designator:
    type: int
    code_set: int
    association: int
    value: bytes

    @property
    def naa_format(self) -> int:
        return self.value[0] >> 4 if self.type == NAA and self.value else -1

    def as_id(self) -> str:
        """``scsi_id`` form: the type digit, then hex (binary) or the text with blanks as ``_``."""
        if self.code_set == _BINARY:
            body = self.value.hex()
        else:
            body = re.sub(r"\s+", "_", self.value.decode("ascii", "replace").strip("\x00 "))
        return f"{self.type:x}{body}"


def parse_vpd_pg83(page: bytes) -> List[Designator]:
    """All designation descriptors of a raw Device Identification VPD page (0x83)."""
    if len(page) < 4 or page[1] != 0x83:
        return []
    end = min(len(page), 4 + int.from_bytes(page[2:4], "big"))
    out, i = [], 4
    while i + 4 <= end:
        code_set = page[i] & 0x0F
        association = (page[i + 1] >> 4) & 0x03
        dtype = page[i + 1] & 0x0F
        length = page[i + 3]
        value = page[i + 4:i + 4 + length]
        if len(value) < length:
            break  # truncated descriptor: ignore the rest
        out.append(Designator(dtype, code_set, association, bytes(value)))
        i += 4 + length
    return out


def _rank(d: Designator) -> Optional[tuple[int, int]]:
    """scsi_id's preference: NAA IEEE Registered Extended (6), IEEE Registered (5), other NAA,
    EUI-64, T10 vendor ID; binary before ASCII. Only logical-unit designators count."""
    if d.association != _LU_ASSOCIATION or not d.value:
        return None
    binary = 0 if d.code_set == _BINARY else 1
    if d.type == NAA:
        order = {6: 0, 5: 1}.get(d.naa_format, 2)
    elif d.type == EUI64:
        order = 3
    elif d.type == T10_VENDOR:
        order = 4
    else:
        return None
    return (order, binary)


def wwid_from_vpd(page: bytes) -> Optional[str]:
    """The ``scsi_id --page 0x83`` identifier of a device from its raw VPD page 0x83."""
    best: Optional[tuple[tuple[int, int], Designator]] = None
    for d in parse_vpd_pg83(page):
        r = _rank(d)
        if r is not None and (best is None or r < best[0]):
            best = (r, d)
    return best[1].as_id() if best else None


def wwid_from_sysfs_attr(text: str) -> Optional[str]:
    """Map the kernel's ``wwid`` attribute (``naa.<hex>``, ``eui.<hex>``, ``t10.<text>``) to scsi_id form."""
    text = text.strip()
    if not text:
        return None
    prefix = _WWID_PREFIX.get(text[:4].lower())
    if prefix is None:
        return "8" + text  # SCSI name string designator
    body = text[4:]
    if prefix == "1":
        return prefix + re.sub(r"\s+", "_", body.strip())
    return prefix + body.lower()


def device_wwid(paths: HostPaths, name: str) -> Optional[str]:
    """The scsi_id-style WWID of block device ``name`` (``sda``), or None if it has none."""
    page = paths.read_bytes(paths.sys("block", name, "device", "vpd_pg83"))
    if page:
        wwid = wwid_from_vpd(page)
        if wwid:
            return wwid
    attr = paths.read(paths.sys("block", name, "device", "wwid"))
    return wwid_from_sysfs_attr(attr) if attr else None


def normalize(wwn: str) -> str:
    """Comparable form of a WWN as drivers write it: lower case, no ``0x``/``naa.``/``:``."""
    s = wwn.strip().lower()
    for p in ("0x", "naa.", "eui.", "wwn-0x", "scsi-", "mpath-"):
        if s.startswith(p):
            s = s[len(p):]
    return s.replace(":", "")


def same_wwn(expected: str, found: str) -> bool:
    """Whether two spellings name the same LU: ``36001405ab..`` matches ``6001405ab..`` and
    ``naa.6001405ab..``; a bare NAA/EUI value matches its scsi_id form with the type digit."""
    a, b = normalize(expected), normalize(found)
    if a == b:
        return True
    if len(a) == len(b) + 1 and a[0] in "1238" and a[1:] == b:
        return True
    return len(b) == len(a) + 1 and b[0] in "1238" and b[1:] == a


__all__ = ["Designator", "parse_vpd_pg83", "wwid_from_vpd", "wwid_from_sysfs_attr", "device_wwid",
           "normalize", "same_wwn"]
