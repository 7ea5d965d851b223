"""A per-test time limit for host-run tests: a hung test fails with every thread's stack instead of
holding the whole run until CI's own limit ends it without a word.

``BLOCKLINK_TEST_TIMEOUT`` (seconds, default 900; ``0`` turns it off) bounds one test's setup, call
and teardown together. When it expires, SIGALRM raises :class:`TestHung` in the main thread (blocking
waits in Python are interrupted by signals), naming the test, with the stacks of all Python threads
and the test process's descendant processes (state and kernel wait channel). Tests delegated to the
kernel guest are not covered here: the guest harness has its own idle limit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from typing import Any, Dict, Iterator, List

TIMEOUT_ENV = "BLOCKLINK_TEST_TIMEOUT"
DEFAULT_TIMEOUT = 900.0


class TestHung(Exception):
    """A test ran past ``BLOCKLINK_TEST_TIMEOUT``."""

    __test__ = False  # not a test class, whatever its name


def limit() -> float:
    return float(os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT)))


def thread_stacks() -> str:
    """The innermost frames of every Python thread, named."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        out.append(f"--- thread {names.get(ident, '?')} ({ident}) ---\n" + "".join(traceback.format_stack(frame, limit=12)))
    return "\n".join(out)


def _proc_field(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def descendants(root: int) -> List[str]:
    """One line per live descendant of ``root``: pid, state, wait channel, command line."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_field(int(entry), "stat")
        try:  # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'
            fields = stat[stat.rindex(")") + 2:].split()
        except ValueError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    lines, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        stat = _proc_field(pid, "stat")
        state = stat[stat.rindex(")") + 2:].split()[0] if ")" in stat else "?"
        lines.append(f"{pid} {state} {_proc_field(pid, 'wchan') or '-'} {_proc_field(pid, 'cmdline')[:200]}")
        todo += children.get(pid, [])
    return lines


@contextlib.contextmanager
def bounded(nodeid: str, seconds: float) -> Iterator[None]:
    """Raise :class:`TestHung` in the main thread if the block runs longer than ``seconds``."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        procs = "\n".join(descendants(os.getpid())) or "(none)"
        raise TestHung(f"{nodeid} ran longer than {seconds:g}s ({TIMEOUT_ENV}): it hangs.\n"
                       f"=== Python threads ===\n{thread_stacks()}\n"
                       f"=== child processes (pid state wchan argv) ===\n{procs}")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
