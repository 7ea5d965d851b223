"""Is the thing asked for already in place? Pure decisions over the mount table and the record.

Each returns True (already done: a no-op), False (nothing there: go ahead) or raises
:class:`MountConflict` naming what is there instead.
"""

from __future__ import annotations

from typing import Optional, Sequence

from blocklink.staging.errors import MountConflict
from blocklink.staging.mountinfo import MountEntry
from blocklink.staging.records import StagingRecord


def _what(e: MountEntry) -> str:
    return f"{e.source} ({e.fs_type}, device {e.majmin}{', subtree ' + e.root if e.root != '/' else ''})"


def options_visible(entry: MountEntry, options: Sequence[str]) -> bool:
    """Every requested option shows in the kernel's view of the mount (ro/rw by the mount's own flag)."""
    shown = set(entry.mount_options) | set(entry.super_options)
    want_ro = "ro" in options
    if want_ro != ("ro" in entry.mount_options):
        return False
    return all(o in shown for o in options if o not in ("ro", "rw"))


def already_staged(entry: Optional[MountEntry], device: str, major: int, minor: int, fs_type: str,
                   options: Sequence[str], record: Optional[StagingRecord]) -> bool:
    if entry is None:
        return False
    path = entry.mount_point
    if (entry.major, entry.minor) != (major, minor) or entry.root != "/":
        raise MountConflict(device, path, _what(entry))
    if entry.fs_type != fs_type:
        raise MountConflict(device, path, f"{_what(entry)}, not {fs_type}")
    if record is not None and (record.major, record.minor) == (major, minor):
        if tuple(record.mount_options) != tuple(options):
            raise MountConflict(device, path, f"{device} staged with options {','.join(record.mount_options) or '(none)'}"
                                f", not {','.join(options) or '(none)'}")
        return True
    if not options_visible(entry, options):  # mounted by someone else: only the kernel's view to go on
        raise MountConflict(device, path, f"{_what(entry)} with options "
                            f"{','.join(entry.mount_options)} / {','.join(entry.super_options)}, "
                            f"not {','.join(options) or '(none)'}")
    return True


def already_published(entry: Optional[MountEntry], source: MountEntry, target: str, readonly: bool) -> bool:
    """``source`` is the staging mount; ``entry`` what is at ``target`` now."""
    if entry is None:
        return False
    same = (entry.major, entry.minor) == (source.major, source.minor) and entry.root == source.root
    if not same:
        raise MountConflict(source.source, target, _what(entry))
    if ("ro" in entry.mount_options) != readonly:
        raise MountConflict(source.source, target, f"{_what(entry)} published "
                            f"{'read-only' if 'ro' in entry.mount_options else 'read-write'}")
    return True


__all__ = ["already_published", "already_staged", "options_visible"]
