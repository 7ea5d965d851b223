"""The wrong-volume guard on a fake host (FakeHostTree) with injected uevents: a LUN remapped to
another LU is taken offline once the kernel re-reads its identity (uevent, unit attention or
sweep), a capacity change of the same LU is not, and what it saw reaches the log, the callback and
the attachment record."""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any, Iterator, List, Tuple

import pytest

from blocklink import cli
from blocklink.attach.records import AttachmentStore
from blocklink.guard import GuardEvent, WrongVolumeGuard, parse_uevent
from blocklink.testing.hosttree import FakeHostTree, FakeLun, naa_wwid

IQN = "iqn.2010-10.org.openstack:volume-1"
MiB = 1 << 20
MINE, OTHER = naa_wwid(1), naa_wwid(2)


@pytest.fixture
def tree(tmp_path: Any) -> FakeHostTree:
    return FakeHostTree(str(tmp_path / "host"))


@pytest.fixture
def session(tree: FakeHostTree) -> str:
    return tree.add_iscsi_session(1, IQN, "10.0.0.1", luns={0: FakeLun(0, MINE, size=32 * MiB)}, scan=True)


@pytest.fixture
def wire() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """(the guard's end, the fake kernel's end) of a datagram socket pair."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield a, b
    a.close()
    b.close()


def uevent(action: str, devpath: str, **env: str) -> bytes:
    fields = dict(ACTION=action, DEVPATH=devpath, **env)
    return f"{action}@{devpath}".encode() + b"\0" + b"\0".join(f"{k}={v}".encode() for k, v in fields.items())


def state(tree: FakeHostTree, name: str) -> str:
    return open(tree.p("sys", "block", name, "device", "state")).read().strip()


def remap(tree: FakeHostTree, session: str, rescan: bool = True, size: int = 32 * MiB) -> None:
    """The array maps LUN 0 to another volume; a rescan (anyone's) makes the kernel re-read it."""
    tree.remap_lun(session, 0, FakeLun(0, OTHER, size=size))
    if rescan:
        tree.paths.write(tree.p("sys", "block", "sda", "device", "rescan"), "1")


class Seen:
    """A callback that records events and lets a test wait for one (no sleeping)."""

    def __init__(self) -> None:
        self.events: List[GuardEvent] = []
        self.cond = threading.Condition()

    def __call__(self, ev: GuardEvent) -> None:
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def wait(self, kind: str, timeout: float = 10.0) -> GuardEvent:
        with self.cond:
            assert self.cond.wait_for(lambda: any(e.kind == kind for e in self.events), timeout), self.events
            return [e for e in self.events if e.kind == kind][0]


def record(store: AttachmentStore, device: str, wwn: str, volume: str = "vol-1") -> str:
    rec = store.reserve(volume, "inst", multiattach=True)
    store.record_step(rec.id, "connect", host_device=device, extra={"device_wwn": wwn}, protocol="iscsi",
                      host="h1")
    store.transition(rec.id, ["attaching"], "attached")
    return rec.id


# ---------------------------------------------------------------------------------------------
def test_a_remapped_lun_is_taken_offline_once_the_kernel_rereads_it(tree, session) -> None:
    seen = Seen()
    g = WrongVolumeGuard(paths=tree.paths, callback=seen, uevents=False)
    assert g.watch("/dev/sda", MINE) == ["sda"]
    remap(tree, session, rescan=False)
    assert g.check() == []  # the target changed, the kernel does not know yet: nothing to see
    assert state(tree, "sda") == "running"
    tree.paths.write(tree.p("sys", "block", "sda", "device", "rescan"), "1")
    [ev] = g.check()
    assert (ev.kind, ev.device, ev.action, ev.expected_wwn, ev.found_wwn) == ("wwn_changed", "sda", "offline",
                                                                             MINE, OTHER)
    assert state(tree, "sda") == "offline" and seen.events == [ev]
    assert g.check() == []  # reported once


def test_the_same_lu_grown_is_reported_not_offlined(tree, session) -> None:
    g = WrongVolumeGuard(paths=tree.paths, uevents=False)
    g.watch("sda", MINE)
    tree.remap_lun(session, 0, FakeLun(0, MINE, size=48 * MiB))  # the array grew the volume
    tree.paths.write(tree.p("sys", "block", "sda", "device", "rescan"), "1")  # extend_volume's rescan
    [ev] = g.check()
    assert (ev.kind, ev.action) == ("resized", "none") and "33554432 to 50331648" in ev.detail
    assert state(tree, "sda") == "running"


class RescanAfterRead:
    """The host's paths, except that the kernel's rescan (remap to a bigger LU) completes right
    after the guard's ``at``-th read of sda's size or VPD page."""

    def __init__(self, tree: FakeHostTree, session: str, at: int) -> None:
        self.tree, self.session, self.at, self.reads = tree, session, at, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tree.paths, name)

    def _seen(self, path: str) -> None:
        if "/block/sda/" in path and path.endswith(("/size", "/vpd_pg83")):
            self.reads += 1
            if self.reads == self.at:
                remap(self.tree, self.session, size=48 * MiB)

    def read(self, path: str, *a: Any, **kw: Any) -> Any:
        out = self.tree.paths.read(path, *a, **kw)
        self._seen(path)
        return out

    def read_bytes(self, path: str, *a: Any, **kw: Any) -> Any:
        out = self.tree.paths.read_bytes(path, *a, **kw)
        self._seen(path)
        return out


@pytest.mark.parametrize("at", [1, 2])
def test_a_rescan_landing_between_the_guard_s_reads_is_never_called_a_resize(tree, session, at) -> None:
    """The kernel's rescan re-reads the VPD pages, then the capacity. Whenever the remap to a
    bigger LU lands between the guard's reads, what it reports is the wrong volume (now or on the
    next look), never "resized with the same WWN"."""
    g = WrongVolumeGuard(paths=tree.paths, uevents=False)
    g.watch("sda", MINE)
    assert g.check() == []  # the size is known now
    g.paths = RescanAfterRead(tree, session, at)  # type: ignore[assignment]
    events = g.check() + g.check()
    assert [(e.kind, e.action) for e in events] == [("wwn_changed", "offline")], events
    assert state(tree, "sda") == "offline"


def test_a_resize_uevent_makes_the_running_guard_look_at_once(tree, session, wire) -> None:
    seen = Seen()
    with WrongVolumeGuard(paths=tree.paths, callback=seen, uevents=wire[0], interval=3600) as g:
        g.watch("sda", MINE)
        remap(tree, session, size=16 * MiB)
        wire[1].send(uevent("change", "/devices/platform/host0/session1/target0:0:0/0:0:0:0/block/sda",
                            SUBSYSTEM="block", DEVTYPE="disk", DEVNAME="sda", RESIZE="1"))
        ev = seen.wait("wwn_changed")
    assert ev.trigger == "uevent change sda RESIZE" and state(tree, "sda") == "offline"


def test_a_unit_attention_makes_the_guard_rescan_and_see_the_new_lu(tree, session, wire) -> None:
    seen = Seen()
    with WrongVolumeGuard(paths=tree.paths, callback=seen, uevents=wire[0], interval=3600) as g:
        g.watch("sda", MINE)
        remap(tree, session, rescan=False)  # nobody rescans: the target reports inquiry data changed
        wire[1].send(uevent("change", "/devices/platform/host0/session1/target0:0:0/0:0:0:0", SUBSYSTEM="scsi",
                            DEVTYPE="scsi_device", SDEV_UA="INQUIRY_DATA_HAS_CHANGED"))
        ev = seen.wait("wwn_changed")
    ua = seen.wait("unit_attention")
    assert ua.action == "rescan" and ev.trigger == "uevent INQUIRY_DATA_HAS_CHANGED"
    assert [w for w in tree.writes if w[0].endswith("/rescan")] and state(tree, "sda") == "offline"


def test_the_sweep_catches_a_change_that_raised_no_uevent(tree, session) -> None:
    seen = Seen()
    with WrongVolumeGuard(paths=tree.paths, callback=seen, uevents=False, interval=0.02) as g:
        g.watch("sda", MINE)
        remap(tree, session)  # same capacity: the kernel raises no uevent for this rescan
        ev = seen.wait("wwn_changed")
    assert ev.trigger == "sweep" and state(tree, "sda") == "offline" and not g.running


def test_records_name_the_disks_a_map_s_paths_are_each_watched_and_events_are_recorded(tree, session,
                                                                                       tmp_path) -> None:
    tree.add_iscsi_session(2, IQN, "10.0.0.2", luns={0: FakeLun(0, MINE, size=32 * MiB)}, scan=True)
    dm = tree.add_multipath(MINE, ["sda", "sdb"])
    store = AttachmentStore(str(tmp_path / "a.db"))
    rid = record(store, f"/dev/{dm}", MINE)
    record(store, "/dev/sdz", OTHER, volume="vol-gone")  # a ghost: nothing to watch
    g = WrongVolumeGuard(store, paths=tree.paths, host="h1", uevents=False)
    g.refresh()
    assert g.watched() == {"sda": MINE, "sdb": MINE}
    remap(tree, session)  # the path through session 1 now reaches another LU
    [ev] = g.check()
    assert (ev.device, ev.volume_id, ev.attachment_id) == ("sda", "vol-1", rid)
    assert state(tree, "sda") == "offline" and state(tree, "sdb") == "running"
    assert store.get(rid).extra["guard_events"] == [json.loads(json.dumps(ev.to_dict()))]
    assert store.get(rid).extra["device_wwn"] == MINE  # the rest of the record is untouched
    store.transition(rid, ["attached"], "detached")
    g.refresh()
    assert g.watched() == {}


def test_a_device_already_wrong_at_start_is_offlined_and_a_vanished_one_dropped(tree, session, tmp_path) -> None:
    seen = Seen()
    g = WrongVolumeGuard(paths=tree.paths, callback=seen, uevents=False, interval=3600)
    g.watch("sda", OTHER)  # the record says another LU than the disk carries
    g.start()
    g.stop()
    assert [(e.kind, e.trigger) for e in seen.events] == [("wwn_changed", "start")]
    tree.remove_scsi_device("sda")
    [ev] = g.check()
    assert ev.kind == "gone" and g.watched() == {}


def test_a_failing_callback_or_offline_write_does_not_stop_the_guard(tree, session, monkeypatch) -> None:
    def boom(ev: GuardEvent) -> None:
        raise RuntimeError("callback bug")

    g = WrongVolumeGuard(paths=tree.paths, callback=boom, uevents=False)
    g.watch("sda", MINE)
    real = tree.on_write

    def refuse_state(path: str, data: str) -> None:
        if path.endswith("/state"):
            raise PermissionError(13, "Permission denied", path)
        real(path, data)

    monkeypatch.setattr(tree, "on_write", refuse_state)
    remap(tree, session)
    [ev] = g.check()
    assert ev.action == "offline_failed" and "Permission denied" in ev.detail


def test_parse_uevent() -> None:
    ev = parse_uevent(uevent("change", "/devices/x/block/sda", SUBSYSTEM="block", RESIZE="1"))
    assert ev == {"ACTION": "change", "DEVPATH": "/devices/x/block/sda", "SUBSYSTEM": "block", "RESIZE": "1"}
    assert parse_uevent(b"libudev\0\xfe\xed") == {}
    assert parse_uevent(b"add@/devices/y\0SUBSYSTEM=scsi") == {"ACTION": "add", "DEVPATH": "/devices/y",
                                                                 "SUBSYSTEM": "scsi"}


def test_cli_guard_is_registered_and_checks_its_device_argument(capsys) -> None:
    assert "guard" in cli.build_parser().format_help()
    assert cli.main(["guard", "--store", "none", "--once", "--device", "sda"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["error"] == "InvalidOption" and "DEV=WWN" in out["message"]


def test_cli_guard_once_watches_nothing_on_an_empty_store(tmp_path, capsys) -> None:
    db = str(tmp_path / "a.db")
    assert cli.main(["guard", "--store", db, "--once"]) == 0
    assert json.loads(capsys.readouterr().out) == {"watched": {}}
    assert os.path.exists(db)
