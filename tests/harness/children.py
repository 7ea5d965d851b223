"""Child processes for tests that need several OS processes (cross-process locks, races, kill -9 mid-flow).

Children are never forked from the test process. A test session always has other threads (the kernel
guest's reader, libvirt's event loop, librados' native threads); a child forked from a threaded process
inherits every lock some other thread held at that instant and blocks forever on the first one it takes
(a CI run stalled 85 minutes at the one test that waited on a fork ``Pool.map`` with no deadline).
They come from multiprocessing's fork server instead: a single-threaded interpreter that forks each
child, which imports what its target's module needs. Every wait here is bounded: a child still alive
at the deadline is killed by PID and the test fails naming it. Targets must be module-level functions.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

CTX = multiprocessing.get_context("forkserver")
# The fork server starts once per test session (a fresh, single-threaded interpreter) with these loaded;
# each child is forked from it and starts in milliseconds instead of importing them again (SQLAlchemy
# alone, which the attachment store loads on first use, costs 0.25 s per child).
CTX.set_forkserver_preload(["pytest", "blocklink", "blocklink.attach.flow", "blocklink.attach.records", "sqlalchemy",
                            "sqlalchemy.dialects.sqlite", "tests.harness.children"])


def start(target: Callable[..., Any], *args: Any) -> BaseProcess:
    """Start ``target(*args)`` in a child of the fork server."""
    p = CTX.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def join(procs: Sequence[BaseProcess], timeout: float) -> List[Optional[int]]:
    """Exit codes of ``procs`` once all have exited; a child alive at ``timeout`` seconds is killed and
    the call fails naming it (so nothing outlives the test)."""
    hung = _reap(procs, timeout)
    if hung:
        raise AssertionError(f"child process(es) {hung} still running after {timeout:g}s; killed")
    return [p.exitcode for p in procs]


def _reap(procs: Sequence[BaseProcess], timeout: float) -> List[Optional[int]]:
    """Wait up to ``timeout`` seconds for ``procs`` to exit, then kill the rest; their PIDs."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(10)
    return [p.pid for p in hung]


def _call(fn: Callable[[Any], Any], job: Any, out: Connection) -> None:
    try:
        out.send((True, fn(job)))
    except BaseException:
        out.send((False, traceback.format_exc()))
    finally:
        out.close()


def map_processes(fn: Callable[[Any], Any], jobs: Sequence[Any], timeout: float) -> List[Any]:
    """``[fn(job) for job in jobs]``, each call in its own child process, all at once; results in job
    order. A child that raises fails the call with its traceback; one that dies or hangs fails it too."""
    pipes = [CTX.Pipe(duplex=False) for _ in jobs]
    procs = [start(_call, fn, job, w) for job, (_, w) in zip(jobs, pipes)]
    for _, w in pipes:
        w.close()  # the child holds the write end now: its exit without a result reads as EOF here
    deadline = time.monotonic() + timeout
    pending = {r: i for i, (r, _) in enumerate(pipes)}
    got: Dict[int, Tuple[bool, Any]] = {}
    complete = False
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(pending)} of {len(jobs)} child process(es) gave no result "
                                     f"within {timeout:g}s")
            for ready in wait(list(pending), left):
                r = cast(Connection, ready)
                i = pending.pop(r)
                try:
                    got[i] = r.recv()
                except EOFError:
                    procs[i].join(5)
                    raise AssertionError(f"child process {procs[i].pid} died without a result "
                                         f"(exit status {procs[i].exitcode})") from None
        complete = True
    finally:  # once its result is sent a child exits; after a failure, the rest get a second, then SIGKILL
        for r, _ in pipes:
            r.close()
        _reap(procs, max(5.0, deadline - time.monotonic()) if complete else 1.0)
    failed = [value for ok, value in got.values() if not ok]
    if failed:
        raise AssertionError("a child process raised:\n" + failed[0])
    return [got[i][1] for i in range(len(jobs))]
