"""Which processes keep a filesystem (or a block device) busy: open files, working or root
directories, and memory mappings, found in /proc/<pid>/{fd,cwd,root,maps}.

Files are matched by the device they live on (``st_dev``), not by path, so a file opened through any
bind mount of the filesystem (or one already deleted) counts; mappings by the ``maj:min`` column of
``maps``. Only path-like fd links are stat'ed (pipes, sockets and anon inodes are skipped).
"""

from __future__ import annotations

import os
import stat
from typing import List, Optional, Set

from blocklink.hostpaths import HostPaths


def maps_devices(text: str) -> Set[tuple[int, int]]:
    """``(major, minor)`` of every file-backed mapping in a /proc/<pid>/maps text (hex ``08:10`` column)."""
    out = set()
    for line in text.splitlines():
        f = line.split(None, 5)
        if len(f) < 5 or f[4] == "0" or ":" not in f[3]:
            continue  # anonymous mapping
        try:
            ma, mi = f[3].split(":")
            out.add((int(ma, 16), int(mi, 16)))
        except ValueError:
            continue
    return out


def _stat(path: str) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None


def holders(paths: HostPaths, major: int, minor: int, *, skip_self: bool = True) -> List[str]:
    """``pid N (comm): what`` for every process using the filesystem on ``major:minor`` or holding
    that block device open."""
    want = os.makedev(major, minor)
    me = str(os.getpid())
    out = []
    for pid in paths.listdir(paths.proc):
        if not pid.isdigit() or (skip_self and pid == me):
            continue
        uses: List[str] = []
        fd_dir = paths.procpath(pid, "fd")
        for fd in paths.listdir(fd_dir):
            link = paths.readlink(os.path.join(fd_dir, fd)) or ""
            if not link.startswith("/"):
                continue
            st = _stat(os.path.join(fd_dir, fd))
            if st is None:
                continue
            if st.st_dev == want:
                uses.append(f"open {link}")
            elif stat.S_ISBLK(st.st_mode) and st.st_rdev == want:
                uses.append(f"device open {link}")
        for name in ("cwd", "root"):
            st = _stat(paths.procpath(pid, name))
            if st is not None and st.st_dev == want:
                uses.append(f"{name} {paths.readlink(paths.procpath(pid, name)) or '?'}")
        if (major, minor) in maps_devices(paths.read(paths.procpath(pid, "maps"), "") or ""):
            uses.append("mapped file")
        if uses:
            comm = paths.read(paths.procpath(pid, "comm"), "?")
            out.append(f"pid {pid} ({comm}): {', '.join(dict.fromkeys(uses))}")
    return out


__all__ = ["holders", "maps_devices"]
