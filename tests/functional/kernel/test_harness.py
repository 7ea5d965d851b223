"""The guest harness itself, from the host: command results, clear failures, no qemu left behind.

These run on the host (``kernel(host=True)``) and boot their own guests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from blocklink.testing.procs import alive
from tests.harness.guest import Guest, GuestBootError, GuestTimeout, run_in_guest
from tests.harness.guest.machine import sweep_stale_run_dirs

pytestmark = pytest.mark.kernel(host=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_commands_status_output_input_env_timeout_and_shared_folder(tmp_path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    with Guest.boot(rw_dirs=[str(shared)]) as g:
        pid, run_dir = g.pid, g.run_dir
        res = g.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (res.exit_code, res.stdout, res.stderr, res.timed_out) == (3, "out\n", "err\n", False)

        res = g.run("tr a-z A-Z; echo $BLOCKLINK_IN_GUEST $FOO; pwd; uname -r", input=b"abc\n",
                    env={"FOO": "bar"}, cwd="/etc")
        assert res.stdout.splitlines() == ["ABC", "1 bar", "/etc", g.kernel_release]

        res = g.run(f"echo from-guest > {shared}/out.txt")
        assert res.ok and (shared / "out.txt").read_text() == "from-guest\n"

        # never ends on its own, however fast or slow the guest: the agent's timeout always fires
        res = g.run("exec sleep infinity", timeout=2)
        assert (res.timed_out, res.exit_code) == (True, -signal.SIGKILL)

        assert g.run(["/no/such/program"]).exit_code == 127

        # The agent stops itself. The agent's own timeout (an hour) cannot fire first and answer, so the
        # host's answer_timeout always expires: whether or not the guest got as far as the kill, no answer
        # comes, and the guest is stopped.
        with pytest.raises(GuestTimeout) as ei:
            g.run("kill -STOP $PPID", timeout=3600, answer_timeout=3)
        assert "guest console" in str(ei.value) and "blguest-agent: run" in str(ei.value)
        assert not alive(pid)
    assert pid is not None and not alive(pid)
    assert not os.path.exists(run_dir)
    assert g.stats["boot_seconds"] > 0 and g.stats["max_rss_kib"] > 0


def test_run_in_guest_one_shot() -> None:
    res = run_in_guest("cat /sys/kernel/config/target/version 2>/dev/null || modprobe target_core_mod && "
                       "cat /sys/kernel/config/target/version", timeout=120)
    assert res.ok, res.stderr
    assert "Target Engine Core" in res.stdout


def test_guest_that_cannot_start_its_agent_fails_with_console_tail() -> None:
    with pytest.raises(GuestBootError) as ei:
        Guest.boot(python="/nonexistent/python3")
    text = str(ei.value)
    assert "guest console" in text
    assert "agent exited" in text  # stage 2's last words, from the console log


def test_boot_timeout_stops_qemu() -> None:
    others = set(_qemu_children(os.getpid()))  # e.g. the session's guest running delegated tests
    started = time.monotonic()
    with pytest.raises(GuestBootError) as ei:
        Guest.boot(boot_timeout=1.5)
    assert "no answer within the timeout" in str(ei.value)
    assert time.monotonic() - started < 30
    assert not set(_qemu_children(os.getpid())) - others


# ---------------------------------------------------------------------------- delegation, end to end
INNER_CONFTEST = '''
import pytest
from tests.harness.guest import in_guest, pytest_plugin as delegation

def pytest_collection_modifyitems(config, items):
    if not in_guest():
        delegation.mark_delegated([i for i in items if i.get_closest_marker("kernel")])

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if in_guest() or not item.get_closest_marker("kernel"):
        return None
    return delegation.run_item_in_guest(item, nextitem)

def pytest_sessionfinish(session):
    delegation.finish(session.config)

def pytest_terminal_summary(terminalreporter, config):
    delegation.summary(terminalreporter, config)
'''

INNER_TESTS = '''
import os
import pytest

pytestmark = pytest.mark.kernel

def test_pass():
    print("hello-from-the-guest")
    assert os.environ["BLOCKLINK_IN_GUEST"] == "1"

def test_fail():
    release = os.uname().release
    assert release == "not-the-guest-kernel"

@pytest.fixture
def broken():
    raise RuntimeError("fixture-broke-in-guest")

def test_fixture_error(broken):
    pass

def test_crash_the_guest():
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("c")  # kernel panic: qemu exits (panic=-1, -no-reboot)

def test_after_the_crash():
    pass
'''


HOST_TEST = '''
import os
import pytest

@pytest.fixture(scope="module")
def on_host():
    yield "host"

def test_on_host(on_host):
    assert os.environ.get("BLOCKLINK_IN_GUEST") is None
'''


def _inner_session(tmp_path, tests: str, host_tests: bool = False) -> str:
    d = tmp_path / "inner"
    d.mkdir()
    (d / "conftest.py").write_text(INNER_CONFTEST)
    (d / "test_inner.py").write_text(textwrap.dedent(tests))
    if host_tests:  # host items before and after the delegated ones: the setup stack must stay consistent
        (d / "test_a_host.py").write_text(HOST_TEST)
        (d / "test_z_host.py").write_text(HOST_TEST)
    (d / "pytest.ini").write_text("[pytest]\nmarkers =\n    kernel: in the guest\n")
    return str(d)


def _inner_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKLINK_GUEST_", "PYTEST_"))}
    env["PYTHONPATH"] = ROOT
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    return env


def test_delegated_outcomes_tracebacks_output_and_crash(tmp_path) -> None:
    d = _inner_session(tmp_path, INNER_TESTS, host_tests=True)
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", d], cwd=d,
                         capture_output=True, text=True, timeout=900, env=_inner_env())
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "3 passed" in out and "3 failed" in out and "1 error" in out, out  # 2 of the passes on the host
    assert "hello-from-the-guest" in out                       # captured output of a passing test (-rA)
    assert "not-the-guest-kernel" in out and "-amd64" in out   # the guest's assertion rewrite
    assert "fixture-broke-in-guest" in out                      # a guest fixture error is a host error
    assert "Kernel panic" in out or "sysrq" in out.lower()      # the crash shows the console tail
    assert "kernel guest" in out                                # the session summary line


# SIGINT takes SIGTERM's path (both end as KeyboardInterrupt): on demand only (-m slow), a guest boot less
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM, signal.SIGKILL])
def test_no_qemu_outlives_an_interrupted_session(tmp_path, sig: int) -> None:
    d = _inner_session(tmp_path, '''
        import time
        import pytest
        pytestmark = pytest.mark.kernel
        def test_quick():
            pass
        def test_slow():
            time.sleep(600)
        ''')
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", d], cwd=d,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_inner_env())
    try:
        seen = []
        assert p.stdout is not None
        for line in p.stdout:  # ends at EOF if the session dies early
            seen.append(line)
            if "test_quick PASSED" in line:
                break
        assert any("test_quick PASSED" in ln for ln in seen), "".join(seen)
        qemu = _qemu_children(p.pid)
        assert qemu, "the inner session runs a guest"
        dirs = _shared_dirs(qemu)
        p.send_signal(sig)
        signalled = time.monotonic()
        try:
            p.wait(90)
            print(f"pytest ended {time.monotonic() - signalled:.1f}s after signal {sig}")
        except subprocess.TimeoutExpired:  # show where it hangs (PYTHONFAULTHANDLER dumps every thread)
            p.send_signal(signal.SIGABRT)
            pytest.fail(f"pytest did not end after signal {sig}:\n{''.join(seen)}{p.stdout.read()}")
        deadline = time.monotonic() + 15
        while any(alive(q) for q in qemu) and time.monotonic() < deadline:
            time.sleep(0.1)  # bounded: PDEATHSIG/SIGTERM delivery to qemu is asynchronous
        assert not any(alive(q) for q in qemu), f"qemu {qemu} outlived pytest after signal {sig}"
    finally:
        if p.poll() is None:  # a failed test: SIGKILL it and remove what it leaves
            p.kill()
            p.wait(30)
            sweep_stale_run_dirs(tempfile.gettempdir())
    if sig == signal.SIGKILL:  # the session could not clean up; the next guest start sweeps its folders
        sweep_stale_run_dirs(tempfile.gettempdir())
        assert not [f for f in dirs if os.path.exists(f)], "folders of a dead session are swept"
    else:
        assert not [f for f in dirs if os.path.exists(f)], "the session removed its run and results folders"


def _shared_dirs(pids: list) -> list:
    """The guest's run and results folders, from qemu's command line (-fsdev ...,path=...)."""
    out = []
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
        for arg in argv:
            for part in arg.split(","):
                if part.startswith("path=") and part != "path=/":
                    path = part[len("path="):]
                    out.append(os.path.dirname(path) if path.endswith("/xfer") else path)
    return out


def _qemu_children(ppid: int) -> list:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm.startswith("qemu-system") and int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
            out.append(int(pid))
    return out
