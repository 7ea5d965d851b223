"""The leak counters see what they claim to see (on a fake sysfs tree and real processes/files), and the
report renders the figures and fails on a leak or an exposure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, List

import pytest

from blocklink.hostpaths import HostPaths
from tests.harness.leaks import LeakChecker, LeakFound, soak
from tests.reliability import report


def _mk(root: Any, rel: str, text: str = "") -> None:
    p = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)


def test_kernel_probes_on_a_fake_tree(tmp_path: Any) -> None:
    paths = HostPaths.under(str(tmp_path))
    checker = LeakChecker(paths)
    before = checker.snapshot()
    _mk(tmp_path, "sys/class/iscsi_session/session3/targetname", "iqn.2010-10.org.x:v1")
    _mk(tmp_path, "sys/block/sdb/size", "8")
    _mk(tmp_path, "sys/block/dm-0/dm/name", "mpatha")
    _mk(tmp_path, "sys/block/nbd0/pid", "123")
    _mk(tmp_path, "sys/block/nbd1/size", "0")  # not connected: no pid
    _mk(tmp_path, "sys/bus/rbd/devices/0/pool", "volumes")
    _mk(tmp_path, "sys/bus/rbd/devices/0/name", "volume-1")
    _mk(tmp_path, "sys/kernel/config/target/iscsi/iqn.2003-01.org.x:t/tpgt_1/enable", "1")
    _mk(tmp_path, "sys/kernel/config/target/iscsi/discovery_auth/enforce_discovery_auth", "0")
    _mk(tmp_path, "sys/kernel/config/target/core/fileio_0/vol1/enable", "1")
    _mk(tmp_path, "sys/kernel/config/nvmet/subsystems/nqn.2014-08.org.x:s/attr_serial", "1")
    _mk(tmp_path, "sys/class/nvme-fabrics/ctl/nvme0/subsysnqn", "nqn.2014-08.org.x:s")
    leaks = checker.new_since(before)
    assert leaks == {
        "iscsi_sessions": ["session3:iqn.2010-10.org.x:v1"], "scsi_disks": ["sdb"], "dm_maps": ["dm-0:mpatha"],
        "nbd_devices": ["nbd0"], "rbd_mappings": ["rbd0:volumes/volume-1"],
        "lio_targets": ["backstore:fileio_0/vol1", "iscsi:iqn.2003-01.org.x:t"],
        "nvmet_subsystems": ["subsystem:nqn.2014-08.org.x:s"], "nvme_controllers": ["nvme0:nqn.2014-08.org.x:s"]}
    with pytest.raises(LeakFound) as ei:
        checker.assert_none_since(before, "in the test")
    assert "scsi_disks: sdb" in str(ei.value) and ei.value.leaks["dm_maps"] == ["dm-0:mpatha"]


def test_scoped_probes_see_processes_mounts_and_files_in_their_run_dir(tmp_path: Any) -> None:
    run = tmp_path / "run"
    run.mkdir()
    checker = LeakChecker(run_dirs=[str(run)], kernel=False)
    before = checker.snapshot()
    (run / "locks").mkdir()
    (run / "locks" / "x.lock").write_text("")  # lock files are not counted
    assert checker.new_since(before) == {}
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(run)])  # names the run dir
    try:
        # Popen returns once exec has begun; the new program's argv shows in /proc a moment later
        deadline = time.monotonic() + 10
        while str(run) not in open(f"/proc/{p.pid}/cmdline").read() and time.monotonic() < deadline:
            time.sleep(0.01)  # bounded
        (run / "vol-1").mkdir()
        (run / "vol-1" / "qsd.pid").write_text(str(p.pid))
        leaks = checker.new_since(before)
        assert [x.split(":", 1)[0] for x in leaks["processes"]] == [str(p.pid)]
        assert sorted(leaks["run_dir_files"]) == [str(run / "vol-1"), str(run / "vol-1" / "qsd.pid")]
    finally:
        p.kill()
        p.wait()
    (run / "vol-1" / "qsd.pid").unlink()
    (run / "vol-1").rmdir()
    assert checker.new_since(before) == {}


def test_fuse_mounts_are_scoped_and_unescaped(tmp_path: Any) -> None:
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "mounts").write_text("fuse /run/bl-x/vol\\0401/disk fuse.nbdfuse rw 0 0\n"
                                 "fuse /run/other/disk fuse rw 0 0\ntmpfs /run tmpfs rw 0 0\n")
    checker = LeakChecker(HostPaths(proc=str(tmp_path / "proc")), run_dirs=["/run/bl-x"], kernel=False)
    assert checker.fuse_mounts() == ["/run/bl-x/vol 1/disk"]


def test_report_renders_and_fails_on_findings(tmp_path: Any, capsys: Any) -> None:
    clean = {"mode": "long", "finished": 0, "fuzz_cases": {"iscsiadm -m session": 10000}, "faults": {"tgtd": 2},
             "cycles": {"rbd handle": 3}, "cycle_ms": {"rbd handle": [50, 60, 70]}, "hostile_values": {"x": 5},
             "secret_scans": {"execve": 9}, "leaks_found": [], "secret_exposures": [],
             "outcomes": {"passed": 4}, "durations": {"wall": 12.0}}
    a = tmp_path / "a.json"
    a.write_text(json.dumps(clean))
    assert report.main([str(a)]) == 0
    out = capsys.readouterr().out
    assert "cases fuzzed: 10000 cases" in out and "leaks found: 0" in out and "secret exposures found: 0" in out
    assert "median      60 ms" in out
    b = tmp_path / "b.json"
    b.write_text(json.dumps(dict(clean, leaks_found=[{"where": "soak", "leaks": {"processes": ["1:qsd"]}}])))
    assert report.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "cases fuzzed: 20000 cases" in out and "leaks found: 1" in out


def test_soak_stops_at_the_first_leaking_or_failing_cycle() -> None:
    left: List[str] = []
    checker = LeakChecker(kernel=False)
    checker.add_probe("things", lambda: list(left))

    def leaky(i: int) -> None:
        if i == 2:
            left.append("thing-2")

    with pytest.raises(LeakFound, match="after cycle 3 of leaky: things: thing-2") as e:
        soak("leaky", 10, leaky, checker)
    assert e.value.leaks == {"things": ["thing-2"]} and e.value.when == "after cycle 3 of leaky"

    left.clear()
    assert len(soak("clean", 4, lambda i: None, checker)) == 4

    def failing(i: int) -> None:
        if i == 1:
            raise OSError("device busy")

    with pytest.raises(AssertionError, match="failing: cycle 2 of 5 failed: OSError: device busy"):
        soak("failing", 5, failing, checker)
