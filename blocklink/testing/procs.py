"""Stopping daemons by PID (never by name), treating zombies as dead."""

from __future__ import annotations

import os
import signal
import time
from typing import Iterable, List, Optional


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pidfile(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def stop_pids(pids: Iterable[int], sig: int = signal.SIGTERM, timeout: float = 15.0,
              must_contain: str = "") -> List[int]:
    """Signal ``pids`` (only those whose cmdline contains ``must_contain``), wait, then SIGKILL.

    Returns the PIDs that were signalled.
    """
    targets = [p for p in pids if alive(p) and (not must_contain or must_contain in cmdline(p))]
    for p in targets:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in targets) and time.monotonic() < deadline:
        _reap(targets)
        time.sleep(0.05)  # bounded: waiting for foreign processes to exit has no event to wait on
    for p in targets:
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while any(alive(p) for p in targets) and time.monotonic() < deadline:
        _reap(targets)
        time.sleep(0.05)  # bounded
    return targets


def _reap(pids: Iterable[int]) -> None:
    for p in pids:
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass
