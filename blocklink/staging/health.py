"""Is a staged or published volume healthy? ``abnormal`` with the reason when:

- the block device behind the mount is gone (session logged out, namespace deleted, image unmapped);
- the device node now belongs to another volume (WWN, serial, NVMe UUID or RBD image differ from the
  attached volume's);
- the kernel remounted the filesystem read-only after errors (``errors=remount-ro``; Debian's 6.1
  marks ext4 "emergency read-only" internally and mountinfo still says rw, so ext4's ``errors_count``
  in /sys/fs/ext4 counts too), or the filesystem answers with I/O errors (xfs shuts down instead);
- a SCSI device is offline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from blocklink.staging.identity import VolumeIdentity, differences


@dataclass(frozen=True)
class Condition:
    path: str
    abnormal: bool
    reason: str
    device: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Facts:
    """What ``condition`` gathered about one mount (every field read from the kernel or the record)."""

    path: str
    mounted: bool
    majmin: str = ""
    device: Optional[str] = None  # /dev/<name> now, or the staged device when gone
    device_present: bool = True
    expected: VolumeIdentity = field(default_factory=VolumeIdentity)
    current: VolumeIdentity = field(default_factory=VolumeIdentity)
    super_readonly: bool = False
    asked_readonly: bool = False
    fs_errors: int = 0  # ext4's errors_count
    io_error: Optional[str] = None  # statvfs/readdir failure
    scsi_state: Optional[str] = None


def assess(f: Facts) -> Condition:
    problems: List[str] = []
    if not f.mounted:
        return Condition(f.path, True, f"nothing is mounted at {f.path}", f.device)
    if not f.device_present:
        problems.append(f"device {f.device or ''} ({f.majmin}) is gone")
    else:
        diffs = differences(f.expected, f.current)
        if diffs:
            problems.append(f"{f.device} is no longer the volume ({'; '.join(diffs)})")
        if f.scsi_state and f.scsi_state not in ("running", "blocked"):
            problems.append(f"{f.device} is {f.scsi_state}")
    if f.super_readonly and not f.asked_readonly:
        problems.append("the kernel remounted the filesystem read-only after errors"
                        + (f" ({f.fs_errors} error(s) recorded)" if f.fs_errors else ""))
    elif f.fs_errors:  # newer kernels stop ext4 writes after errors without showing "ro" in mountinfo
        problems.append(f"the filesystem recorded {f.fs_errors} error(s) since its last check"
                        " (with errors=remount-ro it no longer takes writes)")
    if f.io_error:
        problems.append(f"the filesystem fails I/O: {f.io_error}")
    return Condition(f.path, bool(problems), "; ".join(problems) or "healthy", f.device)


__all__ = ["Condition", "Facts", "assess"]
