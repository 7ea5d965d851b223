"""Volume staging for node agents (a CSI node plugin, a container host, a backup agent).

Over a connected volume (an :class:`~blocklink.models.host.AttachedDevice` from any kernel connector)::

    from blocklink import staging

    vol = staging.stage(dev, "/var/lib/agent/staging/vol1", fs_type="xfs")   # format only if blank
    staging.publish("/var/lib/agent/staging/vol1", "/pods/p1/vol1", readonly=True)
    staging.stats("/pods/p1/vol1")            # bytes and inodes
    staging.expand("/var/lib/agent/staging/vol1")   # after connector.extend_volume
    staging.condition("/var/lib/agent/staging/vol1", dev)   # device gone / replaced / fs read-only
    staging.unpublish("/pods/p1/vol1"); staging.unstage("/var/lib/agent/staging/vol1")

The functions use a default :class:`Stager`; build one for another executor, host tree, state or
lock directory. Refusals are typed (:mod:`blocklink.staging.errors`) and name device, path and what
was found.
"""

from __future__ import annotations

from typing import Optional, Sequence

from blocklink.models.host import AttachedDevice
from blocklink.staging.errors import (DeviceInUse, FilesystemCheckFailed, ForeignSignature, MountBusy, MountConflict,
                                      NotStaged, ProbeFailed, StagingCommandFailed, StagingError, StillPublished)
from blocklink.staging.health import Condition
from blocklink.staging.stager import DeviceLike, Published, StagedVolume, Stager, Unmounted
from blocklink.staging.usage import Usage


def stage(device: DeviceLike, staging_path: str, fs_type: str = "ext4", mount_options: Sequence[str] = (),
          mkfs_options: Sequence[str] = ()) -> StagedVolume:
    return Stager().stage(device, staging_path, fs_type, mount_options, mkfs_options)


def unstage(staging_path: str, force: bool = False) -> Unmounted:
    return Stager().unstage(staging_path, force)


def publish(staging_path: str, target_path: str, readonly: bool = False) -> Published:
    return Stager().publish(staging_path, target_path, readonly)


def publish_block(device: DeviceLike, target_path: str) -> Published:
    return Stager().publish_block(device, target_path)


def unpublish(target_path: str, force: bool = False) -> Unmounted:
    return Stager().unpublish(target_path, force)


def expand(staging_path: str) -> int:
    return Stager().expand(staging_path)


def stats(path: str) -> Usage:
    return Stager().stats(path)


def condition(path: str, device: Optional[AttachedDevice] = None) -> Condition:
    return Stager().condition(path, device)


__all__ = ["Condition", "DeviceInUse", "FilesystemCheckFailed", "ForeignSignature", "MountBusy", "MountConflict",
           "NotStaged", "ProbeFailed", "Published", "StagedVolume", "Stager", "StagingCommandFailed", "StagingError",
           "StillPublished", "Unmounted", "Usage", "condition", "expand", "publish", "publish_block", "stage",
           "stats", "unpublish", "unstage"]
