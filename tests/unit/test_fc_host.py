"""The FC host layer (blocklink.initiator.host.fc) on fake sysfs trees of qla2xxx, lpfc and fcoe hosts."""

from __future__ import annotations

import os

import pytest

from blocklink.initiator.host import fc
from blocklink.initiator.properties import read_fc_ports
from blocklink.testing.hosttree import FakeLun, naa_wwid
from blocklink.testing.hosttree_fc import FakeFcTree

T1 = "500a098280feeba5"
T2 = "500a098290feeba5"


@pytest.fixture
def tree(tmp_path) -> FakeFcTree:
    return FakeFcTree(str(tmp_path))


def scan_writes(tree: FakeFcTree):
    return [(p.split(os.sep)[-2], d) for p, d in tree.writes if p.endswith("/scan")]


def test_hbas_of_three_drivers(tree):
    qla = tree.add_hba("21000024ff406cc3", driver="qla2xxx", pci="0000:05:00.0")
    lpfc = tree.add_hba("10000090FA1B2C3D".lower(), driver="lpfc", pci="0000:04:00.1", state="Linkdown")
    fcoe = tree.add_hba("2000020000000f01", driver="fcoe", pci="0000:00:04.0", iface="eth0")
    hosts = {h.host: h for h in fc.fc_hosts(tree.paths)}
    assert sorted(hosts) == [qla, lpfc, fcoe]
    assert hosts[qla].wwpn == "21000024ff406cc3" and hosts[qla].online
    assert hosts[lpfc].state == "Linkdown" and not hosts[lpfc].online
    assert hosts[fcoe].wwnn == "1000020000000f01"  # fcoe: WWNN = 0x1000 + MAC, WWPN = 0x2000 + MAC
    assert hosts[qla].device_path.endswith("/pci0000:00/0000:00:03.0/0000:05:00.0/host0/fc_host/host0")
    assert "/virtio" in hosts[fcoe].device_path and "/net/eth0/ctlr_0/host2/" in hosts[fcoe].device_path
    assert [fc.pci_address(hosts[h]) for h in (qla, lpfc, fcoe)] == ["0000:05:00.0", "0000:04:00.1", "0000:00:04.0"]
    # get_connector_properties' reader agrees: online ports only
    assert [(h, p) for h, p, _ in read_fc_ports(tree.paths)] == [("host0", "21000024ff406cc3"),
                                                                   ("host2", "2000020000000f01")]


def test_remote_ports_roles_and_target_ids(tree):
    h = tree.add_hba("2000020000000f01", driver="fcoe", pci="0000:00:04.0")
    tree.add_rport(h, "2000020000000f02", roles="FCP Initiator")  # another initiator on the segment
    tree.add_rport(h, "2000020000000f03", roles="FCP Target, FCP Initiator")
    tree.add_rport(h, "2000020000000f04", roles="FCP Target", state="Blocked")
    ports = fc.remote_ports(tree.paths, h)
    assert [p.name for p in ports] == [f"rport-{h}:0-0", f"rport-{h}:0-1", f"rport-{h}:0-2"]
    ini, tgt, blocked = ports
    assert ini.target_id is None and not ini.is_target and ini.roles == ("FCP Initiator",)
    assert tgt.is_target and tgt.target_id == 0 and tgt.online and tgt.roles == ("FCP Target", "FCP Initiator")
    assert blocked.is_target and not blocked.online and blocked.target_id == 1
    # upper case and colons in the asked-for WWPN
    assert fc.remote_ports(tree.paths, wwpn="20:00:02:00:00:00:0F:03") == [tgt]
    assert fc.remote_ports(tree.paths, host=h + 1) == []


def test_scan_lun_is_targeted_and_synchronous(tree):
    h = tree.add_hba("21000024ff406cc3")
    lun1, lun2 = FakeLun(1, naa_wwid(1)), FakeLun(2, naa_wwid(2))
    tree.add_rport(h, T1, luns={1: lun1, 2: lun2})
    r2 = tree.add_rport(h, T2, luns={1: lun1, 2: lun2})
    rp = fc.read_remote_port(tree.paths, os.path.basename(r2))
    assert rp is not None and rp.target_id == 1
    fc.scan_lun(tree.paths, rp, 2)
    assert scan_writes(tree) == [(f"host{h}", "0 1 2")]
    devs = fc.lun_devices(tree.paths, h, T2, 2)
    assert [str(d.hctl) for d in devs] == [f"{h}:0:1:2"] and devs[0].name == "sda"
    assert fc.lun_devices(tree.paths, h, T1, 2) == [] and fc.lun_devices(tree.paths, h, T2, 1) == []
    # the FC transport now has the SCSI target, with the port's name
    assert fc.transport_targets(tree.paths) == {(h, 0, 1): T2}
    links = fc.by_path_devices(tree.paths, T2, 2)
    assert links == {"sda": f"/dev/disk/by-path/pci-0000:05:00.0-fc-0x{T2}-lun-2"}


def test_scan_lun_refuses_a_port_without_target_id(tree):
    h = tree.add_hba("21000024ff406cc3")
    tree.add_rport(h, T1, roles="FCP Initiator")
    with pytest.raises(ValueError):
        fc.scan_lun(tree.paths, fc.remote_ports(tree.paths, h)[0], 0)
    assert scan_writes(tree) == []


def test_target_addresses_from_rports_and_transport(tree):
    h = tree.add_hba("21000024ff406cc3")
    r = tree.add_rport(h, T1, luns={0: FakeLun(0, naa_wwid(9))}, scan=True)
    assert fc.target_addresses(tree.paths, h, T1.upper()) == [(0, 0)]
    # a port that lost its target id (logged out) is still found through the SCSI target it left
    tree.rport_attr(r, "scsi_target_id", "-1")
    assert fc.target_addresses(tree.paths, h, T1) == [(0, 0)]
    assert fc.target_addresses(tree.paths, h, T2) == []


@pytest.mark.parametrize("lun,name", [(0, "lun-0"), (255, "lun-255"), (256, "lun-0x0100000000000000"),
                                      (300, "lun-0x012c000000000000"),  # LIO's LUN 300, seen in the guest
                                      (16684, "lun-0x412c000000000000"),  # SAM2 300: flat space 0x4000 + 300
                                      (65536 + 5, "lun-0x0005000100000000")])
def test_by_path_lun_numbers(lun, name):
    assert fc.by_path_lun(lun) == name


def test_by_path_names_per_layout(tree):
    qla = tree.add_hba("21000024ff406cc3", driver="qla2xxx", pci="0000:05:00.0")
    fcoe = tree.add_hba("2000020000000f01", driver="fcoe", pci="0000:00:04.0")
    arm = tree.add_hba("21000024ff406cc4", driver="platform", pci="0000:01:00.0")
    names = {h.host: fc.by_path_name(h, "20:00:02:00:00:00:0F:02", 0) for h in fc.fc_hosts(tree.paths)}
    assert names[qla] == "pci-0000:05:00.0-fc-0x2000020000000f02-lun-0"
    # what udev made in the guest for FCoE over virtio-net: the NIC's PCI function
    assert names[fcoe] == "pci-0000:00:04.0-fc-0x2000020000000f02-lun-0"
    assert names[arm] == "platform-1f0000000.pcie-pci-0000:01:00.0-fc-0x2000020000000f02-lun-0"


def test_by_path_devices_ignores_other_luns_and_stale_links(tree):
    h = tree.add_hba("21000024ff406cc3")
    lun = FakeLun(3, naa_wwid(3))
    lun30 = FakeLun(30, naa_wwid(30))
    tree.add_rport(h, T1, luns={3: lun, 30: lun30}, scan=True)
    assert sorted(fc.by_path_devices(tree.paths, T1, 3)) == ["sda"]
    assert sorted(fc.by_path_devices(tree.paths, T1, 30)) == ["sdb"]
    # a link whose disk is gone does not count
    os.symlink("../../sdz", tree.p("dev", "disk", "by-path", f"pci-0000:06:00.0-fc-0x{T1}-lun-3"))
    assert sorted(fc.by_path_devices(tree.paths, T1, 3)) == ["sda"]
