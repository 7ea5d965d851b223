"""Event-driven waiting for devices: inotify on /dev directories plus kernel uevents, with a deadline.

A waiter arms its event sources *before* the first check, so an event between the check and the
wait is never lost. Each event (a link created in /dev/disk/by-path, a block device's "add" or
"change" uevent) re-runs the check; there is no fixed-interval sleep. Because some sysfs attribute
changes raise no event at all, the check also re-runs after ``recheck`` seconds without events.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket

import time
from typing import Callable, List, Optional, Sequence, TypeVar

from blocklink.errors import DeviceNotFound

T = TypeVar("T")

_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_MOVED_TO = 0x80
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_NETLINK_KOBJECT_UEVENT = 15

_libc: Optional[ctypes.CDLL] = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # the symbols already loaded (python links libc): ctypes.util.find_library would run ldconfig,
        # a child process in the middle of an attach
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


class DeviceEvents:
    """Event sources for one wait: inotify watches on ``dirs`` and (optionally) the uevent socket."""

    def __init__(self, dirs: Sequence[str] = (), uevents: bool = True) -> None:
        self._fds: List[int] = []
        self._sock: Optional[socket.socket] = None
        self._ino = -1
        if dirs:
            libc = _lib()
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                self._ino = fd
                for d in dirs:
                    target = _nearest_existing(d)
                    mask = _IN_CREATE | _IN_DELETE | _IN_MOVED_TO | _IN_ATTRIB | _IN_CLOSE_WRITE
                    libc.inotify_add_watch(fd, target.encode(), mask)
                self._fds.append(fd)
        if uevents:
            try:
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                  _NETLINK_KOBJECT_UEVENT)
                s.bind((0, 1))  # group 1: kernel uevents
                s.setblocking(False)
                self._sock = s
                self._fds.append(s.fileno())
            except OSError:  # not root / no netlink in this namespace: inotify + recheck still work
                self._sock = None

    def wait(self, timeout: float) -> bool:
        """Block until an event arrives or ``timeout`` passes; drains what arrived. True on events."""
        if timeout <= 0:
            return False
        if not self._fds:
            time.sleep(timeout)  # bounded: no event source available, caller's recheck interval
            return False
        try:
            ready, _, _ = select.select(self._fds, [], [], timeout)
        except InterruptedError:
            return False
        for fd in ready:
            self._drain(fd)
        return bool(ready)

    def _drain(self, fd: int) -> None:
        while True:
            try:
                if self._sock is not None and fd == self._sock.fileno():
                    self._sock.recv(65536)
                else:
                    os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.ENOBUFS):
                    return
                raise

    def close(self) -> None:
        if self._ino >= 0:
            os.close(self._ino)
            self._ino = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._fds = []

    def __enter__(self) -> "DeviceEvents":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.isdir(p) and p != "/":
        p = os.path.dirname(p)
    return p


class Pacer:
    """For a ``wait_for`` check that also *acts* (asks a daemon again, rescans a disk): the check runs on
    every event, the action at most once per ``every`` seconds. ``due()`` is True the first time."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._last: Optional[float] = None

    def due(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return True


def wait_for(check: Callable[[], Optional[T]], *, timeout: float, watch: Sequence[str] = (),
             uevents: bool = True, what: str = "device", recheck: float = 0.5) -> T:
    """Return ``check()``'s first non-None value; re-run it on every event; raise after ``timeout``."""
    with DeviceEvents(watch, uevents) as ev:
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceNotFound(what, timeout)
            ev.wait(min(left, recheck))


__all__ = ["DeviceEvents", "Pacer", "wait_for"]
