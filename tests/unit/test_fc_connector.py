"""FibreChannelConnector on fake FC hosts (qla2xxx, lpfc, fcoe layouts) with a simulated multipathd.

Every test checks what the host is left with (disks, maps, scan writes), not only what was called.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest

from blocklink.connection import AttachedDevice, FcInfo
from blocklink.errors import (CommandFailed, ConnectionFailed, DetachIncomplete, DeviceBusy, DeviceMismatch, DeviceNotFound,
                              InvalidConnectionInfo, VolumeNotFound)
from blocklink.initiator.fc import FibreChannelConnector
from blocklink.registry import connector_for
from blocklink.testing.fakeiscsi import FakeIscsiKernel
from blocklink.testing.hosttree import FakeLun, naa_wwid, vpd_pg83
from blocklink.initiator.host.wwn import same_wwn
from blocklink.testing.hosttree_fc import FakeFcTree

VECTORS = os.path.join(os.path.dirname(__file__), "..", "vectors", "connection_info.json")

# NetApp ONTAP's per-fabric map (tests/vectors): initiator -> its fabric's two target ports
INI_A, INI_B = "21000024ff406cc3", "21000024ff406cc2"
TA1, TA2, TB1, TB2 = "500a098280feeba5", "500a098290feeba5", "500a098190feeba5", "500a098180feeba5"


def vector(backend: str) -> Dict[str, Any]:
    with open(VECTORS) as f:
        for case in json.load(f):
            if case.get("backend") == backend and case["driver_volume_type"] == "fibre_channel":
                return copy.deepcopy({"driver_volume_type": case["driver_volume_type"], "data": case["data"]})
    raise LookupError(backend)


class Host:
    """A fake FC host, the simulated multipathd/blockdev, and a connector over both."""

    def __init__(self, tmp_path: Any) -> None:
        self.tree = FakeFcTree(str(tmp_path / "root"))
        self.kernel = FakeIscsiKernel(self.tree)  # its multipath/multipathd/blockdev simulation
        self.lock_path = str(tmp_path / "locks")

    def connector(self, **kw: Any) -> FibreChannelConnector:
        kw.setdefault("timeout", 0.5)
        kw.setdefault("flush_timeout", 0.3)
        return FibreChannelConnector(executor=self.kernel.executor, paths=self.tree.paths, lock_path=self.lock_path,
                                     **kw)

    def scans(self) -> List[Tuple[str, str]]:
        return [(p.split(os.sep)[-2], d) for p, d in self.tree.writes if p.endswith("/scan")]

    def disks(self) -> List[str]:
        return sorted(n for n in os.listdir(self.tree.p("sys", "block")) if n.startswith("sd"))

    def maps(self) -> List[str]:
        return sorted(n for n in os.listdir(self.tree.p("sys", "block")) if n.startswith("dm-"))

    def hctl(self, name: str) -> str:
        return os.path.basename(os.path.realpath(self.tree.p("sys", "block", name, "device")))

    def size(self, name: str) -> int:
        with open(self.tree.p("sys", "block", name, "size")) as f:
            return int(f.read()) * 512


@pytest.fixture
def host(tmp_path: Any) -> Host:
    return Host(tmp_path)


VOL = FakeLun(1, naa_wwid(101), size=32 << 20)
OTHER = FakeLun(2, naa_wwid(102))


def two_fabrics(host: Host, driver: str = "qla2xxx") -> Tuple[int, int]:
    """Two HBAs, each zoned with its fabric's two target ports; LUN 1 (ours) and 2 (another volume's)
    are mapped to both initiators on all four ports, already logged in (nothing scanned yet)."""
    a = host.tree.add_hba(INI_A, driver=driver, pci="0000:05:00.0")
    b = host.tree.add_hba(INI_B, driver=driver, pci="0000:05:00.1")
    for h, ports in ((a, (TA1, TA2)), (b, (TB1, TB2))):
        for t in ports:
            host.tree.add_rport(h, t, luns={1: VOL, 2: OTHER})
    return a, b


# ---------------------------------------------------------------------------------------------
def test_registry_and_connector_properties(host):
    host.tree.add_hba(INI_A, driver="lpfc", pci="0000:04:00.0")
    host.tree.add_hba(INI_B, driver="lpfc", pci="0000:04:00.1", state="Linkdown")
    assert isinstance(connector_for("fibre_channel", paths=host.tree.paths), FibreChannelConnector)
    assert isinstance(connector_for("fc", paths=host.tree.paths), FibreChannelConnector)
    props = host.connector().get_connector_properties()
    assert props == {"wwpns": [INI_A], "wwnns": ["2" + INI_A[1:]]}  # the Linkdown port is not offered


def test_single_path_scans_one_lun_on_one_port(host):
    a, b = two_fabrics(host)
    conn = host.connector()
    info = vector("NetApp ONTAP FC")
    dev = conn.connect_volume(info)
    assert dev.path == "/dev/sda" and dev.paths == ("/dev/sda",) and dev.multipath_id is None
    assert dev.wwn == VOL.wwid
    assert host.disks() == ["sda"] and host.hctl("sda") == f"{a}:0:0:1"
    assert host.scans() == [(f"host{a}", "0 0 1")]  # one targeted scan; never "- - -"
    assert os.path.realpath(host.tree.p("dev", "disk", "by-path", f"pci-0000:05:00.0-fc-0x{TA1}-lun-1")) \
        == host.tree.p("dev", "sda")
    assert conn.get_volume_paths(info) == ["/dev/sda"]
    assert conn.connect_volume(info) == dev  # idempotent, no new scan
    assert len(host.scans()) == 1

    conn.disconnect_volume(info, dev)
    assert host.disks() == [] and conn.get_volume_paths(info) == []
    assert host.kernel.executor.argvs(("blockdev",)) == [("blockdev", "--flushbufs", "/dev/sda")]
    conn.disconnect_volume(info, dev)  # twice is harmless


def test_multipath_follows_the_initiator_target_map(host):
    a, b = two_fabrics(host)
    conn = host.connector(use_multipath=True, enforce_multipath=True)
    info = vector("NetApp ONTAP FC")
    dev = conn.connect_volume(info)
    assert dev.path == "/dev/dm-0" and dev.multipath_id == VOL.wwid == dev.wwn
    assert sorted(host.hctl(os.path.basename(p)) for p in dev.paths) == \
        [f"{a}:0:0:1", f"{a}:0:1:1", f"{b}:0:0:1", f"{b}:0:1:1"]
    assert sorted(os.listdir(host.tree.p("sys", "block", "dm-0", "slaves"))) == host.disks()
    assert sorted(host.scans()) == [(f"host{a}", "0 0 1"), (f"host{a}", "0 1 1"), (f"host{b}", "0 0 1"),
                                    (f"host{b}", "0 1 1")]
    # the other volume's LUN 2 on the same ports did not surface
    assert not [d for d in host.disks() if host.hctl(d).endswith(":2")]
    conn.disconnect_volume(info, dev)
    assert host.disks() == [] and host.maps() == []
    assert ("multipath", "-f", VOL.wwid) in host.kernel.executor.argvs(("multipath",))


def test_map_limits_scans_when_every_hba_sees_every_port(host):
    """One flat fabric: both HBAs see both target ports, the map pairs A with T1 and B with T2 only."""
    a = host.tree.add_hba(INI_A)
    b = host.tree.add_hba(INI_B, pci="0000:05:00.1")
    for h in (a, b):
        for t in (TA1, TA2):
            host.tree.add_rport(h, t, luns={1: VOL})
    info = {"target_wwn": [TA1, TA2], "target_lun": 1,
            "initiator_target_map": {INI_A.upper(): [TA1.upper()], INI_B: [TA2]}}
    dev = host.connector(use_multipath=True).connect_volume(info)
    assert sorted(host.scans()) == [(f"host{a}", "0 0 1"), (f"host{b}", "0 1 1")]
    assert len(dev.paths) == 2 and len(host.disks()) == 2
    # without a map every online HBA reaches every port
    host.connector(use_multipath=True).disconnect_volume(info, dev)
    dev = host.connector(use_multipath=True).connect_volume({"target_wwn": [TA1, TA2], "target_lun": 1})
    assert len(dev.paths) == 4 and host.maps() == ["dm-1"]


def test_lpfc_pure_vector_sam2_and_wwn(host):
    info = vector("Pure FlashArray FC")
    wwn = info["data"]["wwn"]
    lun = FakeLun(1, wwn)
    hba = host.tree.add_hba("10000090fa1b2c3d", driver="lpfc", pci="0000:04:00.0")
    for t in info["data"]["target_wwns"]:
        host.tree.add_rport(hba, t, luns={1: lun})
    conn = host.connector(use_multipath=True)
    # the vector's map key is 19 hex digits: no HBA can match it, and the error says so
    with pytest.raises(ConnectionFailed, match="initiator_target_map pairs none"):
        conn.connect_volume(info)
    assert host.scans() == [] and host.disks() == []
    info["data"]["initiator_target_map"] = {"10000090FA1B2C3D": info["data"]["target_wwns"]}
    dev = conn.connect_volume(info)
    assert dev.wwn == wwn[1:] or dev.wwn == wwn
    assert len(dev.paths) == 4 and dev.path == "/dev/dm-0"
    assert sorted(d for _, d in host.scans()) == ["0 0 1", "0 1 1", "0 2 1", "0 3 1"]  # SAM2 keeps LUN 1 as is
    conn.disconnect_volume(info, dev)
    assert host.disks() == [] and host.maps() == []


@pytest.mark.parametrize("mode,linux_lun,link", [
    (None, 300, "lun-0x012c000000000000"),
    ("transparent", 300, "lun-0x012c000000000000"),
    ("SAM2", 16684, "lun-0x412c000000000000"),
    ("SAM3-flat", 16684, "lun-0x412c000000000000"),
])
def test_lun_above_255(host, mode, linux_lun, link):
    hba = host.tree.add_hba("2000020000000f01", driver="fcoe", pci="0000:00:04.0")
    lun = FakeLun(linux_lun, naa_wwid(300))
    host.tree.add_rport(hba, "2000020000000f02", roles="FCP Target, FCP Initiator", luns={linux_lun: lun})
    info = {"target_wwn": "0x2000020000000F02", "target_lun": 300, "addressing_mode": mode}
    conn = host.connector()
    dev = conn.connect_volume(info)
    assert host.scans() == [(f"host{hba}", f"0 0 {linux_lun}")]
    assert host.hctl("sda") == f"{hba}:0:0:{linux_lun}"
    assert os.path.exists(host.tree.p("dev", "disk", "by-path", f"pci-0000:00:04.0-fc-0x2000020000000f02-{link}"))
    assert conn.get_volume_paths(info) == [dev.path]
    conn.disconnect_volume(info, dev)
    assert host.disks() == []


def test_sam3_flat_small_lun_and_bad_mode(host):
    hba = host.tree.add_hba(INI_A)
    host.tree.add_rport(hba, TA1, luns={16389: FakeLun(16389, naa_wwid(5))})
    dev = host.connector().connect_volume({"target_wwn": TA1, "target_lun": 5, "addressing_mode": "SAM3-flat"})
    assert host.scans() == [(f"host{hba}", "0 0 16389")] and dev.path == "/dev/sda"
    with pytest.raises(InvalidConnectionInfo) as e:
        host.connector().connect_volume({"target_wwn": TA1, "target_lun": 5, "addressing_mode": "SAM4"})
    assert e.value.field == "addressing_mode"


def test_fcoe_layout_short_and_odd_wwns(host):
    """The guest's FCoE view: another initiator on the segment, upper case/colon/short WWNs in the info."""
    ini = host.tree.add_hba("2000020000000f01", driver="fcoe", pci="0000:00:04.0", iface="eth0")
    tgt = host.tree.add_hba("2000020000000f02", driver="fcoe", pci="0000:00:05.0", iface="eth1")
    host.tree.add_rport(tgt, "2000020000000f01", roles="FCP Initiator")
    host.tree.add_rport(ini, "2000020000000f02", roles="FCP Target, FCP Initiator", luns={0: VOL})
    host.tree.add_rport(ini, "0000987654321234", luns={0: OTHER})  # HPE vector's 13-digit WWN
    dev = host.connector().connect_volume({"target_wwn": ["20:00:02:00:00:00:0F:02"], "target_lun": 0})
    assert dev.wwn == VOL.wwid and host.scans() == [(f"host{ini}", "0 0 0")]
    dev2 = host.connector().connect_volume({"target_wwn": "0987654321234", "target_lun": 0})
    assert dev2.wwn == OTHER.wwid and dev2.path != dev.path
    # the target NIC's own host (it sees only an initiator) was never scanned
    assert not [h for h, _ in host.scans() if h == f"host{tgt}"]


# ---------------------------------------------------------------------------------------------
def test_offline_hba_and_blocked_port_are_skipped(host):
    a, b = two_fabrics(host)
    host.tree.set_hba_state(a, "Linkdown")
    rdirs = host.tree.rport_dirs(b)
    host.tree.rport_attr(rdirs[0], "port_state", "Blocked")
    dev = host.connector(use_multipath=True).connect_volume(vector("NetApp ONTAP FC"))
    assert host.scans() == [(f"host{b}", "0 1 1")]
    assert [host.hctl(os.path.basename(p)) for p in dev.paths] == [f"{b}:0:1:1"]


def test_no_online_hba(host):
    a, b = two_fabrics(host)
    for h in (a, b):
        host.tree.set_hba_state(h, "Linkdown")
    with pytest.raises(ConnectionFailed, match="no online FC HBA.*Linkdown"):
        host.connector().connect_volume(vector("NetApp ONTAP FC"))
    assert host.scans() == []


def test_all_ports_blocked_fails_within_the_timeout(host):
    a, b = two_fabrics(host)
    for r in host.tree.rport_dirs():
        host.tree.rport_attr(r, "port_state", "Blocked")
    t0 = time.monotonic()
    with pytest.raises(ConnectionFailed, match="Blocked") as e:
        host.connector(timeout=0.3).connect_volume(vector("NetApp ONTAP FC"))
    assert time.monotonic() - t0 < 2 and not isinstance(e.value, VolumeNotFound)
    assert host.scans() == [] and host.disks() == []


def test_port_that_comes_online_while_waiting(host):
    hba = host.tree.add_hba(INI_A)
    r = host.tree.add_rport(hba, TA1, luns={1: VOL}, state="Blocked")
    threading.Timer(0.3, host.tree.rport_attr, (r, "port_state", "Online")).start()
    dev = host.connector(timeout=5).connect_volume({"target_wwn": TA1, "target_lun": 1})
    assert dev.path == "/dev/sda" and host.scans() == [(f"host{hba}", "0 0 1")]


class _BusyOnce(set):
    """Map names that refuse the first flush only (a holder that lets go once asked), deterministically."""

    def __contains__(self, name: object) -> bool:
        if set.__contains__(self, name):
            self.discard(name)
            return True
        return False


def test_unmapped_lun_fails_at_once_and_leaves_nothing(host):
    two_fabrics(host)
    info = vector("NetApp ONTAP FC")
    info["data"]["target_lun"] = 7
    t0 = time.monotonic()
    with pytest.raises(VolumeNotFound, match="report no such LUN") as e:
        host.connector(use_multipath=True, timeout=10).connect_volume(info)
    assert time.monotonic() - t0 < 2  # no waiting for the timeout: every port answered
    assert "LUN 7" in str(e.value)
    assert len(host.scans()) == 4 and host.disks() == []


def test_port_without_target_role_for_us(host):
    """A target without an ACL for our WWPN: logged in, but only as an initiator (what LIO does)."""
    hba = host.tree.add_hba("2000020000000f01", driver="fcoe", pci="0000:00:04.0")
    host.tree.add_rport(hba, "2000020000000f02", roles="FCP Initiator", luns={0: VOL})
    with pytest.raises(VolumeNotFound, match="not an FCP target for this initiator"):
        host.connector(timeout=0.3).connect_volume({"target_wwn": "2000020000000f02", "target_lun": 0})
    assert host.scans() == [] and host.disks() == []


def test_missing_paths_and_min_paths(host):
    a, b = two_fabrics(host)
    for r in host.tree.rport_dirs(b):  # fabric B has no remote ports at all
        host.tree.reported.pop(r)
        os.unlink(host.tree.p("sys", "class", "fc_remote_ports", os.path.basename(r)))
    info = vector("NetApp ONTAP FC")
    dev = host.connector(use_multipath=True).connect_volume(info)
    assert len(dev.paths) == 2 and dev.path == "/dev/dm-0"
    host.connector(use_multipath=True).disconnect_volume(info, dev)
    with pytest.raises(ConnectionFailed, match="2 of 2 path\\(s\\) up, 3 required"):
        host.connector(use_multipath=True, min_paths=3).connect_volume(info)
    assert host.disks() == [] and host.maps() == []  # the two surfaced paths were removed again


def test_wrong_wwn_is_refused_and_removed(host):
    hba = host.tree.add_hba(INI_A)
    host.tree.add_rport(hba, TA1, luns={1: VOL})
    with pytest.raises(DeviceMismatch) as e:
        host.connector().connect_volume({"target_wwn": TA1, "target_lun": 1, "wwn": naa_wwid(999)})
    assert e.value.found == VOL.wwid
    assert host.disks() == []  # the disk our scan surfaced is gone again


def test_pre_existing_disk_of_another_lu_is_left_alone(host):
    hba = host.tree.add_hba(INI_A)
    host.tree.add_rport(hba, TA1, luns={1: VOL}, scan=True)  # surfaced at login, before us
    with pytest.raises(DeviceMismatch):
        host.connector().connect_volume({"target_wwn": TA1, "target_lun": 1, "wwn": naa_wwid(999)})
    assert host.disks() == ["sda"] and host.scans() == []


def test_disconnect_refuses_another_volumes_device(host):
    hba = host.tree.add_hba(INI_A)
    host.tree.add_rport(hba, TA1, luns={1: VOL, 2: OTHER})
    conn = host.connector()
    dev1 = conn.connect_volume({"target_wwn": TA1, "target_lun": 1})
    dev2 = conn.connect_volume({"target_wwn": TA1, "target_lun": 2})
    with pytest.raises(DeviceMismatch):
        conn.disconnect_volume({"target_wwn": TA1, "target_lun": 1}, dev2)
    assert host.disks() == ["sda", "sdb"]
    # a stale WWN in the info for LUN 1: the disk there is another LU's and stays
    conn.disconnect_volume({"target_wwn": TA1, "target_lun": 1, "wwn": naa_wwid(555)})
    assert host.disks() == ["sda", "sdb"]
    conn.disconnect_volume({"target_wwn": TA1, "target_lun": 1}, dev1.to_dict())
    assert host.disks() == ["sdb"]


def test_flush_failure_keeps_the_disk_unless_forced(host):
    hba = host.tree.add_hba(INI_A)
    host.tree.add_rport(hba, TA1, luns={1: VOL})
    conn = host.connector()
    info = {"target_wwn": TA1, "target_lun": 1}
    dev = conn.connect_volume(info)
    host.kernel.fail_flush.add("sda")
    with pytest.raises(CommandFailed):
        conn.disconnect_volume(info, dev)
    assert host.disks() == ["sda"]
    with pytest.raises(DetachIncomplete) as e:
        conn.disconnect_volume(info, dev, force=True)
    assert "flush /dev/sda" in str(e.value)
    assert host.disks() == []


def test_busy_map_is_kept_unless_forced(host):
    two_fabrics(host)
    conn = host.connector(use_multipath=True)
    info = vector("NetApp ONTAP FC")
    dev = conn.connect_volume(info)
    host.kernel.open_maps.add(VOL.wwid)
    t0 = time.monotonic()
    with pytest.raises(DeviceBusy):
        conn.disconnect_volume(info, dev)
    assert time.monotonic() - t0 < 2  # retried only for flush_timeout
    assert host.maps() == ["dm-0"] and len(host.disks()) == 4
    with pytest.raises(DetachIncomplete):
        conn.disconnect_volume(info, dev, force=True)
    assert host.maps() == [] and host.disks() == []


def test_map_briefly_in_use_is_retried(host):
    two_fabrics(host)
    conn = host.connector(use_multipath=True, flush_timeout=5)
    info = vector("NetApp ONTAP FC")
    dev = conn.connect_volume(info)
    host.kernel.open_maps = _BusyOnce({VOL.wwid})  # udev's probe after the last write holds the map for a moment
    conn.disconnect_volume(info, dev)
    assert host.maps() == [] and host.disks() == []
    assert len([a for a in host.kernel.executor.argvs(("multipath", "-f"))]) >= 2


def test_disconnect_finds_disks_by_path_when_the_port_left(host):
    hba = host.tree.add_hba(INI_A)
    r = host.tree.add_rport(hba, TA1, luns={1: VOL})
    conn = host.connector()
    info = {"target_wwn": TA1, "target_lun": 1}
    dev = conn.connect_volume(info)
    # the port logged out and its SCSI target is no longer listed by the transport
    host.tree.rport_attr(r, "scsi_target_id", "-1")
    host.tree.rport_attr(r, "port_state", "Not Present")
    os.unlink(host.tree.p("sys", "class", "fc_transport", f"target{hba}:0:0"))
    assert conn.get_volume_paths(info) == ["/dev/sda"]  # via /dev/disk/by-path
    conn.disconnect_volume(info, AttachedDevice("fibre_channel", path="/dev/sda", wwn=dev.wwn))
    assert host.disks() == []


def test_a_disk_that_appears_without_its_wwid_is_rescanned_until_it_has_one(host):
    """The kernel reads a disk's VPD pages when it adds it; a target answering that INQUIRY late
    leaves the disk without page 0x83 (seen on 6.12 under load, an FC re-attach). connect_volume
    rescans it and uses the WWID the rescan brings instead of failing the attach."""
    tree = host.tree

    def lose_identity(name):  # the INQUIRY for the VPD pages timed out
        ddir = os.path.realpath(tree.p("sys", "block", name, "device"))
        for attr in ("vpd_pg83", "wwid"):
            os.unlink(os.path.join(ddir, attr))

    rescans = []

    def read_identity_again(ddir):
        rescans.append(ddir)
        with open(os.path.join(ddir, "vpd_pg83"), "wb") as f:
            f.write(vpd_pg83(open(os.path.join(ddir, "lun_wwid")).read().strip()))

    lun = FakeLun(1, naa_wwid(78), size=32 << 20)
    host.tree.add_rport(host.tree.add_hba(INI_A), TA1, luns={1: lun})
    tree.add_hooks.insert(0, lose_identity)
    tree.rescan_hooks.append(read_identity_again)
    conn = host.connector()
    info = {"target_wwn": [TA1], "target_lun": 1}
    dev = conn.connect_volume(info)
    assert same_wwn(lun.wwid, dev.wwn or "") and len(rescans) == 1
    conn.disconnect_volume(info, dev)
    assert host.disks() == []


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("multipath", [False, True], ids=["single", "multipath"])
def test_extend(host, multipath):
    lun = FakeLun(1, naa_wwid(77), size=32 << 20)
    a = host.tree.add_hba(INI_A)
    for t in (TA1, TA2):
        host.tree.add_rport(a, t, luns={1: lun})
    conn = host.connector(use_multipath=multipath)
    info = {"target_wwn": [TA1, TA2], "target_lun": 1}
    dev = conn.connect_volume(info)
    lun.size = 48 << 20  # the array grew the LUN
    assert conn.extend_volume(info) == 48 << 20
    assert host.size(os.path.basename(dev.path or "")) == 48 << 20
    if multipath:
        assert ("multipathd", "resize", "map", lun.wwid) in host.kernel.executor.argvs(("multipathd",))
    conn.disconnect_volume(info, dev)
    with pytest.raises(DeviceNotFound):
        conn.extend_volume(info)


# ---------------------------------------------------------------------------------------------
def test_bad_info(host):
    host.tree.add_hba(INI_A)
    conn = host.connector()
    with pytest.raises(InvalidConnectionInfo) as e:
        conn.connect_volume({"target_wwn": [TA1, "zz:not:hex"], "target_lun": 1})
    assert e.value.field == "target_wwn[1]"
    with pytest.raises(InvalidConnectionInfo) as e:
        conn.connect_volume(vector("cinder fake FC driver (used by zone-manager tests)"))
    assert e.value.field == "target_wwn"
    with pytest.raises(InvalidConnectionInfo) as e:
        conn.connect_volume({"driver_volume_type": "iscsi", "data": {"target_portal": "1.2.3.4:3260",
                                                                      "target_iqn": "iqn.x:y", "target_lun": 1}})
    assert e.value.field == "driver_volume_type"
    assert host.scans() == []


def test_typed_info_and_target_luns(host):
    hba = host.tree.add_hba(INI_A)
    host.tree.add_rport(hba, TA1, luns={4: FakeLun(4, naa_wwid(4))})
    host.tree.add_rport(hba, TA2, luns={6: FakeLun(6, naa_wwid(4))})  # same LU, another LUN number there
    info = FcInfo(target_wwns=(TA1, TA2), target_luns=(4, 6))
    dev = host.connector(use_multipath=True).connect_volume(info)
    assert sorted(d for _, d in host.scans()) == ["0 0 4", "0 1 6"] and len(dev.paths) == 2
