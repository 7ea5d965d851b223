"""Per-resource locks: exclusive across processes and threads, and no lock file left once released."""

from __future__ import annotations

import os
import threading
from typing import Any, List

from blocklink.locks import LockFactory
from tests.harness import children

ROUNDS = 150


def _count(lock_path: str, counter: str, start: Any) -> None:
    locks = LockFactory(lock_path)
    start.wait()
    for _ in range(ROUNDS):
        with locks.lock("iscsi-volume-iqn.x:vol-lun-1"):
            with open(counter) as f:
                n = int(f.read() or 0)
            with open(counter, "w") as f:  # a lost update shows if two holders overlap
                f.write(str(n + 1))


def test_released_locks_leave_no_file(tmp_path: Any) -> None:
    locks = LockFactory(str(tmp_path / "locks"))
    for i in range(20):
        with locks.lock(f"qsd-volume-{i}"):
            assert os.path.exists(locks.path_of(f"qsd-volume-{i}"))
    assert os.listdir(tmp_path / "locks") == []
    assert oct(os.stat(tmp_path / "locks").st_mode & 0o777) == "0o700"


def test_exclusive_across_processes_while_files_come_and_go(tmp_path: Any) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    start = children.CTX.Event()
    procs = [children.start(_count, str(tmp_path / "locks"), str(counter), start) for _ in range(4)]
    start.set()
    assert children.join(procs, 120) == [0, 0, 0, 0]
    assert counter.read_text() == str(4 * ROUNDS)
    assert os.listdir(tmp_path / "locks") == []


def test_exclusive_between_threads_and_independent_across_names(tmp_path: Any) -> None:
    locks = LockFactory(str(tmp_path / "locks"))
    inside: List[str] = []
    other_ran = threading.Event()

    def other() -> None:
        with locks.lock("b"):  # another name is not blocked by "a"
            other_ran.set()

    with locks.lock("a"):
        t = threading.Thread(target=other)
        t.start()
        assert other_ran.wait(30)
        t.join()
        waiter_done = threading.Event()

        def same() -> None:
            with locks.lock("a"):
                inside.append("waiter")
            waiter_done.set()

        w = threading.Thread(target=same)
        w.start()
        assert not waiter_done.wait(0.3)  # blocked while we hold "a"
        inside.append("holder")
    w.join(30)
    assert inside == ["holder", "waiter"]


def test_the_lock_directory_is_made_private_when_missing(tmp_path: Any) -> None:
    """Made (0700) on first use and again if removed meanwhile; not looked for on every lock."""
    locks = LockFactory(str(tmp_path / "run" / "locks"))
    for _ in range(2):
        with locks.lock("lio-config"):
            assert os.stat(locks.lock_path).st_mode & 0o777 == 0o700
            assert os.listdir(locks.lock_path) == [os.path.basename(locks.path_of("lio-config"))]
        assert os.listdir(locks.lock_path) == []
        os.rmdir(locks.lock_path)
