"""The shared SCSI volume layer (blocklink.initiator.host.scsi_volume), through both transports on it.

Each policy test runs once over iSCSI (fake open-iscsi host) and once over Fibre Channel (fake HBAs),
so the two connectors are shown to behave the same where the layer decides: WWN checks, flush and
teardown order, force, the volume lock, extend, options. Assertions are about what is returned or
raised and what the host is left with.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, ContextManager, Dict, List, Tuple, Type

import pytest

from blocklink.connection import AttachedDevice
from blocklink.errors import (CommandFailed, DetachIncomplete, DeviceBusy, DeviceMismatch, DeviceNotFound,
                              InvalidConnectionInfo, InvalidOption)
from blocklink.initiator.fc import FibreChannelConnector
from blocklink.initiator.host import scsi
from blocklink.initiator.host.multipath import DmMap
from blocklink.initiator.host.scsi_volume import ScsiConnector, lun_for_addressing
from blocklink.initiator.iscsi import ISCSIConnector
from blocklink.testing.fakeiscsi import FakeIscsiKernel
from blocklink.testing.hosttree import FakeHostTree, FakeLun, naa_wwid
from blocklink.testing.hosttree_fc import FakeFcTree

IQN = "iqn.2010-10.org.openstack:volume-shared"
PORTALS = ["10.0.0.1:3260", "10.0.0.2:3260"]
INI = "21000024ff406cc3"
TA1, TA2 = "500a098280feeba5", "500a098290feeba5"


class Rig:
    """A fake host where LUN 1 (our volume) and LUN 2 (another volume's) sit behind the same two
    target ports, the simulated multipathd/blockdev, and connectors over both."""

    kind = ""
    cls: Type[ScsiConnector]

    def __init__(self, tmp_path: Any, tree: FakeHostTree) -> None:
        self.tree = tree
        self.kernel = FakeIscsiKernel(tree)
        self.lock_path = str(tmp_path / "locks")
        self.vol = FakeLun(1, naa_wwid(101), size=32 << 20)
        self.other = FakeLun(2, naa_wwid(102), size=32 << 20)

    def connector(self, **kw: Any) -> ScsiConnector:
        kw.setdefault("timeout", 0.5)
        kw.setdefault("flush_timeout", 0.3)
        return self.cls(executor=self.kernel.executor, paths=self.tree.paths, lock_path=self.lock_path, **kw)

    def info(self, lun: int, **extra: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def disks(self) -> List[str]:
        return sorted(n for n in os.listdir(self.tree.p("sys", "block")) if n.startswith("sd"))

    def maps(self) -> List[str]:
        return sorted(n for n in os.listdir(self.tree.p("sys", "block")) if n.startswith("dm-"))

    def size(self, name: str) -> int:
        with open(self.tree.p("sys", "block", name, "size")) as f:
            return int(f.read()) * 512

    def map_name(self, dm: str) -> str:
        with open(self.tree.p("sys", "block", dm, "dm", "name")) as f:
            return f.read().strip()


class IscsiRig(Rig):
    kind = "iscsi"
    cls = ISCSIConnector

    def __init__(self, tmp_path: Any) -> None:
        super().__init__(tmp_path, FakeHostTree(str(tmp_path / "host")))
        self.kernel.add_target(IQN, PORTALS, {1: self.vol, 2: self.other})

    def info(self, lun: int, **extra: Any) -> Dict[str, Any]:
        data = {"target_portal": PORTALS[0], "target_iqn": IQN, "target_lun": lun, "target_portals": PORTALS,
                "target_iqns": [IQN, IQN], "target_luns": [lun, lun], **extra}
        return {"driver_volume_type": "iscsi", "data": data}


class FcRig(Rig):
    kind = "fc"
    cls = FibreChannelConnector

    def __init__(self, tmp_path: Any) -> None:
        tree = FakeFcTree(str(tmp_path / "root"))
        super().__init__(tmp_path, tree)
        hba = tree.add_hba(INI)
        for port in (TA1, TA2):
            tree.add_rport(hba, port, luns={1: self.vol, 2: self.other})

    def info(self, lun: int, **extra: Any) -> Dict[str, Any]:
        return {"driver_volume_type": "fibre_channel", "data": {"target_wwn": [TA1, TA2], "target_lun": lun, **extra}}


@pytest.fixture(params=[IscsiRig, FcRig], ids=["iscsi", "fc"])
def rig(request: Any, tmp_path: Any) -> Rig:
    return request.param(tmp_path)


def _timeline(rig: Rig, monkeypatch: Any) -> List[Tuple[str, ...]]:
    """Commands run and SCSI disks deleted, in the order they happened."""
    events: List[Tuple[str, ...]] = []
    run, delete = rig.kernel.executor.run, scsi.delete

    def recording_run(argv: Any, **kw: Any) -> Any:
        events.append(tuple(argv))
        return run(argv, **kw)

    def recording_delete(paths: Any, hctl: Any) -> bool:
        events.append(("delete", str(hctl)))
        return delete(paths, hctl)

    monkeypatch.setattr(rig.kernel.executor, "run", recording_run)
    monkeypatch.setattr(scsi, "delete", recording_delete)
    return events


# ------------------------------------------------------------------------------- WWN checks
def test_another_volumes_device_is_refused_and_left_in_place(rig: Rig) -> None:
    conn = rig.connector()
    mine = conn.connect_volume(rig.info(1))
    theirs = conn.connect_volume(rig.info(2))
    assert (mine.wwn, theirs.wwn) == (rig.vol.wwid, rig.other.wwid)
    both = rig.disks()
    assert len(both) == 2

    with pytest.raises(DeviceMismatch) as e:  # the info names LUN 1; the device holds LUN 2
        conn.disconnect_volume(rig.info(1), theirs)
    assert (e.value.device, e.value.expected, e.value.found) == (theirs.path, rig.vol.wwid, rig.other.wwid)
    assert rig.disks() == both and conn.get_volume_paths(rig.info(2)) == [theirs.path]

    with pytest.raises(DeviceMismatch):  # the info's WWN is LUN 1's; the device still LUN 2's
        conn.disconnect_volume(rig.info(1, wwn=rig.vol.wwid), theirs)
    assert rig.disks() == both

    conn.disconnect_volume(rig.info(1, wwn=naa_wwid(555)))  # a stale WWN: the disk at LUN 1 is not it
    assert rig.disks() == both

    conn.disconnect_volume(rig.info(1), mine)
    assert rig.disks() == [os.path.basename(theirs.path or "")]
    assert conn.get_volume_paths(rig.info(2)) == [theirs.path]


def test_a_reused_device_name_from_a_path_only_device_is_refused(rig: Rig) -> None:
    """Nova hands back only the device_path it saved at attach: after the volume's LU went away and the
    kernel gave the name to another volume, that path must not be detached as this volume's."""
    conn = rig.connector()
    mine = conn.connect_volume(rig.info(1))
    conn.disconnect_volume(rig.info(1), mine)
    theirs = conn.connect_volume(rig.info(2))
    assert theirs.path == mine.path  # the fake kernel, like Linux, hands out the lowest free name
    for force in (False, True):
        with pytest.raises(DeviceMismatch) as e:
            conn.disconnect_volume(rig.info(1), {"path": mine.path}, force=force)
        assert e.value.found == rig.other.wwid
        assert conn.get_volume_paths(rig.info(2)) == [theirs.path]
    conn.disconnect_volume(rig.info(1))  # by address only: nothing of LUN 1 left, LUN 2 untouched
    assert conn.get_volume_paths(rig.info(2)) == [theirs.path]


def test_connect_refuses_a_lun_holding_another_volume_and_removes_what_it_surfaced(rig: Rig) -> None:
    conn = rig.connector(use_multipath=True)
    with pytest.raises(DeviceMismatch) as e:
        conn.connect_volume(rig.info(1, wwn=naa_wwid(999)))
    assert e.value.found == rig.vol.wwid and e.value.expected == naa_wwid(999)
    assert rig.disks() == [] and rig.maps() == []


def test_a_gone_device_with_a_stale_wwn_yields_to_the_info(rig: Rig) -> None:
    conn = rig.connector()
    dev = conn.connect_volume(rig.info(1))
    stale = AttachedDevice(dev.protocol, path="/dev/sdz", wwn=naa_wwid(999))  # not on this host any more
    conn.disconnect_volume(rig.info(1, wwn=rig.vol.wwid), stale)
    assert rig.disks() == []


def test_split_by_wwn(rig: Rig) -> None:
    conn = rig.connector()
    paths = conn.connect_volume(rig.info(1)).paths + conn.connect_volume(rig.info(2)).paths
    ours, theirs = (os.path.basename(p) for p in paths)
    spelled = "naa." + rig.vol.wwid[1:].upper()  # another spelling of the same LU
    assert conn.split_by_wwn(spelled, [theirs, ours], str) == ([ours], [theirs], rig.vol.wwid)
    # no WWN expected: the most common one wins, ties go to the first seen
    assert conn.split_by_wwn(None, [theirs, ours, ours], str) == ([ours, ours], [theirs], rig.vol.wwid)
    assert conn.split_by_wwn(None, [theirs, ours], str) == ([theirs], [ours], rig.other.wwid)
    with pytest.raises(DeviceNotFound):
        conn.split_by_wwn(None, ["sdq"], str)  # no such disk: no WWN to go by


# ------------------------------------------------------------------------------- flush and teardown
def test_map_busy_past_flush_timeout_is_device_busy_and_keeps_the_disks(rig: Rig) -> None:
    conn = rig.connector(use_multipath=True, flush_timeout=0.6)
    dev = conn.connect_volume(rig.info(1))
    assert dev.multipath_id == rig.vol.wwid and len(dev.paths) == 2
    before = (rig.disks(), rig.maps())
    name = rig.map_name(os.path.basename(dev.path or ""))
    rig.kernel.open_maps.add(name)  # a real holder: the map never closes
    t0 = time.monotonic()
    with pytest.raises(DeviceBusy) as e:
        conn.disconnect_volume(rig.info(1), dev)
    waited = time.monotonic() - t0
    assert e.value.device == dev.path and "still in use after 0.6s" in str(e.value)
    assert 0.6 <= waited < 5
    assert len(rig.kernel.executor.argvs(("multipath", "-f"))) >= 2  # "in use" was retried
    assert (rig.disks(), rig.maps()) == before
    assert conn.get_volume_paths(rig.info(1)) == list(dev.paths)

    with pytest.raises(DetachIncomplete) as f:
        conn.disconnect_volume(rig.info(1), dev, force=True)
    assert [x.split(":")[0] for x in f.value.failures] == [f"flush multipath map {name}"]
    assert (rig.disks(), rig.maps()) == ([], [])  # multipathd dropped the map; the disks are gone


def test_only_in_use_is_retried(rig: Rig) -> None:
    conn = rig.connector(flush_timeout=5)
    t0 = time.monotonic()
    with pytest.raises(DeviceBusy) as e:
        conn.flush_map(DmMap("dm-7", "no-such-map", rig.vol.wwid, ()))
    assert time.monotonic() - t0 < 2 and "map not present" in str(e.value)
    assert rig.kernel.executor.argvs(("multipath", "-f")) == [("multipath", "-f", "no-such-map")]


def test_a_map_closed_within_flush_timeout_is_torn_down(rig: Rig) -> None:
    conn = rig.connector(use_multipath=True, flush_timeout=10)
    dev = conn.connect_volume(rig.info(1))
    name = rig.map_name(os.path.basename(dev.path or ""))
    rig.kernel.open_maps.add(name)  # udev's probe holds the map for a moment
    released = threading.Event()

    def close_after_second_try(argv: Any, _input: Any) -> Any:
        if len(rig.kernel.executor.argvs(("multipath", "-f"))) >= 2:
            rig.kernel.open_maps.discard(name)
            released.set()
        return rig.kernel._multipath(argv, _input)

    rig.kernel.executor.rules.insert(0, (("multipath", "-f"), close_after_second_try))
    conn.disconnect_volume(rig.info(1), dev)
    assert released.is_set() and (rig.disks(), rig.maps()) == ([], [])


def test_teardown_flushes_then_removes_disks_then_logs_out(rig: Rig, monkeypatch: Any) -> None:
    conn = rig.connector(use_multipath=True)
    dev = conn.connect_volume(rig.info(1))
    events = _timeline(rig, monkeypatch)
    conn.disconnect_volume(rig.info(1), dev)
    kinds = [e[0] if e[0] != "multipath" else "multipath " + e[1] for e in events]
    first_delete = kinds.index("delete")
    assert events[kinds.index("blockdev")] == ("blockdev", "--flushbufs", dev.path)  # the map's buffers first
    assert kinds.index("blockdev") < kinds.index("multipath -f") < first_delete
    assert kinds.count("delete") == 2 and "blockdev" not in kinds[first_delete:]
    if rig.kind == "iscsi":  # the transport's own step comes last, when no disk is left
        logouts = [i for i, e in enumerate(events) if e[:1] == ("iscsiadm",) and "--logout" in e]
        assert len(logouts) == 2 and min(logouts) > max(i for i, k in enumerate(kinds) if k == "delete")
        assert rig.kernel.session_ids() == []
    assert (rig.disks(), rig.maps()) == ([], [])


def test_a_failed_flush_stops_the_detach_unless_forced(rig: Rig) -> None:
    conn = rig.connector()
    dev = conn.connect_volume(rig.info(1))
    name = os.path.basename(dev.path or "")
    rig.kernel.fail_flush.add(name)
    with pytest.raises(CommandFailed):
        conn.disconnect_volume(rig.info(1), dev)
    assert rig.disks() == [name]  # nothing removed after the failure
    with pytest.raises(DetachIncomplete) as e:
        conn.disconnect_volume(rig.info(1), dev, force=True)
    assert len(e.value.failures) == 1 and e.value.failures[0].startswith(f"flush /dev/{name}:")
    assert rig.disks() == []


# ------------------------------------------------------------------------------- one lock rule
def test_a_connect_waits_for_a_running_disconnect_of_the_same_volume(rig: Rig, monkeypatch: Any) -> None:
    first = rig.connector()
    dev = first.connect_volume(rig.info(1))
    second = rig.connector()  # another caller (another process would take the same lock file)
    got: List[AttachedDevice] = []
    racer = threading.Thread(target=lambda: got.append(second.connect_volume(rig.info(1))))
    waited: List[bool] = []
    flush = scsi.flush

    def flush_then_race(*args: Any) -> None:
        flush(*args)
        racer.start()  # mid-disconnect: the disk is flushed, not yet removed
        racer.join(0.3)
        waited.append(racer.is_alive())

    monkeypatch.setattr(scsi, "flush", flush_then_race)
    first.disconnect_volume(rig.info(1), dev)
    racer.join(10)
    # without the volume lock the racer would have been handed the disk the disconnect then removed
    assert waited == [True] and not racer.is_alive()
    assert got and got[0].wwn == rig.vol.wwid
    assert rig.disks() == [os.path.basename(got[0].path or "")]
    assert first.get_volume_paths(rig.info(1)) == [got[0].path]


# ------------------------------------------------------------------------------- extend
def test_extend_needs_every_path_running(rig: Rig) -> None:
    conn = rig.connector(use_multipath=True)
    dev = conn.connect_volume(rig.info(1))
    rig.vol.size = 48 << 20  # the array grew the LUN
    sick = os.path.basename(dev.paths[1])
    rig.tree.set_device_state(sick, "offline")
    with pytest.raises(DeviceBusy) as e:
        conn.extend_volume(rig.info(1))
    assert e.value.device == dev.paths[1] and "offline" in str(e.value)
    assert {rig.size(os.path.basename(p)) for p in dev.paths} == {32 << 20}  # nothing rescanned
    rig.tree.set_device_state(sick, "running")
    assert conn.extend_volume(rig.info(1)) == 48 << 20
    assert rig.size(os.path.basename(dev.path or "")) == 48 << 20
    conn.disconnect_volume(rig.info(1), dev)
    with pytest.raises(DeviceNotFound):
        conn.extend_volume(rig.info(1))


# ------------------------------------------------------------------------------- options
@pytest.mark.parametrize("cls", [ISCSIConnector, FibreChannelConnector])
def test_shared_option_names_and_defaults(cls: Type[ScsiConnector], tmp_path: Any) -> None:
    paths = FakeHostTree(str(tmp_path / "host")).paths
    conn = cls(paths=paths)
    assert (conn.use_multipath, conn.min_paths, conn.timeout, conn.flush_timeout) == (False, 1, 30.0, 15.0)
    with pytest.warns(DeprecationWarning) as warned:
        old = cls(paths=paths, device_timeout=7, flush_retry_seconds=2)
    assert (old.timeout, old.flush_timeout) == (7.0, 2.0)
    assert sorted(str(w.message).split("'")[1] for w in warned) == ["device_timeout", "flush_retry_seconds"]
    assert cls(paths=paths, flush_timeout=0).flush_timeout == 0.0  # one attempt, no retry


@pytest.mark.parametrize("cls", [ISCSIConnector, FibreChannelConnector])
@pytest.mark.parametrize("option, value, named", [
    ("min_paths", 0, "min_paths"), ("use_multipath", "yes", "use_multipath"), ("enforce_multipath", 1, "enforce_multipath"),
    ("timeout", -1, "timeout"), ("timeout", float("nan"), "timeout"), ("flush_timeout", -0.5, "flush_timeout"),
    ("device_timeout", -1, "timeout"), ("no_such_option", 1, "no_such_option")])
def test_bad_options_raise_invalid_option(cls: Type[ScsiConnector], option: str, value: Any, named: str,
                                          tmp_path: Any) -> None:
    renamed: ContextManager[Any] = pytest.warns(DeprecationWarning) if option == "device_timeout" else contextlib.nullcontext()
    with pytest.raises(InvalidOption) as e, renamed:
        cls(paths=FakeHostTree(str(tmp_path / "host")).paths, **{option: value})
    assert e.value.option == named and isinstance(e.value, ValueError)


@pytest.mark.parametrize("option, value", [("node_startup", "sometimes"), ("login_retries", -1),
                                           ("login_timeout", 0)])
def test_bad_iscsi_options_raise_invalid_option(option: str, value: Any, tmp_path: Any) -> None:
    with pytest.raises(InvalidOption) as e:
        ISCSIConnector(paths=FakeHostTree(str(tmp_path / "host")).paths, **{option: value})
    assert e.value.option == option


# ------------------------------------------------------------------------------- LUN addressing
def test_lun_for_addressing() -> None:
    table = [(1, None, 1), (1, "SAM", 1), (300, "transparent", 300), (255, "SAM2", 255), (256, "SAM2", 16640),
             (1, "SAM3-flat", 16385)]
    assert [lun_for_addressing(lun, mode) for lun, mode, _ in table] == [want for _, _, want in table]
    with pytest.raises(InvalidConnectionInfo) as e:
        lun_for_addressing(1, "SAM4")
    assert e.value.field == "addressing_mode"


def test_both_transports_address_luns_the_same_way(tmp_path: Any) -> None:
    flat = FakeLun(16385, naa_wwid(7))
    fc_rig = FcRig(tmp_path / "fc")
    fc_rig.tree.add_rport(fc_rig.tree.add_hba("21000024ff406cc9", pci="0000:06:00.0"), "500a0982aaaaaaaa",
                          luns={16385: flat})
    iscsi_rig = IscsiRig(tmp_path / "iscsi")
    iscsi_rig.kernel.add_target("iqn.2010-10.org.openstack:flat", ["10.0.0.9:3260"], {16385: flat})
    dev_fc = fc_rig.connector().connect_volume(
        {"target_wwn": "500a0982aaaaaaaa", "target_lun": 1, "addressing_mode": "SAM3-flat"})
    dev_iscsi = iscsi_rig.connector().connect_volume(
        {"target_portal": "10.0.0.9:3260", "target_iqn": "iqn.2010-10.org.openstack:flat", "target_lun": 1,
         "addressing_mode": "SAM3-flat"})
    assert dev_fc.wwn == dev_iscsi.wwn == flat.wwid
