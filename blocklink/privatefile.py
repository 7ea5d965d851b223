"""Files that may hold secrets (CHAP in node records, cephx keys, saved target configuration):
0600 from their first byte and never opened through a symlink someone planted."""

from __future__ import annotations

import os
import threading

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_private(path: str, text: str) -> None:
    """Create ``path`` 0600 holding ``text``; an existing file (or link) there is an error."""
    with os.fdopen(os.open(path, _NEW, 0o600), "w") as f:
        f.write(text)


def replace_private(path: str, text: str, *, sync_dir: bool = False) -> None:
    """Replace ``path`` atomically with a 0600 file holding ``text``: readers see the old or the new
    content, never a part, and the file is never briefly world-readable. ``sync_dir`` also makes the
    rename itself durable (records that must survive a power cut)."""
    d, base = os.path.split(path)
    # unique per process and thread: concurrent writers of one path each rename a whole file
    tmp = os.path.join(d, f".{base}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, _NEW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        dfd = os.open(d or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


__all__ = ["create_private", "replace_private"]
