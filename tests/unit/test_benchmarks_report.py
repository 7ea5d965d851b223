"""The benchmarks' statistics, strace/importtime parsing and report writing (no benchmark is run)."""

import json

import pytest

from benchmarks import fresh, report
from benchmarks.context import interleave
from benchmarks.import_time import parse_importtime
from benchmarks.model import BLOCKLINK, FLOOR, OSBRICK, Outcome
from benchmarks.stats import advantage, paired_advantage, paired_ratios, quantile, summarize


def test_quantile_interpolates_like_numpy():
    xs = [10, 1, 4, 7]  # sorted 1 4 7 10
    assert quantile(xs, 0.5) == 5.5
    assert quantile(xs, 0.0) == 1 and quantile(xs, 1.0) == 10
    assert quantile(xs, 0.1) == pytest.approx(1 + 0.3 * 3)
    assert quantile([3.0], 0.9) == 3.0
    with pytest.raises(ValueError):
        quantile([], 0.5)
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


def test_advantage_follows_the_metric_direction():
    fast, slow = summarize([1.0, 1.0, 1.0]), summarize([4.0, 4.0, 4.0])
    assert advantage(fast, slow, higher_is_better=False) == 4.0  # time: blocklink 4x faster
    assert advantage(fast, slow, higher_is_better=True) == 0.25  # throughput: 4x lower
    assert advantage(fast, summarize([0.0]), higher_is_better=True) is None


def test_paired_ratios_cancel_drift_between_rounds():
    # the machine gets 10x slower in round 2; within each round blocklink is 2x faster
    bl = [1.0, 10.0, 1.0]
    ob = [2.0, 20.0, 2.0]
    s = paired_advantage(bl, ob, higher_is_better=False)
    assert s is not None and s.median == 2.0 and s.p10 == s.p90 == 2.0
    assert paired_ratios(bl, ob).median == 0.5
    assert paired_ratios([1.0], [1.0, 2.0]) is None  # not paired
    assert paired_ratios([1.0], [0.0]) is None


def test_interleave_rotates_the_order_every_round():
    got = list(interleave(3, ["a", "b", "c"]))
    assert [impl for _, impl in got] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [r for r, _ in got] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


STRACE = """\
100 execve("/usr/bin/python3", ["python3", "-c", "..."], 0x7ffc /* 30 vars */) = 0
101 execve("/usr/bin/grep", ["grep", "-F", "x"], 0x7ffc /* 30 vars */) = 0
100 chdir("/tmp/b/marks/first-start") = 0
100 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 102
102 execve("/usr/bin/cat", ["cat", "/etc/iscsi/initiatorname.iscsi"], 0x7ffc /* 30 vars */) = 0
100 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=102, si_status=0} ---
100 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, child_tid=0x7f}, 88) = 103
100 vfork() = 104
104 execve("/venv/bin/privsep-helper", ["privsep-helper", "--privsep_context", "x"], 0x7ffc /* 30 vars */) = 0
104 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 105
105 chdir("/") = 0
100 chdir("/tmp/b/marks/first-end") = 0
100 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 106
106 execve("/usr/sbin/nvme", ["nvme", "version"], 0x7ffc /* 30 vars */) = 0
"""


def test_count_spawns_counts_only_inside_the_markers():
    c = fresh.count_spawns(STRACE, "first-start", "first-end")
    assert c.processes == 3  # clone (cat), vfork (privsep-helper), its fork (daemon); not the thread
    assert c.threads == 1
    assert c.programs == ["cat", "privsep-helper"]
    outside = fresh.count_spawns(STRACE, "later-start", "later-end")
    assert outside.processes == 0 and outside.programs == []


def test_parse_importtime_starts_after_the_marker():
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:      500 |        500 | encodings\n"
              "@@BENCH-START@@\n"
              "import time:      100 |        100 |     oslo_utils.strutils\n"
              "import time:     2000 |       2100 |   oslo_utils\n"
              "import time:      300 |       2400 | os_brick\n")
    total, by_pkg, count = parse_importtime(stderr)
    assert total == 2400 and count == 3
    assert by_pkg == {"oslo_utils": 2100, "os_brick": 300}


def _outcomes():
    o = Outcome("x", "demo")
    t = o.row("call", "ms")
    for bl, ob in ((1.0, 10.0), (2.0, 20.0), (1.5, 15.0)):
        t.add(BLOCKLINK, bl)
        t.add(OSBRICK, ob)
    io = o.row("read", "MiB/s", higher_is_better=True)
    for bl, ob, fl in ((90.0, 100.0, 120.0), (90.0, 100.0, 120.0)):
        io.add(BLOCKLINK, bl)
        io.add(OSBRICK, ob)
        io.add(FLOOR, fl)
    n = o.row("child processes", "count", chart=False)
    n.add(BLOCKLINK, 0)
    n.add(OSBRICK, 5)
    o.skip("guest harness has not landed", "iSCSI in the guest")
    return [o]


def test_table_rows_show_medians_spread_ratios_and_direction():
    rows = report.table_rows(_outcomes())
    call, read, count = rows
    assert call[3] == "1.50 [1.10–1.90]" and call[4] == "15.0 [11.0–19.0]"
    assert call[6] == "3" and call[7] == "0.100"
    assert call[8] == "**10.00× faster**"
    assert read[5] == "120" and read[8] == "1.11× lower" and read[9] == "1.33× lower"
    assert count[3] == "0" and count[4] == "5" and count[7] == "–" and count[8] == "5 fewer"


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError):
        _outcomes()[0].rows[0].add("cinder", 1.0)


def test_report_files_round_trip(tmp_path):
    meta = {"started": "2026-01-01 00:00:00", "finished": "00:01:00", "seconds": 60.0, "quick": True,
            "command": ".venv/bin/python -m benchmarks --quick", "machine": {"CPU": "test cpu", "cores": "2"},
            "versions": {"blocklink": "0.1.0", "os-brick": "7.1.1"}}
    path = report.write(str(tmp_path), meta, _outcomes(), "ratios.png")
    text = open(path).read()
    assert "| demo | call | ms | 1.50 [1.10–1.90] |" in text
    assert "**not run**: iSCSI in the guest: guest harness has not landed" in text
    assert "test cpu" in text and "7.1.1" in text and "![blocklink vs os-brick](ratios.png)" in text
    assert "quick" in text
    data = report.load(str(tmp_path / "results.json"))
    assert data["outcomes"][0].rows[0].samples[OSBRICK] == [10.0, 20.0, 15.0]
    assert data["outcomes"][0].not_run[0].reason == "guest harness has not landed"
    json.loads((tmp_path / "results.json").read_text())


def test_goals_are_judged_on_the_same_run_s_per_round_ratios():
    from benchmarks import goals

    out = Outcome("iscsi_guest", "iSCSI attach/detach (guest)")
    one = out.row("detach one volume", "s")
    many = out.row("detach 16 volumes at once", "s")
    for bl, fl in ((1.1, 1.0), (2.3, 2.0), (1.1, 1.0)):   # 1.1-1.15× slower: within 1.2×
        one.add(BLOCKLINK, bl)
        one.add(FLOOR, fl)
    for bl, fl in ((4.0, 2.0), (8.0, 4.0)):                # 2× slower: misses 1.5×
        many.add(BLOCKLINK, bl)
        many.add(FLOOR, fl)
    rbd = Outcome("rbd_handle", "RBD handle I/O")
    rr = rbd.row("random read, 4 KiB", "IOPS", higher_is_better=True)
    for bl, fl in ((96.0, 100.0), (97.0, 100.0), (80.0, 100.0), (99.0, 100.0), (98.0, 100.0)):
        rr.add(BLOCKLINK, bl)   # median 0.97 but p10 below 0.9
        rr.add(FLOOR, fl)
    rows = {(r[0], r[1]): r for r in goals.goal_rows([out, rbd])}
    assert rows[("iSCSI, detach one volume, vs floor", "detach one volume")][4] == "met"
    assert rows[("iSCSI, detach one volume, vs floor", "detach one volume")][2].startswith("1.10× slower vs floor")
    assert rows[("iSCSI, detach 16 volumes at once, vs floor", "detach 16 volumes at once")][4] == "**missed**"
    assert rows[("RBD handle, 4 KiB random read, vs raw librbd", "random read, 4 KiB")][4] == "**missed**"
    # a goal whose row did not run is not counted as met
    unmeasured = [r for r in goals.goal_rows([out, rbd]) if r[0].startswith("LIO")]
    assert unmeasured == [[unmeasured[0][0], "–", "not measured in this run", "≤ 1.0× (not slower)",
                           "**not measured**"]]
    md = report.render({"started": "s", "finished": "f", "seconds": 1.0, "quick": True, "command": "c",
                        "machine": {}, "versions": {}}, [out, rbd], None, goals.section([out, rbd]))
    assert "## Goals (issue 22)" in md and md.index("## Goals") > md.index("## Results")


def test_the_nova_attach_goal_is_not_matched_by_the_detach_row():
    from benchmarks import goals

    nova = Outcome("nova_guest", "Nova iSCSI volume driver (guest)")
    for what, bl in (("connect_volume", 1.0), ("disconnect_volume", 1.0)):
        row = nova.row(f"Nova LibvirtISCSIVolumeDriver.{what}", "s")
        row.add(BLOCKLINK, bl)
        row.add(OSBRICK, 4.0)
    rows = [(r[0], r[1]) for r in goals.goal_rows([nova]) if r[0].startswith("Nova")]
    assert rows == [("Nova's iSCSI driver attach, facade vs os-brick", "Nova LibvirtISCSIVolumeDriver.connect_volume"),
                    ("Nova's iSCSI driver detach, facade vs os-brick", "Nova LibvirtISCSIVolumeDriver.disconnect_volume")]
