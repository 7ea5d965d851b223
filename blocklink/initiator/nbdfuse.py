"""nbdfuse: the attached volume as a regular file, in front of the daemon's NBD unix socket.

Why not qemu-storage-daemon's own FUSE export: up to at least qemu 10.0 its write handler hands
libfuse's single receive buffer to the block layer, which polls the event loop while the write is
in flight; a FUSE request arriving meanwhile is read into the same buffer and replaces the data
still being written (fixed upstream in 2025 by copying the buffer first). On Debian 12's 7.2 this
corrupts every O_DIRECT write larger than 1 MiB, asynchronous direct I/O and mmap writeback.
nbdfuse (libnbd) gives each request its own buffer, so the file is safe for any I/O pattern.

nbdfuse does not detach by itself; ``start-stop-daemon --background`` starts it through the
executor with its output in the run directory, and nbdfuse writes ``-P`` only once it serves.
"""

from __future__ import annotations

import os
import shutil
from typing import List, Optional

from blocklink.errors import CommandFailed, ConnectionFailed, DeviceBusy, DeviceNotFound
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.qsd import NODE, DaemonDied, DaemonLayout, mount_fstype, pid_alive, stop_pid, wait_pid_exit
from blocklink.masking import get_logger

LOG = get_logger(__name__)


def nbd_uri(layout: DaemonLayout) -> str:
    return f"nbd+unix:///{NODE}?socket={layout.nbd}"


class NbdFuseBridge:
    """Mount (and unmount) ``layout.disk`` as the daemon's NBD export through nbdfuse."""

    def __init__(self, layout: DaemonLayout, executor: Executor, paths: HostPaths, *,
                 binary: str = "nbdfuse", timeout: float = 30.0) -> None:
        self.layout = layout
        self.executor = executor
        self.paths = paths
        self.binary = binary
        self.timeout = timeout

    def pid(self) -> Optional[int]:
        text = self.paths.read(self.layout.bridge_pidfile)
        return int(text) if text and text.isdigit() else None

    def _log_tail(self) -> str:
        text = (self.paths.read(self.layout.bridge_log) or "").strip()
        return text.splitlines()[-1] if text else "no message"

    def start(self, name: str, read_only: bool) -> int:
        exe = self.binary if os.path.isabs(self.binary) else shutil.which(self.binary)
        if not exe:
            raise ConnectionFailed(name, f"{self.binary} is not installed (Debian: libnbd-bin)")
        argv = ["start-stop-daemon", "--start", "--background", "--make-pidfile",
                "--pidfile", self.layout.bridge_pidfile, "--output", self.layout.bridge_log, "--exec", exe, "--",
                "-P", self.layout.bridge_ready] + (["--readonly"] if read_only else []) + \
            [self.layout.disk, nbd_uri(self.layout)]
        try:
            self.executor.run(argv, timeout=self.timeout)
        except CommandFailed as e:
            raise ConnectionFailed(name, f"cannot start nbdfuse: {e}") from None

        def ready() -> Optional[int]:
            if self.paths.read(self.layout.bridge_ready):
                return self.pid() or 0
            pid = self.pid()
            if pid is not None and not pid_alive(pid, self.paths):
                raise DaemonDied(name, f"nbdfuse exited: {self._log_tail()}", pid)
            return None

        try:
            pid = wait_for(ready, timeout=self.timeout, watch=[self.layout.dir], uevents=False,
                           what=f"nbdfuse for {name}")
        except DeviceNotFound:
            raise ConnectionFailed(name, f"nbdfuse did not come up in {self.timeout:.0f}s") from None
        if mount_fstype(self.layout.disk, self.paths) is None:
            raise DaemonDied(name, f"nbdfuse runs but {self.layout.disk} is not mounted", pid)
        return pid

    def check(self, name: str) -> int:
        pid = self.pid()
        if pid is None or not pid_alive(pid, self.paths):
            raise DaemonDied(name, "nbdfuse " + (f"(pid {pid}) exited" if pid else "is not running"), pid)
        if mount_fstype(self.layout.disk, self.paths) is None:
            raise DaemonDied(name, f"{self.layout.disk} is not mounted", pid)
        return pid

    def stop(self, hard: bool) -> List[str]:
        """Unmount (nbdfuse then exits by itself); lazily and by signal when ``hard``. Returns failures."""
        disk = self.layout.disk
        failures: List[str] = []
        lazy = False
        if mount_fstype(disk, self.paths) is not None:
            res = self.executor.run(["fusermount3", "-u", disk], check=False)
            if res.exit_code != 0 and mount_fstype(disk, self.paths) is not None:
                if not hard:
                    raise DeviceBusy(disk, (res.stderr or "").strip() or "unmount refused")
                lazy = True  # nbdfuse would serve the open files until they close: it is signalled below
                self.executor.run(["fusermount3", "-u", "-z", disk], check=False)
                if mount_fstype(disk, self.paths) is not None:
                    self.executor.run(["umount", "-l", disk], check=False)
            if mount_fstype(disk, self.paths) is not None:
                failures.append(f"{disk} is still mounted")
        pid = self.pid()
        if pid is not None and pid_alive(pid, self.paths) \
                and (lazy or not wait_pid_exit(pid, self.timeout, self.paths)) \
                and not stop_pid(pid, disk, self.executor, self.paths, self.timeout):
            failures.append(f"nbdfuse pid {pid} did not exit")
        return failures


__all__ = ["NbdFuseBridge", "nbd_uri"]
