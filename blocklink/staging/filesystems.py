"""Per-filesystem policy: how to make one, whether to check it before mounting, how to grow it online,
and which caller options are accepted.

- ext4: ``e2fsck -p`` before every mount (replays the journal, fixes what is safe unattended; exit 4
  or more means it needs a human, so we do not mount). Grown online with ``resize2fs <device>``.
- xfs: no fsck at mount (``fsck.xfs`` does nothing by design; the kernel replays the log at mount time
  and ``xfs_repair`` must never run unattended). Grown online with ``xfs_growfs <mount point>``.

mkfs runs without discard (``-E nodiscard`` / ``-K``): a discard of a whole fresh network volume can
take minutes and a thin target already reads zeroes. Force flags are refused: only a device both
probes call blank is formatted, and mkfs.xfs's own "existing signature" refusal stays in force.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Optional, Sequence, Tuple

from blocklink.errors import InvalidOption

_FLAG_CLUSTER = re.compile(r"^-[A-Za-z]+$")
# mount(8) modes, not filesystem options: they would change what "stage" means
_MODE_OPTIONS = frozenset({"bind", "rbind", "remount", "move", "loop", "make-shared", "make-private",
                           "make-slave", "make-unbindable", "X-mount.mkdir"})


@dataclass(frozen=True)
class Filesystem:
    name: str
    mkfs: Tuple[str, ...]
    force_flag: str  # the mkfs flag that overwrites existing signatures (refused)
    fsck: Optional[Tuple[str, ...]]  # run before mounting, or None
    fsck_ok: FrozenSet[int] = frozenset({0})
    grow_by_mount_point: bool = False  # xfs_growfs takes the mount point, resize2fs the device
    grow_tool: str = ""

    def mkfs_argv(self, device: str, extra: Sequence[str]) -> list[str]:
        return [*self.mkfs, *extra, device]

    def fsck_argv(self, device: str) -> Optional[list[str]]:
        return [*self.fsck, device] if self.fsck else None

    def grow_argv(self, device: str, mount_point: str) -> list[str]:
        return [self.grow_tool, mount_point if self.grow_by_mount_point else device]


EXT4 = Filesystem("ext4", ("mkfs.ext4", "-q", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"), "F",
                  ("e2fsck", "-p"), frozenset({0, 1}), grow_tool="resize2fs")
XFS = Filesystem("xfs", ("mkfs.xfs", "-q", "-K"), "f", None, grow_by_mount_point=True, grow_tool="xfs_growfs")
FILESYSTEMS: Dict[str, Filesystem] = {fs.name: fs for fs in (EXT4, XFS)}


def filesystem(fs_type: Any) -> Filesystem:
    if not isinstance(fs_type, str) or fs_type not in FILESYSTEMS:
        raise InvalidOption("fs_type", f"expected one of {', '.join(sorted(FILESYSTEMS))}, got {fs_type!r}")
    return FILESYSTEMS[fs_type]


def _strings(name: str, value: Any) -> Tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InvalidOption(name, f"expected a list of strings, got {type(value).__name__}")
    for v in value:
        if not isinstance(v, str) or not v or "\x00" in v:
            raise InvalidOption(name, f"expected non-empty strings without NUL, got {v!r}")
    return tuple(value)


def mount_options(value: Any) -> Tuple[str, ...]:
    """Filesystem mount options, one per item (``("noatime", "data=ordered")``), normalised order kept."""
    opts = _strings("mount_options", value)
    for o in opts:
        if "," in o or any(c.isspace() for c in o):
            raise InvalidOption("mount_options", f"one option per item, no commas or blanks: {o!r}")
        if o.split("=", 1)[0] in _MODE_OPTIONS:
            raise InvalidOption("mount_options", f"{o!r} is a mount mode, not a filesystem option")
    if "ro" in opts and "rw" in opts:
        raise InvalidOption("mount_options", "both 'ro' and 'rw'")
    return tuple(dict.fromkeys(opts))  # duplicates dropped: ("noatime", "noatime") stages like ("noatime",)


def mkfs_options(fs: Filesystem, value: Any) -> Tuple[str, ...]:
    opts = _strings("mkfs_options", value)
    for o in opts:
        if _FLAG_CLUSTER.match(o) and fs.force_flag in o[1:]:
            raise InvalidOption("mkfs_options", f"{o!r} forces {fs.mkfs[0]} over existing data; never allowed")
        if o.startswith("/dev/"):
            raise InvalidOption("mkfs_options", f"{o!r}: the device is not an mkfs option")
    return opts


__all__ = ["EXT4", "XFS", "FILESYSTEMS", "Filesystem", "filesystem", "mkfs_options", "mount_options"]
