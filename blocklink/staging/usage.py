"""Capacity and use of a published or staged path: bytes and inodes from statvfs(2) (what ``df`` shows),
or only the size for a block device node (block-mode publish)."""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class Usage:
    path: str
    bytes_total: int
    bytes_used: Optional[int] = None
    bytes_available: Optional[int] = None  # to unprivileged users (reserved blocks excluded), as df
    inodes_total: Optional[int] = None
    inodes_used: Optional[int] = None
    inodes_available: Optional[int] = None
    block: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def from_statvfs(path: str, sv: os.statvfs_result) -> Usage:
    frsize = sv.f_frsize or sv.f_bsize
    return Usage(path=path, bytes_total=sv.f_blocks * frsize, bytes_used=(sv.f_blocks - sv.f_bfree) * frsize,
                 bytes_available=sv.f_bavail * frsize, inodes_total=sv.f_files,
                 inodes_used=sv.f_files - sv.f_ffree, inodes_available=sv.f_favail)


def block_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def usage(path: str) -> Usage:
    if stat.S_ISBLK(os.stat(path).st_mode):
        return Usage(path=path, bytes_total=block_size(path), block=True)
    return from_statvfs(path, os.statvfs(path))


__all__ = ["Usage", "block_size", "from_statvfs", "usage"]
