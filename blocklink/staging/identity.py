"""Which volume a block device is, read from sysfs: compared at stage time against the
:class:`~blocklink.models.host.AttachedDevice` and later by ``condition`` (a device node that now
belongs to another volume must never be trusted as "ours").

- SCSI disk (sdX): the scsi_id-style WWID (VPD 0x83) and the unit serial (VPD 0x80);
- dm device (multipath, dm-crypt): ``dm/uuid`` (``mpath-<wwid>`` for a multipath map);
- NVMe namespace: ``wwid`` and ``uuid``;
- krbd (rbdN): ``pool[/pool_ns]/name`` under /sys/bus/rbd/devices/N.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional

from blocklink.hostpaths import HostPaths
from blocklink.initiator.host.wwn import device_wwid, same_wwn
from blocklink.models.host import AttachedDevice


@dataclass(frozen=True)
class VolumeIdentity:
    wwn: Optional[str] = None
    uuid: Optional[str] = None  # NVMe namespace UUID
    serial: Optional[str] = None
    dm_uuid: Optional[str] = None
    rbd: Optional[str] = None  # pool[/namespace]/image

    def to_dict(self) -> Dict[str, Optional[str]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VolumeIdentity":
        return cls(**{k: (str(v) if v is not None else None) for k, v in d.items() if k in cls.__dataclass_fields__})

    def __bool__(self) -> bool:
        return any(self.to_dict().values())


def expected(device: AttachedDevice) -> VolumeIdentity:
    """What the connector said the device is."""
    wwn = device.multipath_id or device.wwn
    rbd = device.volume if device.protocol == "rbd" else None  # krbd: the image as pool/name
    return VolumeIdentity(wwn=wwn, uuid=device.uuid, rbd=rbd)


def _rbd_name(paths: HostPaths, name: str) -> Optional[str]:
    d = paths.sys("bus", "rbd", "devices", name[3:])
    pool, image = paths.read(os.path.join(d, "pool")), paths.read(os.path.join(d, "name"))
    if not pool or not image:
        return None
    ns = paths.read(os.path.join(d, "pool_ns"), "") or ""
    return f"{pool}/{ns + '/' if ns else ''}{image}"


def _serial_from_vpd80(page: Optional[bytes]) -> Optional[str]:
    if not page or len(page) < 4 or page[1] != 0x80:
        return None
    n = int.from_bytes(page[2:4], "big")
    return page[4:4 + n].decode("ascii", "replace").strip("\x00 ") or None


def current(paths: HostPaths, name: str) -> VolumeIdentity:
    """What block device ``name`` (``sdb``, ``dm-3``, ``nvme0n1``, ``rbd0``) is now."""
    blk = paths.sys("block", name)
    if name.startswith("dm-"):
        dm_uuid = paths.read(os.path.join(blk, "dm", "uuid"))
        wwn = dm_uuid[6:] if dm_uuid and dm_uuid.startswith("mpath-") else None
        return VolumeIdentity(wwn=wwn, dm_uuid=dm_uuid)
    if name.startswith("nvme"):
        return VolumeIdentity(wwn=paths.read(os.path.join(blk, "wwid")), uuid=paths.read(os.path.join(blk, "uuid")))
    if name.startswith("rbd"):
        return VolumeIdentity(rbd=_rbd_name(paths, name))
    return VolumeIdentity(wwn=device_wwid(paths, name),
                          serial=_serial_from_vpd80(paths.read_bytes(os.path.join(blk, "device", "vpd_pg80"))))


def differences(want: VolumeIdentity, have: VolumeIdentity) -> List[str]:
    """Fields known on both sides that disagree, as ``field: wanted X, found Y`` (empty: same volume)."""
    out = []
    for key, a in want.to_dict().items():
        b = getattr(have, key)
        if a is None or b is None:  # e.g. a dm-crypt device has no WWN of its own: nothing to compare
            continue
        if not (same_wwn(a, b) if key == "wwn" else a == b):
            out.append(f"{key}: wanted {a}, found {b}")
    return out


def merged(want: VolumeIdentity, have: VolumeIdentity) -> VolumeIdentity:
    """The identity to remember: what the connector said, completed by what sysfs showed at stage time."""
    d = have.to_dict()
    d.update({k: v for k, v in want.to_dict().items() if v is not None})
    return VolumeIdentity(**d)


__all__ = ["VolumeIdentity", "current", "differences", "expected", "merged"]
