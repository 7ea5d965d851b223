"""Typed refusals of the staging layer; each names the device, the path and what was found.

Defined in :mod:`blocklink.errors` with every other error; re-exported here for the staging modules.
"""

from blocklink.errors import (DeviceInUse, FilesystemCheckFailed, ForeignSignature, MountBusy, MountConflict,
                              NotStaged, ProbeFailed, StagingCommandFailed, StagingError, StillPublished)

__all__ = ["StagingError", "ForeignSignature", "ProbeFailed", "DeviceInUse", "MountConflict", "NotStaged",
           "MountBusy", "StillPublished", "FilesystemCheckFailed", "StagingCommandFailed"]
