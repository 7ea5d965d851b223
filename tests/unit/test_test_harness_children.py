"""The test harness's process helpers: child processes that fail, die or hang fail the test and are
reaped; a hung test fails with the stacks and child processes that say where it hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from tests.harness import children, watchdog


def _square(n: int) -> int:
    return n * n


def _raise(n: int) -> int:
    raise ValueError(f"bad job {n}")


def _die(n: int) -> int:
    os._exit(3)


def _hang(n: int) -> int:
    threading.Event().wait()
    return n


def test_results_come_back_in_job_order() -> None:
    assert children.map_processes(_square, [3, 1, 2], timeout=60) == [9, 1, 4]


def test_a_child_that_raises_fails_with_its_traceback() -> None:
    with pytest.raises(AssertionError, match="ValueError: bad job 7"):
        children.map_processes(_raise, [7], timeout=60)


def test_a_child_that_dies_fails_the_call() -> None:
    with pytest.raises(AssertionError, match=r"died without a result \(exit status 3\)"):
        children.map_processes(_die, [1], timeout=60)


def test_a_hung_child_is_killed_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    real_start = children.start

    def start(*args):  # type: ignore[no-untyped-def]
        started.append(real_start(*args))
        return started[-1]

    monkeypatch.setattr(children, "start", start)
    with pytest.raises(AssertionError, match="1 of 2 child process.*within 1s"):
        children.map_processes(_square_or_hang, [2, -1], timeout=1)
    assert [p.is_alive() for p in started] == [False, False]


def _square_or_hang(n: int) -> int:
    return _hang(n) if n < 0 else n * n


def test_join_kills_and_names_a_child_still_running() -> None:
    p = children.start(_hang, 0)
    with pytest.raises(AssertionError, match=f"\\[{p.pid}\\] still running"):
        children.join([p], 0.5)
    assert not p.is_alive()


def test_a_hung_block_raises_with_stacks_and_child_processes() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    lock = threading.Lock()
    lock.acquire()
    t0 = time.monotonic()
    try:
        with pytest.raises(watchdog.TestHung) as ei:
            with watchdog.bounded("tests/x.py::test_y", 0.3):
                lock.acquire()  # never released: a deadlock
    finally:
        sleeper.kill()
        sleeper.wait()
    assert time.monotonic() - t0 < 30
    text = str(ei.value)
    assert text.startswith("tests/x.py::test_y ran longer than 0.3s")
    assert "lock.acquire()" in text and "--- thread MainThread" in text
    assert f"{sleeper.pid} S " in text and "sleep 60" in text


def test_the_bound_is_lifted_after_the_block() -> None:
    before = signal.getsignal(signal.SIGALRM)
    with watchdog.bounded("t", 30):
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is before
