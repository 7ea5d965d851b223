"""Run ``@pytest.mark.kernel`` tests inside one real-kernel guest per pytest session.

Host side (:class:`GuestTestRun`, used by a ``conftest.py``): when collection ends (:func:`start_early`;
else at the first kernel item), one guest
boots and runs ``python -m pytest <all selected kernel node ids>`` from the same rootdir with
the same interpreter (the host's venv, seen read-only over 9p). Each host item then waits for its
own reports and logs them as if it had run locally: outcome, guest-side traceback, captured
output, duration. Failures of the guest itself (no boot, crash, timeout) fail the items with the
guest console's tail.

Guest side (this module given to the guest's pytest with ``-p``): each report is serialized with
pytest's own ``pytest_report_to_serializable`` and appended as one JSON line to the file named by
``BLOCKLINK_GUEST_REPORTS`` (in a host folder shared read-write), so the host sees it at once.

Environment knobs (host): ``BLOCKLINK_GUEST_KEEP=1`` keeps the run dir (console.log, qemu.log,
results/pytest.log, results/junit.xml, results/reports.jsonl); ``BLOCKLINK_GUEST_DEBUG=1`` full
kernel log; ``BLOCKLINK_GUEST_TIMEOUT`` seconds for the whole guest run (default 4 h);
``BLOCKLINK_GUEST_IDLE_TIMEOUT`` seconds without any result before the guest counts as hung (900);
``BLOCKLINK_GUEST_MEM_MB`` (2048), ``BLOCKLINK_GUEST_TB_MB`` (128).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Literal, Optional, Sequence

import pytest

from tests.harness.guest.machine import Guest, GuestBootError, GuestError, GuestResult, make_run_dir
from tests.harness.guest.qemu import DEFAULT_NIC_MODEL

REPORTS_ENV = "BLOCKLINK_GUEST_REPORTS"
_STASH_KEY = pytest.StashKey["GuestTestRun"]()
HOST_PHASE_FD_ENV = "BLOCKLINK_HOST_PHASE_FD"
_FORWARD_SKIP = ("BLOCKLINK_GUEST_", "BLOCKLINK_IN_GUEST", HOST_PHASE_FD_ENV)
# the checkout holding this harness (tests/harness/guest/ is not installed with blocklink)
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


# ---------------------------------------------------------------------------- guest side
class ReportWriter:
    """Appends every test and collection report, serialized, to one JSON-lines file."""

    def __init__(self, config: pytest.Config, path: str) -> None:
        self.config = config
        self.path = path

    def _write(self, report: Any) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        if data is None:
            return
        line = json.dumps(data, default=repr) + "\n"
        with open(self.path, "a") as f:
            f.write(line)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._write(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write(report)


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(REPORTS_ENV)
    if path:
        config.pluginmanager.register(ReportWriter(config, path), "blocklink-guest-report-writer")


# ---------------------------------------------------------------------------- host side
def guest_pytest_argv(config: pytest.Config, nodeids: Sequence[str], results_dir: str) -> List[str]:
    # no cache (read-only root); no hypothesis plugin: importing it costs ~5 s under TCG
    argv = [sys.executable, "-m", "pytest", "-p", __name__, "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
            "--rootdir", str(config.rootpath), f"--junitxml={os.path.join(results_dir, 'junit.xml')}",
            "-o", "junit_family=xunit2", "-q",
            "--continue-on-collection-errors"]  # one broken file must not take every kernel test down
    if config.inipath:
        argv += ["-c", str(config.inipath)]
    maxfail = getattr(config.option, "maxfail", 0)
    if maxfail:
        argv.append(f"--maxfail={maxfail}")
    return argv + ["--", *nodeids]


def forwarded_env(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Host variables the guest's pytest gets too: blocklink's own test knobs (not the guest's)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith("BLOCKLINK_") and not k.startswith(_FORWARD_SKIP)}


def guest_pythonpath(environ: Optional[Dict[str, str]] = None) -> str:
    """``PYTHONPATH`` for the guest's pytest: this checkout first, so ``-p`` finds this plugin whatever the
    rootdir (a session rooted elsewhere too), then the host session's own entries."""
    env = os.environ if environ is None else environ
    entries = [CHECKOUT] + [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e and e != CHECKOUT]
    return os.pathsep.join(entries)


class GuestTestRun:
    """The guest of one host session and the reports it produced."""

    def __init__(self, config: pytest.Config, nodeids: Sequence[str], nics: int = 0,
                 nic_model: str = DEFAULT_NIC_MODEL) -> None:
        env = os.environ
        self.config = config
        self.nodeids = list(nodeids)
        self.nics = nics
        self.nic_model = nic_model
        self.keep = env.get("BLOCKLINK_GUEST_KEEP") == "1"
        self.timeout = float(env.get("BLOCKLINK_GUEST_TIMEOUT", str(4 * 3600)))
        self.idle_timeout = float(env.get("BLOCKLINK_GUEST_IDLE_TIMEOUT", "900"))
        self.results_dir = ""
        self.reports_path = ""
        self.guest: Optional[Guest] = None
        self.error: Optional[str] = None       # why there can be no results at all
        self.result: Optional[GuestResult] = None
        self._thread: Optional[threading.Thread] = None
        self._done = threading.Event()
        self._offset = 0
        self._partial = b""
        self._reports: Dict[str, List[Dict[str, Any]]] = {}
        self._finished: set = set()
        self._collect_errors: List[Dict[str, Any]] = []
        self.t_start = time.monotonic()
        self.t_first_report: Optional[float] = None
        self.t_end: Optional[float] = None
        self._last_activity = time.monotonic()
        self._sigterm_installed = False
        self.boot_retries: List[str] = []  # what each boot that panicked early said (see start)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        env = os.environ
        self._catch_sigterm()
        self.results_dir = make_run_dir("blguest-results-", keep=self.keep)
        self.reports_path = os.path.join(self.results_dir, "reports.jsonl")
        open(self.reports_path, "w").close()
        options = dict(rw_dirs=[self.results_dir], nics=self.nics, nic_model=self.nic_model, keep=self.keep,
                       debug=env.get("BLOCKLINK_GUEST_DEBUG") == "1",
                       mem_mb=int(env.get("BLOCKLINK_GUEST_MEM_MB", "2048")),
                       tb_mb=int(env.get("BLOCKLINK_GUEST_TB_MB", "128")))
        try:
            try:
                self.guest = Guest.boot(**options)
            except GuestBootError as e:
                if not early_boot_panic(e):
                    raise
                # Linux 6.12 under multi-threaded TCG, host loaded: an int3 Oops while the kernel patches its
                # own text at init (seen in sched_clock_cpu, before any module or test ran): qemu's
                # cross-vCPU code invalidation raced the patch. Such a boot is retried once, and said so.
                self.boot_retries.append(e.reason + "\n" + "\n".join(e.console_tail.splitlines()[:12]))
                self.guest = Guest.boot(**options)
        except Exception as e:  # reported on every kernel item
            self.error = f"the kernel test guest did not boot: {e}"
            self._done.set()
            return
        self._last_activity = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="blocklink-guest-pytest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.guest is not None
        argv = guest_pytest_argv(self.config, self.nodeids, self.results_dir)
        env = forwarded_env()
        # no entry-point plugin scan: reading every dist-info over 9p costs seconds (see guest_pytest_argv)
        env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                    "PYTHONPATH": guest_pythonpath(), REPORTS_ENV: self.reports_path})
        try:
            self.result = self.guest.run(argv, env=env, cwd=str(self.config.rootpath), timeout=self.timeout)
            with open(os.path.join(self.results_dir, "pytest.log"), "wb") as f:
                f.write(self.result.stdout_bytes + self.result.stderr_bytes)
            if self.result.timed_out:
                self._fail(f"the guest's pytest run exceeded BLOCKLINK_GUEST_TIMEOUT={self.timeout:.0f}s")
        except GuestError as e:
            self._fail(f"the kernel test guest failed: {e}")
        except Exception as e:  # socket closed by a shutdown from the main thread, ...
            self._fail(f"the kernel test guest run was interrupted: {e!r}")
        finally:
            self.t_end = time.monotonic()
            self._done.set()

    def _fail(self, reason: str) -> None:
        if self.error is None:  # the first reason is the real one
            self.error = reason

    def _check_idle(self) -> bool:
        """A guest that reports nothing for ``idle_timeout`` seconds is hung: stop it (True if so)."""
        if self._done.is_set() or time.monotonic() - self._last_activity <= self.idle_timeout:
            return False
        tail = self.guest.console_tail() if self.guest is not None else ""
        self._fail(f"no test result from the guest for {self.idle_timeout:.0f}s (BLOCKLINK_GUEST_IDLE_TIMEOUT): "
                   f"a hung test or guest; stopped it\n--- guest console (last lines) ---\n{tail}")
        if self.guest is not None:
            self.guest.shutdown(graceful=False)
        if self._thread is not None:
            self._thread.join(30)  # its guest.run() fails now that qemu is gone
        return True

    def _catch_sigterm(self) -> None:
        """``timeout pytest ...`` sends SIGTERM, which would end Python without any cleanup: turn it into
        the KeyboardInterrupt pytest handles (session finish stops the guest by PID)."""
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _interrupt)
            self._sigterm_installed = True

    def stop(self) -> None:
        if self._sigterm_installed and signal.getsignal(signal.SIGTERM) is _interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not self._done.is_set():
            self._read_new()
            if self.nodeids and all(n in self._finished for n in self.nodeids):
                # every result is in: the guest's pytest is writing junit.xml and exiting; let it
                self._done.wait(60)
        if self.guest is not None:
            self.guest.shutdown(graceful=self._done.is_set())
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.results_dir and not self.keep:
            shutil.rmtree(self.results_dir, ignore_errors=True)

    # ------------------------------------------------------------------ results
    def _read_new(self) -> None:
        try:
            with open(self.reports_path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        self._offset += len(chunk)
        if chunk:
            self._last_activity = time.monotonic()
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            rep = json.loads(line)
            if self.t_first_report is None:
                self.t_first_report = time.monotonic()
            if rep.get("$report_type") == "CollectReport":
                self._collect_errors.append(rep)
                continue
            nodeid = rep.get("nodeid", "")
            self._reports.setdefault(nodeid, []).append(rep)
            if rep.get("when") == "teardown":
                self._finished.add(nodeid)

    def wait_for(self, nodeid: str) -> Optional[List[Dict[str, Any]]]:
        """The serialized reports of ``nodeid`` once its teardown is reported; None if the run ended without."""
        from blocklink.initiator.host.wait import wait_for

        def check() -> Optional[bool]:
            done = self._done.is_set()  # read before the file: a report written before the end is seen
            self._read_new()
            if nodeid in self._finished:
                return True
            return False if done or self._check_idle() else None

        if self.error is None or not self._done.is_set():
            wait_for(check, timeout=self.timeout + 600, watch=[self.results_dir] if self.results_dir else [],
                     uevents=False, what=f"guest result of {nodeid}", recheck=1.0)
        self._read_new()
        if nodeid in self._finished:
            return self._reports[nodeid]
        return None

    def missing_text(self, nodeid: str) -> str:
        """Why ``nodeid`` has no result, with everything that helps: guest pytest output, console tail."""
        parts = [self.error or "the guest's pytest run ended without a result for this test"]
        partial = self._reports.get(nodeid)
        if partial:
            parts.append(f"(reports received: {[r.get('when') for r in partial]})")
        for rep in self._collect_errors:
            parts.append(f"--- guest collection error in {rep.get('nodeid')} ---\n{_longrepr_text(rep)}")
        if self.result is not None:
            out = (self.result.stdout + self.result.stderr).strip().splitlines()
            parts.append(f"--- guest pytest exit {self.result.exit_code}, last output lines ---\n"
                         + "\n".join(out[-40:]))
            parts.append(f"--- guest pytest argv ---\n{shlex.join(self.result.argv)}")
        if self.guest is not None and self.error is None:
            parts.append("--- guest console (last lines) ---\n" + self.guest.console_tail())
        return "\n".join(parts)

    def summary_lines(self) -> List[str]:
        g = self.guest
        if g is None:
            return [f"kernel guest: {self.error}"] if self.error else []
        st = g.stats
        first = (self.t_first_report - self.t_start) if self.t_first_report else float("nan")
        wall = (self.t_end or time.monotonic()) - self.t_start
        in_tests = sum(float(r.get("duration") or 0) for reps in self._reports.values() for r in reps)
        overhead = wall - in_tests + st.get("shutdown_seconds", 0)
        lines = [f"kernel guest {g.kernel_release}: {len(self.nodeids)} test(s); boot {st.get('boot_seconds', 0):.1f}s, "
                 f"first result after {first:.1f}s, run {wall:.1f}s of which tests {in_tests:.1f}s, shutdown "
                 f"{st.get('shutdown_seconds', 0):.2f}s; harness overhead {overhead:.1f}s; "
                 f"qemu peak RSS {st.get('max_rss_kib', 0) / 1024:.0f} MiB"]
        for note in self.boot_retries:
            lines.append("kernel guest: booted a second time, the first boot panicked early:\n" + note)
        if self.keep:
            lines.append(f"kernel guest run dir kept: {g.run_dir} (results in {self.results_dir})")
        return lines


def early_boot_panic(error: GuestError) -> bool:
    """The guest's kernel panicked while booting (before stage 2 answered): the emulator, not a test."""
    return isinstance(error, GuestBootError) and "Kernel panic" in error.console_tail


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _longrepr_text(rep: Dict[str, Any]) -> str:
    lr = rep.get("longrepr")
    if isinstance(lr, str):
        return lr
    if isinstance(lr, dict):
        crash = (lr.get("reprcrash") or {}).get("message")
        tb = lr.get("reprtraceback") or {}
        lines = []
        for entry in tb.get("reprentries", []):
            lines += (entry.get("data") or {}).get("lines", [])
        return "\n".join(lines + ([crash] if crash else []))
    return repr(lr)


# ---------------------------------------------------------------------------- host hooks (called by conftest)
def guest_nics(items: Sequence[pytest.Item]) -> int:
    """NICs the session's guest needs: the largest ``@pytest.mark.kernel(nics=N)`` among ``items``."""
    n = 0
    for it in items:
        for m in it.iter_markers("kernel"):
            n = max(n, int(m.kwargs.get("nics", 0)))
    return n


def guest_nic_model(items: Sequence[pytest.Item]) -> str:
    """The qemu NIC device of the session's guest: ``@pytest.mark.kernel(nic_model=...)`` (one guest has one
    kind; items asking for different ones are an error), else virtio-net."""
    models = {str(m.kwargs["nic_model"]) for it in items for m in it.iter_markers("kernel") if "nic_model" in m.kwargs}
    if len(models) > 1:
        raise pytest.UsageError(f"kernel tests of one session ask for different guest NIC models: {sorted(models)}")
    return models.pop() if models else DEFAULT_NIC_MODEL


def _session_run(item: pytest.Item) -> GuestTestRun:
    run = start_early(item.session)
    assert run is not None
    return run


def start_early(session: pytest.Session) -> Optional[GuestTestRun]:
    """Boot the session's guest and start its pytest now, if the session has delegated items.

    Called when collection finishes: the guest then works through its tests while the host runs its
    own (the delegated items are ordered last by :func:`order_delegated_last`), instead of the host
    waiting for each guest result in turn. Idempotent; None when nothing is delegated or the session
    only collects.
    """
    config = session.config
    run = config.stash.get(_STASH_KEY, None)
    if run is None:
        items = [i for i in session.items if _delegated(i)]
        if not items or config.option.collectonly:
            return None
        run = GuestTestRun(config, [i.nodeid for i in items], nics=guest_nics(items),
                           nic_model=guest_nic_model(items))
        config.stash[_STASH_KEY] = run
        run.start()
    return run


def order_delegated_last(items: List[pytest.Item]) -> None:
    """Host items first, delegated ones after them (each group in its collected order): the host's
    own tests run while the guest works, and the delegated items then mostly find their results ready."""
    items[:] = [i for i in items if not _delegated(i)] + [i for i in items if _delegated(i)]


def _delegated(item: pytest.Item) -> bool:
    return bool(getattr(item, "_blocklink_in_guest", False))


def mark_delegated(items: Sequence[pytest.Item]) -> None:
    for it in items:
        it._blocklink_in_guest = True  # type: ignore[attr-defined]


def run_item_in_guest(item: pytest.Item, nextitem: Optional[pytest.Item] = None) -> bool:
    """``pytest_runtest_protocol`` for a delegated item: log the guest's reports for it.

    Collectors that host-run items set up (a kernel package, a module) are torn down as the
    normal protocol would, so the next host item does not find them still on the setup stack.
    """
    host_phase_done()
    run = _session_run(item)
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = run.wait_for(item.nodeid)
    if reports is not None:
        for data in reports:
            rep = item.config.hook.pytest_report_from_serializable(config=item.config, data=data)
            if isinstance(rep.location, list):
                rep.location = tuple(rep.location)
            ihook.pytest_runtest_logreport(report=rep)
    else:
        keywords: Dict[str, Literal[1]] = {k: 1 for k in item.keywords}
        for rep in (pytest.TestReport(item.nodeid, item.location, keywords, "passed", None, "setup"),
                    pytest.TestReport(item.nodeid, item.location, keywords, "failed", run.missing_text(item.nodeid),
                                      "call"),
                    pytest.TestReport(item.nodeid, item.location, keywords, "passed", None, "teardown")):
            ihook.pytest_runtest_logreport(report=rep)
    item.session._setupstate.teardown_exact(nextitem)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def host_phase_done() -> None:
    """The host's own items are done (delegated ones run last): unlock and close the descriptor named
    by ``BLOCKLINK_HOST_PHASE_FD``. scripts/test took an exclusive flock on it (this process shares
    the open file, so unlocking here frees it for the runner too) and starts its next sessions when it
    is free: they use the CPU the host's tests leave while this session's guest finishes. Once per
    process; without the variable nothing happens."""
    fd = os.environ.pop(HOST_PHASE_FD_ENV, "")
    if fd.isdigit():
        try:
            fcntl.flock(int(fd), fcntl.LOCK_UN)
            os.close(int(fd))
        except OSError:
            pass


def finish(config: pytest.Config) -> None:
    run = config.stash.get(_STASH_KEY, None)
    if run is not None:
        run.stop()


def summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(_STASH_KEY, None)
    if run is not None:
        for line in run.summary_lines():
            terminalreporter.write_line(line)
