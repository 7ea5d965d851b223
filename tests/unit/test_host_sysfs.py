"""The sysfs side of the host layer (SCSI, iSCSI sessions, multipath maps) and node-record files,
on a FakeHostTree laid out like Linux 6.1."""

from __future__ import annotations

import os
from typing import Any

import pytest

from blocklink.connection import Portal
from blocklink.initiator.host import multipath as mp
from blocklink.initiator.host import scsi
from blocklink.initiator.host.iscsiadm import Iscsiadm
from blocklink.initiator.host.wwn import device_wwid
from blocklink.masking import Secret
from blocklink.testing.fakeiscsi import FakeIscsiKernel
from blocklink.testing.hosttree import FakeHostTree, FakeLun, naa_wwid

IQN = "iqn.2003-01.org.example:t1"


@pytest.fixture
def tree(tmp_path: Any) -> FakeHostTree:
    return FakeHostTree(str(tmp_path))


def test_sessions_and_their_devices(tree: FakeHostTree) -> None:
    luns = {n: FakeLun(n, naa_wwid(n), size=(n + 1) << 20) for n in range(3)}
    tree.add_iscsi_session(4, IQN, "fd00::1", 3261, tpgt=2, luns=luns)
    (s,) = scsi.iscsi_sessions(tree.paths)
    assert (s.sid, s.iqn, s.address, s.port, s.tpgt, s.host, s.target_id, s.state) == (
        4, IQN, "fd00::1", 3261, 2, 0, 0, "LOGGED_IN")
    assert s.portal == "[fd00::1]:3261" and s.matches(IQN, "[fd00:0::1]", 3261)
    assert scsi.find_session(tree.paths, IQN, "fd00::1", 3260) is None
    assert scsi.session_devices(tree.paths, 4) == []  # nothing until scanned

    scsi.scan(tree.paths, 0, 0, 0, 2)
    (dev,) = scsi.session_devices(tree.paths, 4)
    assert (dev.hctl, dev.name, dev.state) == (scsi.Hctl(0, 0, 0, 2), "sda", "running")
    assert scsi.device_hctl(tree.paths, "sda") == scsi.Hctl(0, 0, 0, 2)
    assert scsi.size_bytes(tree.paths, "sda") == 3 << 20
    assert device_wwid(tree.paths, "sda") == naa_wwid(2)
    assert os.readlink(tree.p("dev", "disk", "by-path", f"ip-fd00::1:3261-iscsi-{IQN}-lun-2")) == "../../sda"

    scsi.scan(tree.paths, 0, "-", "-", "-")  # the wildcard scan os-brick-style auto scan would do
    assert [d.hctl.lun for d in scsi.session_devices(tree.paths, 4)] == [0, 1, 2]
    with pytest.raises(OSError):
        scsi.scan(tree.paths, 0, "x", 0, 0)

    assert scsi.delete(tree.paths, scsi.Hctl(0, 0, 0, 2)) is True
    assert scsi.delete(tree.paths, scsi.Hctl(0, 0, 0, 2)) is False  # already gone
    assert not scsi.block_exists(tree.paths, "sda") and not os.path.lexists(tree.p("dev", "sda"))


def test_sessions_of_a_target_and_the_session_of_a_disk(tree: FakeHostTree) -> None:
    other = "iqn.2003-01.org.example:t2"
    tree.add_iscsi_session(1, IQN, "10.0.0.1", luns={0: FakeLun(0, naa_wwid(1))}, scan=True)
    tree.add_iscsi_session(2, other, "10.0.0.1", luns={0: FakeLun(0, naa_wwid(2))}, scan=True)
    tree.add_iscsi_session(3, IQN, "10.0.0.2", luns={0: FakeLun(0, naa_wwid(1))}, scan=True)
    assert [(s.sid, s.address) for s in scsi.sessions_of(tree.paths, IQN)] == [(1, "10.0.0.1"), (3, "10.0.0.2")]
    assert [s.sid for s in scsi.sessions_of(tree.paths, other)] == [2]
    assert scsi.sessions_of(tree.paths, IQN + "x") == []  # a name that only starts alike is another target
    assert scsi.find_session(tree.paths, IQN, "10.0.0.2", 3260).sid == 3  # type: ignore[union-attr]
    assert {n: scsi.device_session(tree.paths, n) for n in ("sda", "sdb", "sdc")} == {"sda": 1, "sdb": 2, "sdc": 3}
    assert scsi.device_session(tree.paths, "sdz") is None  # gone
    tree.remove_iscsi_session(2)
    assert scsi.sessions_of(tree.paths, other) == [] and scsi.device_session(tree.paths, "sdb") is None


def test_rescan_reads_the_new_size(tree: FakeHostTree) -> None:
    lun = FakeLun(0, naa_wwid(7), size=1 << 20)
    tree.add_iscsi_session(1, IQN, "10.0.0.1", luns={0: lun}, scan=True)
    lun.size = 5 << 20
    assert scsi.size_bytes(tree.paths, "sda") == 1 << 20
    scsi.rescan(tree.paths, "sda")
    assert scsi.size_bytes(tree.paths, "sda") == 5 << 20


def test_wwid_falls_back_to_the_sysfs_attribute(tree: FakeHostTree) -> None:
    tree.add_iscsi_session(1, IQN, "10.0.0.1", luns={0: FakeLun(0, naa_wwid(9))}, scan=True)
    os.unlink(os.path.join(tree.p("sys", "block", "sda", "device"), "vpd_pg83"))
    assert device_wwid(tree.paths, "sda") == naa_wwid(9)


def test_multipath_maps_from_sysfs(tree: FakeHostTree) -> None:
    lun = FakeLun(0, naa_wwid(3))
    tree.add_iscsi_session(1, IQN, "10.0.0.1", luns={0: lun}, scan=True)
    tree.add_iscsi_session(2, IQN, "10.0.0.2", luns={0: lun}, scan=True)
    dm = tree.add_multipath(naa_wwid(3), ["sda", "sdb"], name="mpatha")
    m = mp.map_for_wwid(tree.paths, "naa." + naa_wwid(3)[1:])
    assert m == mp.DmMap(dm, "mpatha", naa_wwid(3), ("sda", "sdb"))
    assert mp.map_holding(tree.paths, ["sdb"]) == m and m.path == "/dev/dm-0"
    assert mp.map_for_wwid(tree.paths, naa_wwid(4)) is None
    tree.remove_scsi_device("sdb")  # a deleted path leaves the map
    assert mp.read_map(tree.paths, dm).slaves == ("sda",)  # type: ignore[union-attr]


def test_node_records_flat_and_per_iface_layouts(tree: FakeHostTree) -> None:
    k = FakeIscsiKernel(tree)
    adm = Iscsiadm(k.executor, tree.paths)
    portal = Portal.parse("10.0.0.1:3260")
    # the layout discovery leaves: <addr>,<port>,<tpgt>/<iface>; plus another iface's record
    d = tree.p("etc", "iscsi", "nodes", IQN, "10.0.0.1,3260,1")
    os.makedirs(d)
    for iface in ("default", "iser"):
        with open(os.path.join(d, iface), "w") as f:
            f.write(f"# BEGIN RECORD 2.1.8\nnode.name = {IQN}\niface.iscsi_ifacename = {iface}\n"
                    "node.conn[0].address = 10.0.0.1\nnode.conn[0].port = 3260\n# END RECORD\n")
    adm.configure_node(IQN, portal, {"node.session.auth.password": Secret("pw-12345678")})
    files = adm.node_files(IQN, portal)
    assert sorted(os.path.relpath(f, tree.p("etc", "iscsi", "nodes", IQN)) for f in files) == [
        "10.0.0.1,3260", "10.0.0.1,3260,1/default"]  # both records of iface default, not iser's
    for f in files:
        assert "node.session.auth.password = pw-12345678" in open(f).read()
        assert os.stat(f).st_mode & 0o777 == 0o600
    assert "pw-12345678" not in open(os.path.join(d, "iser")).read()
