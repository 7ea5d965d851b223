"""Per-resource inter-process locks (one per target, portal or image; never one host-wide lock)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from typing import Iterator

_SAFE = re.compile(r"[^A-Za-z0-9._:\-]")


class LockFactory:
    """``oslo_concurrency.lockutils`` external locks under ``lock_path`` (created 0700 on first use)."""

    def __init__(self, lock_path: str) -> None:
        self.lock_path = lock_path

    @staticmethod
    def lock_name(name: str) -> str:
        safe = _SAFE.sub("_", name)
        if len(safe) > 120 or safe != name:  # keep names unique after sanitising
            safe = safe[:100] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
        return safe

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        from oslo_concurrency import lockutils  # lazy: keep `import blocklink` light

        os.makedirs(self.lock_path, mode=0o700, exist_ok=True)
        with lockutils.lock(self.lock_name(name), lock_file_prefix="blocklink-", external=True,
                            lock_path=self.lock_path):
            yield
