"""Per-resource inter-process locks (one per target, portal or image; never one host-wide lock).

A lock is an ``flock`` on ``<lock_path>/blocklink-<name>``. The holder removes the file when it
releases the lock, so nothing of a detached volume stays behind (a host that attached a million
volumes keeps no million lock files). Removing a lock file is safe with this protocol: whoever gets
the ``flock`` checks that the file it locked is still the one at the path, and starts over if the
previous holder removed it meanwhile, so two processes can never both hold a lock of one name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from typing import Iterator

_SAFE = re.compile(r"[^A-Za-z0-9._:\-]")


class LockFactory:
    """Inter-process (and inter-thread) locks under ``lock_path`` (created 0700 on first use)."""

    def __init__(self, lock_path: str) -> None:
        self.lock_path = lock_path

    @staticmethod
    def lock_name(name: str) -> str:
        safe = _SAFE.sub("_", name)
        if len(safe) > 120 or safe != name:  # keep names unique after sanitising
            safe = safe[:100] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
        return safe

    def path_of(self, name: str) -> str:
        return os.path.join(self.lock_path, "blocklink-" + self.lock_name(name))

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        path = self.path_of(name)
        try:
            fd = _acquire(path)
        except FileNotFoundError:  # the directory is made on first use (not checked on every lock)
            os.makedirs(self.lock_path, mode=0o700, exist_ok=True)
            fd = _acquire(path)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # still holding the flock: a waiter on this inode will see it gone
            os.close(fd)  # releases the flock


def _acquire(path: str) -> int:
    """An fd holding the flock of the file now at ``path`` (flock locks belong to the open file, so
    threads of one process exclude each other too)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # the holder before us removed it on release: lock the current file instead
