"""What ``stage`` did, remembered per staging path in a 0600 JSON file under a 0700 state directory
(``/run/blocklink/staging`` by default: it lives exactly as long as the mounts it describes).

The record answers what the kernel cannot: the options the volume was staged with (the kernel shows
them normalised and partly hidden), the identity of the volume at stage time (for ``condition``),
whether ``stage`` created the staging directory (``unstage`` then removes it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

from blocklink.privatefile import replace_private
from blocklink.staging.identity import VolumeIdentity


@dataclass(frozen=True)
class StagingRecord:
    staging_path: str
    device: str
    major: int
    minor: int
    fs_type: str
    mount_options: Tuple[str, ...] = ()
    fs_uuid: Optional[str] = None
    identity: VolumeIdentity = field(default_factory=VolumeIdentity)
    created_dir: bool = False

    @property
    def readonly(self) -> bool:
        return "ro" in self.mount_options

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["mount_options"] = list(self.mount_options)
        d["identity"] = self.identity.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "StagingRecord":
        return cls(staging_path=str(d["staging_path"]), device=str(d["device"]), major=int(d["major"]),
                   minor=int(d["minor"]), fs_type=str(d["fs_type"]),
                   mount_options=tuple(str(o) for o in d.get("mount_options") or ()),
                   fs_uuid=d.get("fs_uuid"), identity=VolumeIdentity.from_dict(d.get("identity") or {}),
                   created_dir=bool(d.get("created_dir")))


class RecordStore:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir

    def _file(self, staging_path: str) -> str:
        key = hashlib.sha256(os.path.normpath(staging_path).encode()).hexdigest()[:32]
        return os.path.join(self.state_dir, f"{key}.json")

    def load(self, staging_path: str) -> Optional[StagingRecord]:
        try:
            with open(self._file(staging_path)) as f:
                rec = StagingRecord.from_dict(json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no record (or an unreadable one): the caller decides from the kernel's view
        return rec if rec.staging_path == os.path.normpath(staging_path) else None

    def save(self, rec: StagingRecord) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        replace_private(self._file(rec.staging_path), json.dumps(rec.to_dict(), sort_keys=True))

    def drop(self, staging_path: str) -> None:
        try:
            os.unlink(self._file(staging_path))
        except FileNotFoundError:
            pass


__all__ = ["RecordStore", "StagingRecord"]
