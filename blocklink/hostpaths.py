"""The one seam for host files: /sys, /dev, /etc, /proc and /run live under configurable roots.

Unit tests point a :class:`HostPaths` at a fake tree (see :mod:`blocklink.testing.hosttree`) and the
same host code runs unchanged; functional tests use the real roots. Writes under the ``sysfs``
root (SCSI scans, device deletion, nvmet configfs) go through the tree's injected
:class:`~blocklink.privileged.HostWriter`: :data:`~blocklink.privileged.PRIVILEGED` for the real host
(the default), :data:`~blocklink.privileged.DIRECT` for a tree the caller owns (:meth:`HostPaths.under`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional

from blocklink.privileged import DIRECT, PRIVILEGED, HostWriter


def _read_all(path: str) -> bytes:
    """A file's bytes with plain open/read/close: sysfs attributes are read by the hundred while a
    volume is found, and a buffered ``open()`` adds an isatty ioctl, two fstats and two seeks to each."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: List[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class HostPaths:
    sysfs: str = "/sys"
    dev: str = "/dev"
    etc: str = "/etc"
    proc: str = "/proc"
    run: str = "/run"
    writer: HostWriter = field(default=PRIVILEGED, compare=False, repr=False)  # for paths under sysfs

    @classmethod
    def under(cls, root: str) -> "HostPaths":
        """All roots below one directory (a fake host tree, written with the caller's own rights)."""
        sysfs, dev, etc, proc, run = (os.path.join(root, d) for d in ("sys", "dev", "etc", "proc", "run"))
        return cls(sysfs, dev, etc, proc, run, writer=DIRECT)

    # path builders -----------------------------------------------------------------------
    def sys(self, *parts: str) -> str:
        return os.path.join(self.sysfs, *parts)

    def devpath(self, *parts: str) -> str:
        return os.path.join(self.dev, *parts)

    def etcpath(self, *parts: str) -> str:
        return os.path.join(self.etc, *parts)

    def procpath(self, *parts: str) -> str:
        return os.path.join(self.proc, *parts)

    def runpath(self, *parts: str) -> str:
        return os.path.join(self.run, *parts)

    def to_host(self, dev_path: str) -> str:
        """Map a path under this tree's /dev back to the canonical ``/dev/...`` name."""
        if dev_path.startswith(self.dev + os.sep):
            return "/dev/" + dev_path[len(self.dev) + 1:]
        return dev_path

    def from_host(self, path: str) -> str:
        """Map a canonical ``/dev/...`` name to a path in this tree."""
        if path.startswith("/dev/"):
            return os.path.join(self.dev, path[5:])
        return path

    # reads -------------------------------------------------------------------------------
    @staticmethod
    def read(path: str, default: Optional[str] = None) -> Optional[str]:
        """The file's text stripped of surrounding whitespace, or ``default`` if it is unreadable."""
        try:
            return _read_all(path).decode(errors="replace").strip()
        except OSError:
            return default

    @staticmethod
    def read_bytes(path: str) -> Optional[bytes]:
        try:
            return _read_all(path)
        except OSError:
            return None

    @staticmethod
    def listdir(path: str) -> List[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.lexists(path)

    @staticmethod
    def realpath(path: str) -> str:
        try:
            return os.path.realpath(path)
        except OSError:
            # non-strict realpath still raises when a link vanishes between its lstat and readlink (udev
            # removing a /dev/disk link while we list them): resolving again sees it gone (path returned as is)
            return os.path.realpath(path)

    @staticmethod
    def readlink(path: str) -> Optional[str]:
        try:
            return os.readlink(path)
        except OSError:
            return None

    def glob(self, directory: str, prefix: str = "") -> Iterator[str]:
        for name in self.listdir(directory):
            if name.startswith(prefix):
                yield os.path.join(directory, name)

    # writes ------------------------------------------------------------------------------
    def in_sysfs(self, path: str) -> bool:
        return os.path.normpath(path).startswith(self.sysfs.rstrip("/") + "/")

    def files(self, path: str) -> HostWriter:
        """Who changes ``path``: the injected writer inside the sysfs root, the caller elsewhere."""
        return self.writer if self.in_sysfs(path) else DIRECT

    def write(self, path: str, data: str) -> None:
        """Write an attribute (under sysfs through :attr:`writer`, e.g. as root)."""
        self.files(path).write(path, data)

    def restrict(self, path: str) -> None:
        """Make an attribute (or file) readable by its owner only (mode 0600)."""
        self.files(path).restrict(path)

    def fabrics(self, options: Any = "") -> str:
        """Write ``options`` to this tree's ``nvme-fabrics`` device through :attr:`writer` and return the
        kernel's answer (empty ``options``: the option tokens the kernel knows)."""
        return self.writer.fabrics(self.devpath("nvme-fabrics"), options)
