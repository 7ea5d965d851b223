"""Typed refusals of the staging layer; each names the device, the path and what was found.

Defined here (not in :mod:`blocklink.errors`) for now; all subclass :class:`BlocklinkError`.
"""

from __future__ import annotations

from typing import Optional, Sequence

from blocklink.errors import BlocklinkError


class StagingError(BlocklinkError):
    """Base: ``device`` (a /dev path or None), ``path`` (staging or target path), ``found`` (what we saw)."""

    def __init__(self, device: Optional[str], path: Optional[str], found: str, message: str) -> None:
        self.device = device
        self.path = path
        self.found = found
        super().__init__(message)


class ForeignSignature(StagingError):
    """The device carries data that is not a ``fs_type`` filesystem (another filesystem, LUKS, a partition
    table, LVM, RAID): it is never formatted and never mounted as ``fs_type``."""

    def __init__(self, device: str, path: str, found: str, wanted: str) -> None:
        self.wanted = wanted
        super().__init__(device, path, found,
                         f"refusing to stage {device} on {path} as {wanted}: it holds {found} (never formatted)")


class ProbeFailed(StagingError):
    """Whether the device is blank could not be decided: nothing is formatted."""

    def __init__(self, device: str, path: str, found: str) -> None:
        super().__init__(device, path, found, f"cannot tell whether {device} is blank (for {path}): {found}")


class DeviceInUse(StagingError):
    """The device is claimed by something else (a dm/md holder, an exclusive opener, another mount)."""

    def __init__(self, device: str, path: str, found: str) -> None:
        super().__init__(device, path, found, f"{device} (for {path}) is in use: {found}")


class MountConflict(StagingError):
    """Something other than what was asked is mounted at ``path``."""

    def __init__(self, device: Optional[str], path: str, found: str) -> None:
        super().__init__(device, path, found,
                         f"{path} already has {found} mounted" + (f" (wanted {device})" if device else ""))


class NotStaged(StagingError):
    """``path`` is not a staged volume (nothing mounted there, or not a whole filesystem)."""

    def __init__(self, path: str, found: str, device: Optional[str] = None) -> None:
        super().__init__(device, path, found, f"{path} is not a staged volume: {found}")


class MountBusy(StagingError):
    """The mount cannot be undone while processes use it; ``holders`` are ``pid N (comm)`` strings."""

    def __init__(self, device: Optional[str], path: str, holders: Sequence[str], extra: str = "") -> None:
        self.holders = tuple(holders)
        found = ", ".join(self.holders) or "no process found (a kernel user or another mount)"
        super().__init__(device, path, found,
                         f"{path} ({device or 'no device'}) is busy: {found}" + (f"; {extra}" if extra else ""))


class StillPublished(StagingError):
    """Unstaging while the filesystem is still bind-mounted at publish targets."""

    def __init__(self, device: Optional[str], path: str, targets: Sequence[str]) -> None:
        self.targets = tuple(targets)
        super().__init__(device, path, ", ".join(self.targets),
                         f"{path} ({device}) is still published at {', '.join(self.targets)}")


class FilesystemCheckFailed(StagingError):
    """fsck found errors it could not fix unattended: the filesystem is not mounted."""

    def __init__(self, device: str, path: str, found: str) -> None:
        super().__init__(device, path, found, f"filesystem check of {device} (for {path}) failed: {found}")


class StagingCommandFailed(StagingError):
    """mkfs, mount, umount or a grow tool failed; ``found`` is its exit status and message."""

    def __init__(self, action: str, device: Optional[str], path: str, found: str) -> None:
        self.action = action
        super().__init__(device, path, found, f"{action} of {device or path} at {path} failed: {found}")


__all__ = ["StagingError", "ForeignSignature", "ProbeFailed", "DeviceInUse", "MountConflict", "NotStaged",
           "MountBusy", "StillPublished", "FilesystemCheckFailed", "StagingCommandFailed"]
