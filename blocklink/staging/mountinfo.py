"""/proc/self/mountinfo as typed entries (proc(5)): what is mounted where, from which device.

Fields: ``id parent major:minor root mount_point mount_options [optional...] - fstype source super_options``.
Paths escape space, tab, newline and backslash as ``\\040``, ``\\011``, ``\\012``, ``\\134``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from blocklink.hostpaths import HostPaths

_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes in a mountinfo path field."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str  # the path inside the filesystem that is mounted here ("/" for a whole filesystem)
    mount_point: str
    mount_options: Tuple[str, ...]  # per-mount: ro/rw, nosuid, relatime...
    fs_type: str
    source: str
    super_options: Tuple[str, ...]  # per-superblock: ro/rw (a kernel error remount shows here), fs options

    @property
    def majmin(self) -> str:
        return f"{self.major}:{self.minor}"

    @property
    def readonly(self) -> bool:
        """Read-only through this mount point (the mount or the whole filesystem)."""
        return "ro" in self.mount_options or "ro" in self.super_options

    @property
    def super_readonly(self) -> bool:
        return "ro" in self.super_options


def parse_line(line: str) -> Optional[MountEntry]:
    """One mountinfo line, or None when it is malformed (a line is never half-trusted)."""
    parts = line.split()
    try:
        sep = parts.index("-", 6)
        major, minor = parts[2].split(":")
        return MountEntry(mount_id=int(parts[0]), parent_id=int(parts[1]), major=int(major), minor=int(minor),
                          root=unescape(parts[3]), mount_point=unescape(parts[4]),
                          mount_options=tuple(parts[5].split(",")), fs_type=parts[sep + 1],
                          source=unescape(parts[sep + 2]),
                          super_options=tuple(parts[sep + 3].split(",")) if len(parts) > sep + 3 else ())
    except (ValueError, IndexError):
        return None


def parse(text: str) -> List[MountEntry]:
    return [e for e in (parse_line(line) for line in text.splitlines()) if e is not None]


class MountTable:
    """A snapshot of this process's mount table."""

    def __init__(self, entries: List[MountEntry]) -> None:
        self.entries = entries

    @classmethod
    def read(cls, paths: HostPaths) -> "MountTable":
        return cls(parse(paths.read(paths.procpath("self", "mountinfo"), "") or ""))

    def at(self, mount_point: str) -> Optional[MountEntry]:
        """The top-most mount on ``mount_point`` (the one a path lookup sees), or None."""
        want = os.path.normpath(mount_point)
        hits = [e for e in self.entries if e.mount_point == want]
        if not hits:
            return None
        ids = {e.mount_id for e in hits}
        # stacked mounts: the visible one is the one no other mount on this point sits on
        top = [e for e in hits if not any(o.parent_id == e.mount_id for o in hits if o.mount_id in ids)]
        return (top or hits)[-1]

    def all_at(self, mount_point: str) -> List[MountEntry]:
        want = os.path.normpath(mount_point)
        return [e for e in self.entries if e.mount_point == want]

    def of_device(self, major: int, minor: int) -> List[MountEntry]:
        """Every mount of the filesystem on device ``major:minor`` (the staging mount and its binds)."""
        return [e for e in self.entries if (e.major, e.minor) == (major, minor)]

    def below(self, path: str) -> List[MountEntry]:
        """Mounts strictly below ``path`` (they would keep it busy)."""
        prefix = os.path.normpath(path).rstrip("/") + "/"
        return [e for e in self.entries if e.mount_point.startswith(prefix)]


__all__ = ["MountEntry", "MountTable", "parse", "parse_line", "unescape"]
