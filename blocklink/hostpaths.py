"""The one seam for host files: /sys, /dev, /etc, /proc and /run live under configurable roots.

Unit tests point a :class:`HostPaths` at a fake tree (see :mod:`blocklink.testing.hosttree`) and the
same host code runs unchanged; functional tests use the real roots. Writes to sysfs (SCSI scans,
device deletion) go through :meth:`HostPaths.write`, which uses the privileged seam when needed.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional


@dataclass(frozen=True)
class HostPaths:
    sysfs: str = "/sys"
    dev: str = "/dev"
    etc: str = "/etc"
    proc: str = "/proc"
    run: str = "/run"

    @classmethod
    def under(cls, root: str) -> "HostPaths":
        """All roots below one directory (a fake host tree)."""
        return cls(*(os.path.join(root, d) for d in ("sys", "dev", "etc", "proc", "run")))

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
            with open(path, "rb") as f:
                return f.read().decode(errors="replace").strip()
        except OSError:
            return default

    @staticmethod
    def read_bytes(path: str) -> Optional[bytes]:
        try:
            with open(path, "rb") as f:
                return f.read()
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
    def write(self, path: str, data: str) -> None:
        """Write to a sysfs attribute; as root in-process, otherwise through the privileged seam."""
        if os.geteuid() == 0 or not path.startswith("/sys/"):
            _write(path, data)
        else:  # pragma: no cover - exercised only as non-root with a privsep daemon
            from blocklink import privileged

            privileged.write_sysfs(path, data)


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.write(fd, data.encode())
    except OSError as e:
        if e.errno == errno.ENXIO:  # a gone device: sysfs delete on a vanished disk
            raise FileNotFoundError(errno.ENOENT, "device is gone", path) from None
        raise
    finally:
        os.close(fd)
