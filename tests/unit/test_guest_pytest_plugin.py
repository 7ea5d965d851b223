"""Delegation plumbing: guest-side report writing, host-side reading, argv and env (no guest booted)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from tests.harness.guest import pytest_plugin as pp

INNER = '''
import pytest

def test_ok():
    print("captured-out")

def test_bad():
    assert 1 + 1 == 3, "arith-broke"

@pytest.fixture
def boom():
    raise RuntimeError("fixture-boom")

def test_err(boom):
    pass
'''


@pytest.fixture(scope="module")
def guest_reports(tmp_path_factory):
    """Run a small session as the guest would (with the report writer) and return its reports file."""
    tmp_path = tmp_path_factory.mktemp("guest")
    d = tmp_path / "inner"
    d.mkdir()
    (d / "test_inner.py").write_text(textwrap.dedent(INNER))
    (d / "test_broken_import.py").write_text("import no_such_module_here\n")
    (d / "pytest.ini").write_text("[pytest]\n")
    reports = tmp_path / "reports.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env[pp.REPORTS_ENV] = str(reports)
    # the plugin lives in the checkout's tests/ package, not in the installed blocklink
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (top, env.get("PYTHONPATH", "")) if p)
    subprocess.run([sys.executable, "-m", "pytest", "-p", pp.__name__, "-p", "no:cacheprovider", "-q",
                    "--continue-on-collection-errors", str(d)],
                   cwd=str(d), env=env, capture_output=True, text=True, timeout=120)
    return reports


def make_run(config, reports_path, done=True) -> pp.GuestTestRun:
    run = pp.GuestTestRun(config, ["x"])
    run.reports_path = str(reports_path)
    run.results_dir = os.path.dirname(str(reports_path))
    if done:
        run._done.set()
    return run


def test_reports_round_trip_to_host_reports(pytestconfig, guest_reports) -> None:
    run = make_run(pytestconfig, guest_reports)
    ok = run.wait_for("test_inner.py::test_ok")
    bad = run.wait_for("test_inner.py::test_bad")
    err = run.wait_for("test_inner.py::test_err")
    assert [r["when"] for r in ok] == ["setup", "call", "teardown"]
    reps = {name: [pytestconfig.hook.pytest_report_from_serializable(config=pytestconfig, data=d) for d in got]
            for name, got in (("ok", ok), ("bad", bad), ("err", err))}
    assert [r.outcome for r in reps["ok"]] == ["passed"] * 3
    assert "captured-out" in reps["ok"][1].capstdout
    call = reps["bad"][1]
    assert call.failed and "arith-broke" in call.longreprtext and "assert (1 + 1) == 3" in call.longreprtext
    assert reps["err"][0].when == "setup" and reps["err"][0].failed
    assert "fixture-boom" in reps["err"][0].longreprtext


def test_missing_result_explains_with_collection_errors(pytestconfig, guest_reports) -> None:
    run = make_run(pytestconfig, guest_reports)
    assert run.wait_for("test_broken_import.py::test_x") is None
    text = run.missing_text("test_broken_import.py::test_x")
    assert "ended without a result" in text
    assert "no_such_module_here" in text


def test_a_failed_run_says_why(pytestconfig, tmp_path) -> None:
    (tmp_path / "reports.jsonl").write_text("")
    run = make_run(pytestconfig, tmp_path / "reports.jsonl")
    run.error = "the kernel test guest did not boot: boom"
    assert run.wait_for("t.py::test") is None
    assert run.missing_text("t.py::test").startswith("the kernel test guest did not boot: boom")


def test_partial_lines_wait_for_their_end(pytestconfig, tmp_path) -> None:
    path = tmp_path / "reports.jsonl"
    path.write_text('{"$report_type": "TestReport", "nodeid": "a", "when": "teardown"')
    run = make_run(pytestconfig, path)
    run._read_new()
    assert "a" not in run._finished
    with open(path, "a") as f:
        f.write("}\n")
    run._read_new()
    assert "a" in run._finished


def test_guest_argv(pytestconfig) -> None:
    cfg = SimpleNamespace(rootpath="/work/x", inipath="/work/x/pyproject.toml", option=SimpleNamespace(maxfail=2))
    argv = pp.guest_pytest_argv(cfg, ["tests/a.py::t[1 2]", "tests/b.py::u"], "/tmp/res")  # type: ignore[arg-type]
    assert argv[:3] == [sys.executable, "-m", "pytest"]
    for pair in (["-p", pp.__name__], ["-p", "no:cacheprovider"], ["-p", "no:hypothesispytest"],
                 ["--rootdir", "/work/x"], ["-c", "/work/x/pyproject.toml"]):
        assert any(argv[i:i + 2] == pair for i in range(len(argv)))
    assert "--junitxml=/tmp/res/junit.xml" in argv and "--maxfail=2" in argv
    assert "--continue-on-collection-errors" in argv
    assert argv[-3:] == ["--", "tests/a.py::t[1 2]", "tests/b.py::u"]


def test_forwarded_env() -> None:
    env = {"BLOCKLINK_ALLOW_SKIP": "1", "BLOCKLINK_GUEST_KEEP": "1", "BLOCKLINK_IN_GUEST": "1", "HOME": "/h",
           "BLOCKLINK_VECTORS": "/v"}
    assert pp.forwarded_env(env) == {"BLOCKLINK_ALLOW_SKIP": "1", "BLOCKLINK_VECTORS": "/v"}


def test_nics_are_the_largest_request() -> None:
    def item(*kwargs):
        return SimpleNamespace(iter_markers=lambda name: [SimpleNamespace(kwargs=k) for k in kwargs])

    assert pp.guest_nics([item({}), item({"nics": 2}), item({"nics": 1})]) == 2  # type: ignore[list-item]
    assert pp.guest_nics([item({})]) == 0  # type: ignore[list-item]


def test_nic_model_is_one_per_guest() -> None:
    def item(*kwargs):
        return SimpleNamespace(iter_markers=lambda name: [SimpleNamespace(kwargs=k) for k in kwargs])

    assert pp.guest_nic_model([item({}), item({"nics": 2})]) == "virtio-net-pci"  # type: ignore[list-item]
    assert pp.guest_nic_model([item({}), item({"nics": 2, "nic_model": "e1000"})]) == "e1000"  # type: ignore[list-item]
    with pytest.raises(pytest.UsageError, match="different guest NIC models"):
        pp.guest_nic_model([item({"nic_model": "e1000"}), item({"nic_model": "virtio-net-pci"})])  # type: ignore[list-item]


def _finished_run(pytestconfig, tmp_path, nodeids, reported):
    path = tmp_path / "reports.jsonl"
    path.write_text("".join(f'{{"$report_type": "TestReport", "nodeid": "{n}", "when": "teardown"}}\n'
                            for n in reported))
    run = make_run(pytestconfig, path, done=False)
    run.nodeids = list(nodeids)
    run.results_dir = ""  # nothing to remove
    return run


def test_stop_lets_a_finished_guest_run_write_its_results(pytestconfig, tmp_path) -> None:
    import threading
    import time

    run = _finished_run(pytestconfig, tmp_path, ["a", "b"], ["a", "b"])
    start = time.monotonic()
    threading.Timer(0.5, run._done.set).start()  # the guest's pytest exits a moment after its last report
    run.stop()
    assert run._done.is_set() and time.monotonic() - start >= 0.5


def test_stop_does_not_wait_for_a_run_the_host_abandoned(pytestconfig, tmp_path) -> None:
    import time

    run = _finished_run(pytestconfig, tmp_path, ["a", "b"], ["a"])  # e.g. -x stopped the host after "a"
    start = time.monotonic()
    run.stop()
    assert time.monotonic() - start < 5 and not run._done.is_set()


def test_a_guest_that_reports_nothing_is_declared_hung(pytestconfig, tmp_path) -> None:
    import time

    run = _finished_run(pytestconfig, tmp_path, ["a"], [])
    run.results_dir = str(tmp_path)
    run.idle_timeout = 0.3
    start = time.monotonic()
    assert run.wait_for("a") is None
    assert time.monotonic() - start < 10
    assert "no test result from the guest for 0s" in run.missing_text("a")



def test_host_phase_done_frees_the_runner_s_lock_once(tmp_path, monkeypatch) -> None:
    """scripts/test holds an exclusive flock on a file whose descriptor the session inherits; the
    session's first delegated item frees it (the runner's next parts wait for it), and only once."""
    import fcntl

    from tests.harness.guest.pytest_plugin import HOST_PHASE_FD_ENV, host_phase_done

    lock = str(tmp_path / "host-phase.lock")
    runner = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    inherited = os.dup(runner)  # the session's copy: the same open file, as after fork/exec
    fcntl.flock(runner, fcntl.LOCK_EX)
    waiter = os.open(lock, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(waiter, fcntl.LOCK_SH | fcntl.LOCK_NB)
        monkeypatch.setenv(HOST_PHASE_FD_ENV, str(inherited))
        host_phase_done()
        fcntl.flock(waiter, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free although the runner's copy is still open
        with pytest.raises(OSError):
            os.fstat(inherited)  # and the session's copy is closed
        assert HOST_PHASE_FD_ENV not in os.environ
        host_phase_done()  # a second delegated item: nothing to do
    finally:
        os.close(waiter)
        os.close(runner)


@pytest.mark.parametrize("console, boots", [("[ 3.9] Oops: int3\n[ 3.9] Kernel panic - not syncing: Fatal exception", 2),
                                            ("stage 2: cannot mount the host root", 1)])
def test_a_boot_that_panics_early_is_retried_once_and_said(pytestconfig, tmp_path, monkeypatch, console, boots) -> None:
    from tests.harness.guest.machine import GuestBootError

    calls = []

    def boot(**options):
        calls.append(options)
        if len(calls) == 1:
            raise GuestBootError("waiting for the guest to boot: the guest went away", console)
        return SimpleNamespace(kernel_release="6.12.0-test", stats={}, run_dir="")

    monkeypatch.setattr(pp.Guest, "boot", staticmethod(boot))
    run = make_run(pytestconfig, tmp_path / "reports.jsonl", done=False)
    monkeypatch.setattr(run, "_catch_sigterm", lambda: None)
    monkeypatch.setattr(run, "_run", lambda: run._done.set())
    run.keep = False
    monkeypatch.setattr(pp, "make_run_dir", lambda prefix, keep=False, **kw: str(tmp_path))
    run.start()
    run._done.wait(10)
    assert len(calls) == boots and (calls[0] == calls[-1])
    if boots == 2:  # retried, with the same options, and the summary says why
        assert run.error is None and run.boot_retries and "Kernel panic" in run.boot_retries[0]
        assert any("booted a second time" in ln for ln in run.summary_lines())
    else:  # any other boot failure is the harness's or the system's: reported, never retried
        assert run.guest is None and "did not boot" in (run.error or "") and run.boot_retries == []
