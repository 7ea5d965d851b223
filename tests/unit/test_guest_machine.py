"""Host-side pieces of the guest runner that need no qemu."""

from __future__ import annotations

import os

import pytest

from tests.harness.guest.machine import Guest, GuestBootError, GuestError


def test_console_tail_keeps_a_panic_line_in_view(tmp_path) -> None:
    g = Guest()
    g.run_dir = str(tmp_path)
    lines = ["boot"] + ["Kernel panic - not syncing: sysrq triggered crash"] + [f"trace {i}" for i in range(60)]
    (tmp_path / "console.log").write_text("\n".join(lines) + "\n")
    (tmp_path / "qemu.log").write_text("qemu-system-x86_64: terminating on signal 15\n")
    tail = g.console_tail(40)
    assert tail.startswith("Kernel panic - not syncing")
    assert "trace 59" in tail and "trace 10" not in tail
    assert tail.endswith("qemu-system-x86_64: terminating on signal 15")


def test_error_text_names_the_reason_the_run_dir_and_the_console() -> None:
    e = GuestBootError("waiting for the guest to boot: no answer", "line1\nline2", "/tmp/blguest-x")
    assert isinstance(e, GuestError)
    assert str(e).splitlines()[0] == "waiting for the guest to boot: no answer (run dir /tmp/blguest-x)"
    assert "--- guest console (last lines) ---\nline1\nline2" in str(e)
    assert (e.reason, e.console_tail, e.run_dir) == ("waiting for the guest to boot: no answer", "line1\nline2",
                                                      "/tmp/blguest-x")


def test_missing_shared_folder_is_refused_before_anything_starts(tmp_path) -> None:
    before = set(os.listdir("/tmp"))
    with pytest.raises(GuestBootError, match="not a directory"):
        Guest.boot(rw_dirs=[str(tmp_path / "nope")], cache_dir=str(tmp_path / "cache"))
    assert not [d for d in set(os.listdir("/tmp")) - before if d.startswith("blguest-")]


def test_run_dirs_of_dead_sessions_are_swept(tmp_path) -> None:
    import subprocess

    from tests.harness.guest.machine import OWNER_FILE, _start_time, make_run_dir, sweep_stale_run_dirs

    mine = make_run_dir("blguest-", str(tmp_path))
    kept = make_run_dir("blguest-", str(tmp_path), keep=True)
    assert not os.path.exists(os.path.join(kept, OWNER_FILE))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / "blguest-results-stale"
    stale.mkdir()
    (stale / OWNER_FILE).write_text(f"{dead.pid} 12345\n")
    reused = tmp_path / "blguest-reused"  # our pid, but another start time: a recycled pid
    reused.mkdir()
    (reused / OWNER_FILE).write_text(f"{os.getpid()} {int(_start_time(os.getpid()) or 0) + 1}\n")
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / OWNER_FILE).write_text(f"{dead.pid} 1\n")
    removed = sweep_stale_run_dirs(str(tmp_path))
    assert sorted(removed) == sorted([str(stale), str(reused)])
    assert os.path.isdir(mine) and os.path.isdir(kept) and other.is_dir()
