"""The <disk> model, the XML builder and the connection-info adapter; every XML checked with libvirt's grammar.

Property tests generate disks (and connection infos with options) at random: whatever the model
accepts must format to XML that libvirt's RelaxNG grammar accepts and that parses back to the
same values; whatever it refuses must raise a typed error naming a field.
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from typing import Any, Dict, Optional

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from blocklink.connection import AttachedDevice, IscsiInfo, RbdInfo
from blocklink.errors import InvalidConnectionInfo
from blocklink.hypervisor import (BlockSource, DiskAuth, DiskConfig, DiskDriver, DiskEncryption, DriveAddress,
                                  FileSource, InvalidDiskConfig, IoTune, NetworkHost, NetworkSource, PciAddress,
                                  disk_config, disk_xml, format_disk)
from blocklink.hypervisor.disk import IOTUNE_ORDER, NOVA_IOTUNE_ORDER
from blocklink.hypervisor.names import device_name, device_prefix
from blocklink.hypervisor.schema import SchemaError, validate_disk_xml

UUID = "5fe62cc7-0392-4a32-8466-081ce0ea970f"
UUID2 = "2a0a0d6c-babf-454d-b93e-9ac9957b95e0"


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def valid(cfg: DiskConfig) -> ET.Element:
    xml = format_disk(cfg)
    validate_disk_xml(xml)
    return parse(xml)


# ---------------------------------------------------------------------------------------------
# the builder
# ---------------------------------------------------------------------------------------------

def test_block_disk_everything() -> None:
    cfg = DiskConfig(
        source=BlockSource("/dev/disk/by-id/wwn-0x6001405abc"), target_dev="/dev/vdc", bus="virtio",
        driver=DiskDriver(cache="none", io="native", discard="unmap"), alias="ua-vol1", serial="vol 1.2+3_4-5",
        iotune=IoTune(total_bytes_sec=10 << 20, total_iops_sec=500, total_iops_sec_max=1000, size_iops_sec=16),
        logical_block_size=512, physical_block_size=4096, readonly=True, shareable=True, boot_order=2,
        address=PciAddress(0, 0, 7, 0), encryption=DiskEncryption(UUID))
    root = valid(cfg)
    assert root.attrib == {"type": "block", "device": "disk"}
    assert [c.tag for c in root] == ["driver", "alias", "source", "target", "serial", "iotune", "blockio",
                                     "readonly", "shareable", "boot", "address", "encryption"]
    assert root.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none", "io": "native",  # type: ignore[union-attr]
                                          "discard": "unmap"}
    assert root.find("target").attrib == {"dev": "vdc", "bus": "virtio"}  # type: ignore[union-attr]
    assert [(c.tag, c.text) for c in root.find("iotune")] == [  # type: ignore[union-attr]
        ("total_bytes_sec", str(10 << 20)), ("total_iops_sec", "500"), ("total_iops_sec_max", "1000"),
        ("size_iops_sec", "16")]
    assert root.find("encryption/secret").attrib == {"type": "passphrase", "uuid": UUID}  # type: ignore[union-attr]
    assert root.find("address").attrib == {"type": "pci", "domain": "0", "bus": "0", "slot": "7", "function": "0"}  # type: ignore[union-attr]


def test_network_rbd_disk_every_monitor_ipv6_bare() -> None:
    cfg = DiskConfig(
        source=NetworkSource("rbd", "volumes/volume-1", (NetworkHost("::1", 6789), NetworkHost("10.0.0.2", 6789),
                                                           NetworkHost("mon.example.com")),
                             config_file="/etc/ceph/ceph.conf"),
        target_dev="sdb", bus="scsi", auth=DiskAuth("cinder", "ceph", secret_uuid=UUID))
    root = valid(cfg)
    assert [h.attrib for h in root.findall("source/host")] == [
        {"name": "::1", "port": "6789"}, {"name": "10.0.0.2", "port": "6789"}, {"name": "mon.example.com"}]
    assert root.find("source/config").get("file") == "/etc/ceph/ceph.conf"  # type: ignore[union-attr]
    assert root.find("auth").get("username") == "cinder"  # type: ignore[union-attr]
    assert root.find("auth/secret").attrib == {"type": "ceph", "uuid": UUID}  # type: ignore[union-attr]


def test_network_iscsi_disk_with_chap_usage_and_initiator() -> None:
    cfg = DiskConfig(
        source=NetworkSource("iscsi", "iqn.2010-10.org.openstack:volume-1/1", (NetworkHost("127.0.0.1", 3260),),
                             initiator_iqn="iqn.1994-05.com.example:host1"),
        target_dev="sda", bus="scsi", device="lun", auth=DiskAuth("chapuser", "iscsi", secret_usage="blocklink vol1"))
    root = valid(cfg)
    assert root.get("device") == "lun"
    assert root.find("source").attrib == {"protocol": "iscsi", "name": "iqn.2010-10.org.openstack:volume-1/1"}  # type: ignore[union-attr]
    assert root.find("source/initiator/iqn").get("name") == "iqn.1994-05.com.example:host1"  # type: ignore[union-attr]
    assert root.find("auth/secret").attrib == {"type": "iscsi", "usage": "blocklink vol1"}  # type: ignore[union-attr]


def test_no_driver_element_when_all_unset() -> None:
    root = valid(DiskConfig(FileSource("/var/lib/x.img"), "vdb", driver=DiskDriver(None, None, None)))
    assert root.find("driver") is None


@pytest.mark.parametrize("kwargs,field", [
    ({"target_dev": "vd"}, "target_dev"),
    ({"target_dev": "/dev/sda1/x"}, "target_dev"),
    ({"target_dev": "nvme0n1"}, "target_dev"),
    ({"bus": "bogus"}, "bus"),
    ({"device": "floppy"}, "device"),
    ({"serial": "a<b"}, "serial"),
    ({"serial": "x\"y"}, "serial"),
    ({"serial": ""}, "serial"),
    ({"alias": "virtio-disk0"}, "alias"),
    ({"alias": "ua-a b"}, "alias"),
    ({"logical_block_size": 1000}, "logical_block_size"),
    ({"logical_block_size": 256}, "logical_block_size"),
    ({"logical_block_size": 4096, "physical_block_size": 512}, "physical_block_size"),
    ({"boot_order": 0}, "boot_order"),
    ({"address": DriveAddress(unit=1)}, "address"),  # drive address on the virtio bus
    ({"auth": DiskAuth("u", "ceph", secret_uuid=UUID)}, "auth"),  # a block disk does not log in
])
def test_model_refusals_name_the_field(kwargs: Dict[str, Any], field: str) -> None:
    base: Dict[str, Any] = {"source": BlockSource("/dev/sdb"), "target_dev": "vdb"}
    base.update(kwargs)
    with pytest.raises(InvalidDiskConfig) as ei:
        DiskConfig(**base)
    assert ei.value.field == field


@pytest.mark.parametrize("make,field", [
    (lambda: DiskDriver(cache="bogus"), "driver.cache"),
    (lambda: DiskDriver(cache="writeback", io="native"), "driver.io"),
    (lambda: DiskDriver(discard="trim"), "driver.discard"),
    (lambda: DiskDriver(format="vhdx"), "driver.format"),
    (lambda: BlockSource("dev/sdb"), "source.dev"),
    (lambda: FileSource("/tmp/a\nb"), "source.file"),
    (lambda: NetworkHost("bad_host!"), "source.host.name"),
    (lambda: NetworkHost("::1", 70000), "source.host.port"),
    (lambda: NetworkSource("rbd"), "source.name"),
    (lambda: NetworkSource("iscsi", "iqn.x:y/0"), "source.host"),
    (lambda: NetworkSource("nfs2", "x"), "source.protocol"),
    (lambda: NetworkSource("rbd", "p/i", initiator_iqn="iqn.x:y"), "source.initiator"),
    (lambda: NetworkSource("iscsi", "p/i", (NetworkHost("h"),), config_file="/c"), "source.config"),
    (lambda: DiskAuth("user.name", "ceph", secret_uuid=UUID), "auth.username"),
    (lambda: DiskAuth("u<1", "iscsi", secret_uuid=UUID), "auth.username"),
    (lambda: DiskAuth("u", "ceph"), "auth.secret"),
    (lambda: DiskAuth("u", "ceph", secret_uuid=UUID, secret_usage="x"), "auth.secret"),
    (lambda: DiskAuth("u", "ceph", secret_uuid="not-a-uuid"), "auth.secret.uuid"),
    (lambda: DiskAuth("u", "volume", secret_uuid=UUID), "auth.secret.type"),
    (lambda: DiskEncryption("nope"), "encryption.secret.uuid"),
    (lambda: PciAddress(slot=40), "address.slot"),
    (lambda: IoTune(total_bytes_sec=-1), "iotune.total_bytes_sec"),
    (lambda: IoTune(read_iops_sec=1, total_iops_sec=1), "iotune.total_iops_sec"),
])
def test_part_refusals_name_the_field(make: Any, field: str) -> None:
    with pytest.raises(InvalidDiskConfig) as ei:
        make()
    assert ei.value.field == field


def test_secret_type_must_match_protocol() -> None:
    with pytest.raises(InvalidDiskConfig) as ei:
        DiskConfig(NetworkSource("rbd", "p/i"), "vdb", auth=DiskAuth("u", "iscsi", secret_uuid=UUID))
    assert ei.value.field == "auth.secret.type"


def test_lun_refuses_serial_and_block_sizes_and_file_sources() -> None:
    for kw, field in (({"serial": "x"}, "serial"), ({"logical_block_size": 512}, "logical_block_size")):
        with pytest.raises(InvalidDiskConfig) as ei:
            DiskConfig(BlockSource("/dev/sdb"), "sda", bus="scsi", device="lun", **kw)  # type: ignore[arg-type]
        assert ei.value.field == field
    with pytest.raises(InvalidDiskConfig):
        DiskConfig(FileSource("/x"), "sda", bus="scsi", device="lun")


# ---------------------------------------------------------------------------------------------
# escaping: values with markup characters reach libvirt as data, never as markup
# ---------------------------------------------------------------------------------------------

NASTY = "/var/lib/vol<1>&\"2\"'3'&amp;]]>"


def test_file_path_with_markup_is_escaped() -> None:
    xml = format_disk(DiskConfig(FileSource(NASTY), "vdb"))
    validate_disk_xml(xml)
    assert "<1>" not in xml and "&amp;amp;" in xml and "&lt;1&gt;" in xml and "]]&gt;" in xml
    assert parse(xml).find("source").get("file") == NASTY  # type: ignore[union-attr]
    assert [c.tag for c in parse(xml)] == ["driver", "source", "target"]  # nothing injected


def test_device_path_with_markup_from_connection_info() -> None:
    xml = disk_xml({"driver_volume_type": "local", "data": {"device_path": NASTY}}, target_dev="vdb")
    validate_disk_xml(xml)
    root = parse(xml)
    assert root.find("source").get("dev") == NASTY  # type: ignore[union-attr]
    assert [c.tag for c in root] == ["driver", "source", "target"]


def test_markup_in_serial_volume_id_and_names_is_refused_not_escaped_into_invalid_xml() -> None:
    info = {"driver_volume_type": "local", "data": {"device_path": "/dev/sdb", "volume_id": "v\"><evil/>"}}
    with pytest.raises(InvalidDiskConfig) as ei:
        disk_xml(info, target_dev="vdb")  # serial defaults to the volume id: libvirt's grammar refuses it
    assert ei.value.field == "serial"
    root = parse(disk_xml(info, target_dev="vdb", serial=None))  # alias is dropped, not escaped into one
    assert root.find("alias") is None and root.find("evil") is None
    with pytest.raises(InvalidDiskConfig):
        disk_xml(info, target_dev="vdb", serial="a&b")
    with pytest.raises(InvalidConnectionInfo) as ci:  # pool/image names never carry markup
        RbdInfo.from_dict({"name": "volumes/vol\"1"})
    assert ci.value.field == "name"
    with pytest.raises(InvalidConnectionInfo) as ci:
        IscsiInfo.from_dict({"target_portal": "1.2.3.4:3260", "target_iqn": "iqn.x:<y>", "target_lun": 0})
    assert ci.value.field == "target_iqn"
    with pytest.raises(InvalidDiskConfig):
        disk_xml({"driver_volume_type": "iscsi", "data": {
            "target_portal": "1.2.3.4:3260", "target_iqn": "iqn.x:y", "target_lun": 0, "auth_method": "CHAP",
            "auth_username": "u'<x>", "auth_password": "p" * 16}}, target_dev="sda", bus="scsi", secret_uuid=UUID)


def test_control_characters_refused() -> None:
    with pytest.raises(InvalidDiskConfig) as ei:
        disk_xml({"driver_volume_type": "local", "data": {"device_path": "/dev/sd\x00b"}}, target_dev="vdb")
    assert ei.value.field == "source.dev"


# ---------------------------------------------------------------------------------------------
# the adapter: connection info (+ device) -> disk
# ---------------------------------------------------------------------------------------------

ISCSI = {"driver_volume_type": "iscsi", "data": {
    "target_portal": "[2001:db8::1]:3261", "target_iqn": "iqn.2010-10.org.openstack:volume-1", "target_lun": 3,
    "target_portals": ["[2001:db8::1]:3261", "10.0.0.2:3260"], "target_iqns": ["iqn.2010-10.org.openstack:volume-1"] * 2,
    "target_luns": [3, 3], "auth_method": "CHAP", "auth_username": "chap-user", "auth_password": "sekrit-sekrit-1",
    "volume_id": "0a1b2c3d-0000-4000-8000-000000000001", "access_mode": "ro", "discard": True,
    "qos_specs": {"read_iops_sec": "100", "write_iops_sec": "50"}}, "serial": "0a1b2c3d-0000-4000-8000-000000000001"}
RBD = {"driver_volume_type": "rbd", "data": {
    "name": "volumes/volume-2", "hosts": ["::1", "127.0.0.1"], "ports": ["6789", "6790"], "auth_enabled": True,
    "auth_username": "cinder", "secret_type": "ceph", "secret_uuid": UUID, "volume_id": "vol2", "discard": True},
    "multiattach": True}


def test_host_attached_iscsi_block_device() -> None:
    dev = AttachedDevice("iscsi", path="/dev/disk/by-id/dm-uuid-mpath-3600")
    root = parse(disk_xml(ISCSI, dev, target_dev="vdb"))
    assert root.get("type") == "block" and root.find("source").get("dev") == dev.path  # type: ignore[union-attr]
    assert root.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none", "io": "native",  # type: ignore[union-attr]
                                          "discard": "unmap"}
    assert root.find("readonly") is not None and root.find("auth") is None
    assert root.find("serial").text == ISCSI["serial"]  # type: ignore[union-attr]
    assert root.find("alias").get("name") == f"ua-{ISCSI['serial']}"  # type: ignore[union-attr]
    assert [(c.tag, c.text) for c in root.find("iotune")] == [("read_iops_sec", "100"), ("write_iops_sec", "50")]  # type: ignore[union-attr]


def test_userspace_file_device_and_dict_device() -> None:
    root = parse(disk_xml(ISCSI, {"type": "file", "path": "/run/qsd/vol1"}, target_dev="vdb"))
    assert root.get("type") == "file" and root.find("source").get("file") == "/run/qsd/vol1"  # type: ignore[union-attr]
    assert root.find("driver").get("io") is None  # type: ignore[union-attr]
    with pytest.raises(InvalidConnectionInfo) as ei:
        disk_xml(RBD, AttachedDevice("rbd", handle=object(), type="handle"), target_dev="vdb")
    assert ei.value.field == "device"


def test_qemu_native_iscsi_first_portal_and_chap_secret() -> None:
    root = parse(disk_xml(ISCSI, target_dev="sdb", bus="scsi", secret_uuid=UUID, initiator_iqn="iqn.2004-10.x:h"))
    assert root.get("type") == "network"
    assert root.find("source").attrib == {"protocol": "iscsi", "name": "iqn.2010-10.org.openstack:volume-1/3"}  # type: ignore[union-attr]
    assert [h.attrib for h in root.findall("source/host")] == [{"name": "2001:db8::1", "port": "3261"}]
    assert root.find("auth").get("username") == "chap-user"  # type: ignore[union-attr]
    assert root.find("auth/secret").attrib == {"type": "iscsi", "uuid": UUID}  # type: ignore[union-attr]
    assert "sekrit" not in disk_xml(ISCSI, target_dev="sdb", bus="scsi", secret_uuid=UUID)
    with pytest.raises(InvalidConnectionInfo) as ei:
        disk_xml(ISCSI, target_dev="sdb", bus="scsi")  # CHAP but no secret to point at
    assert ei.value.field == "secret_uuid"
    mutual = {**ISCSI, "data": {**ISCSI["data"], "auth_username_in": "t", "auth_password_in": "x" * 16}}
    with pytest.raises(InvalidConnectionInfo) as ei:
        disk_xml(mutual, target_dev="sdb", bus="scsi", secret_uuid=UUID)
    assert ei.value.field == "data.auth_username_in"


def test_qemu_native_rbd_every_monitor_auth_shareable() -> None:
    for info in (RBD, RbdInfo.from_dict(RBD)):
        root = parse(disk_xml(info, target_dev="vdc"))
        assert root.get("type") == "network"
        assert root.find("source").attrib == {"protocol": "rbd", "name": "volumes/volume-2"}  # type: ignore[union-attr]
        assert [h.attrib for h in root.findall("source/host")] == [
            {"name": "::1", "port": "6789"}, {"name": "127.0.0.1", "port": "6790"}]
        assert root.find("auth/secret").attrib == {"type": "ceph", "uuid": UUID}  # type: ignore[union-attr]
        assert root.find("driver").get("discard") == "unmap"  # type: ignore[union-attr]
    assert parse(disk_xml(RBD, target_dev="vdc")).find("shareable") is not None  # multiattach (envelope)
    no_uuid = {**RBD, "data": {**RBD["data"], "secret_uuid": None}}
    with pytest.raises(InvalidConnectionInfo) as ei:
        disk_xml(no_uuid, target_dev="vdc")
    assert ei.value.field == "data.secret_uuid"
    assert parse(disk_xml(no_uuid, target_dev="vdc", rbd_secret_uuid=UUID2)).find("auth/secret").get("uuid") == UUID2  # type: ignore[union-attr]


def test_fc_and_nvme_need_a_host_device() -> None:
    for info in ({"driver_volume_type": "fibre_channel", "data": {"target_wwn": "50014380186af83c", "target_lun": 1}},
                 {"driver_volume_type": "nvmeof", "data": {"target_nqn": "nqn.2014-08.org:x",
                                                           "portals": [["127.0.0.1", 4420, "tcp"]]}}):
        with pytest.raises(InvalidConnectionInfo) as ei:
            disk_xml(info, target_dev="vdb")
        assert ei.value.field == "device"
        root = parse(disk_xml(info, AttachedDevice("x", path="/dev/sdq"), target_dev="vdb"))
        # Nova: io='native' in its FC driver, none in its NVMe driver (QEMU's default aio)
        expected = "native" if info["driver_volume_type"] == "fibre_channel" else None
        assert root.find("driver").get("io") == expected  # type: ignore[union-attr]


def test_options_override_and_auto() -> None:
    root = parse(disk_xml(ISCSI, AttachedDevice("iscsi", path="/dev/sdb"), target_dev="sda", bus="scsi",
                          cache="writeback", discard=None, serial="s1", alias=None, readonly=False,
                          shareable=False, qos_specs=None, unit=4, boot_order=1, logical_block_size=4096,
                          encryption_secret_uuid=UUID2))
    assert root.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "writeback"}  # type: ignore[union-attr]
    assert root.find("shareable") is None
    root = parse(disk_xml(ISCSI, AttachedDevice("iscsi", path="/dev/sdb"), target_dev="sda", bus="scsi",
                          cache="writeback", discard=None, serial="s1", alias=None, readonly=False,
                          shareable=True, qos_specs=None, unit=4, boot_order=1, logical_block_size=4096,
                          encryption_secret_uuid=UUID2))
    # Nova's rule: a shareable (multiattach) disk never gets a host cache, whatever was asked
    assert root.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none", "io": "native"}  # type: ignore[union-attr]
    assert root.find("alias") is None and root.find("readonly") is None and root.find("iotune") is None
    assert root.find("shareable") is not None and root.find("serial").text == "s1"  # type: ignore[union-attr]
    assert root.find("address").attrib == {"type": "drive", "controller": "0", "unit": "4"}  # type: ignore[union-attr]
    assert root.find("blockio").attrib == {"logical_block_size": "4096"}  # type: ignore[union-attr]
    assert root.find("encryption/secret").get("uuid") == UUID2  # type: ignore[union-attr]
    with pytest.raises(InvalidDiskConfig) as ei:
        disk_xml(ISCSI, AttachedDevice("iscsi", path="/dev/sdb"), target_dev="vdb", unit=1)
    assert ei.value.field == "unit"
    lun = parse(disk_xml(ISCSI, AttachedDevice("iscsi", path="/dev/sdb"), target_dev="sda", bus="scsi",
                         device_type="lun"))
    assert lun.find("serial") is None and lun.find("blockio") is None


def test_invalid_inputs_are_typed_errors() -> None:
    for bad, field in (("nope", "connection_info"), ({"data": []}, "data"),
                       ({"driver_volume_type": 5, "data": {}}, "driver_volume_type"),
                       ({"data": {"device_path": 7}}, "data.device_path"),
                       ({"data": {"device_path": "/x", "access_mode": "rwx"}}, "data.access_mode"),
                       ({"data": {"device_path": "/x", "logical_block_size": "big"}}, "data.logical_block_size"),
                       ({"driver_volume_type": "iscsi", "data": {"target_portal": "1.2.3.4"}}, "data.target_iqn")):
        with pytest.raises(InvalidConnectionInfo) as ei:
            disk_xml(bad, target_dev="vdb")  # type: ignore[arg-type]
        assert ei.value.field == field, (bad, ei.value)


def test_libxml2_rejects_some_iotune_orders() -> None:
    """Why <iotune> follows libvirt's order: libxml2 refuses Nova's order for a set the grammar allows."""
    base = ('<disk type="block" device="disk"><source dev="/dev/sdz"/><target dev="vdb" bus="virtio"/>'
            '<iotune>{}</iotune></disk>')
    keys = ["read_bytes_sec", "read_iops_sec", "write_bytes_sec", "write_iops_sec"]
    nova = "".join(f"<{k}>1</{k}>" for k in sorted(keys, key=NOVA_IOTUNE_ORDER.index))
    ours = "".join(f"<{k}>1</{k}>" for k in sorted(keys, key=IOTUNE_ORDER.index))
    with pytest.raises(SchemaError):
        validate_disk_xml(base.format(nova))
    validate_disk_xml(base.format(ours))


def _allowed(combo: Any) -> bool:
    """libvirt: total_X excludes read_X/write_X; QEMU: a burst X_max needs its base X."""
    s = set(combo)
    for kind in ("bytes", "iops"):
        for suffix in ("", "_max"):
            if f"total_{kind}_sec{suffix}" in s and s & {f"read_{kind}_sec{suffix}", f"write_{kind}_sec{suffix}"}:
                return False
    return all(k[:-len("_max")] in s for k in s if k.endswith("_max"))


def test_every_iotune_combination_the_model_accepts_passes_the_schema() -> None:
    accepted = 0
    for r in range(1, len(IOTUNE_ORDER) + 1):
        for combo in itertools.combinations(IOTUNE_ORDER, r):
            try:
                tune = IoTune(**{k: 1 for k in combo})
            except InvalidDiskConfig:
                assert not _allowed(combo), combo
                continue
            assert _allowed(combo), combo
            accepted += 1
            valid(DiskConfig(BlockSource("/dev/sdb"), "vdb", iotune=tune))
    assert accepted == 11 * 11 * 2 - 1  # per kind 11 base/burst sets, x2 for size_iops_sec, minus the empty set


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------

_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f")
paths = st.text(_PRINTABLE, min_size=1, max_size=40).map(lambda s: "/" + s)
uuids = st.uuids().map(str)
ceph_names = st.text("abcdefghijklmnopqrstuvwxyzABCDEF0123456789_.-+=~", min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))
generic_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_+-", min_size=1, max_size=16)
serials = st.text("abcdefABCDEF0123456789_.+- ", min_size=1, max_size=20)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
dns = st.from_regex(r"\A[a-z][a-z0-9\-]{0,10}(\.[a-z][a-z0-9\-]{0,10}){0,2}\Z")
hosts = st.builds(NetworkHost, st.one_of(ipv4, ipv6, dns), st.one_of(st.none(), st.integers(0, 65535)))
iotune_values = st.dictionaries(st.sampled_from(IOTUNE_ORDER), st.integers(0, 10 ** 12), max_size=6)
pow2 = st.sampled_from([512, 1024, 4096, 65536])
VALID_TUNE_SETS = [c for r in range(1, len(IOTUNE_ORDER) + 1) for c in itertools.combinations(IOTUNE_ORDER, r)
                   if _allowed(c)]


@st.composite
def iotunes(draw: Any) -> Optional[IoTune]:
    """A valid <iotune>: an allowed key set, bursts at or above their base."""
    if draw(st.booleans()):
        return None
    keys = draw(st.sampled_from(VALID_TUNE_SETS))
    values = {k: draw(st.integers(1, 10 ** 12)) for k in keys if not k.endswith("_max")}
    values.update({k: values[k[:-len("_max")]] + draw(st.integers(0, 10 ** 9)) for k in keys if k.endswith("_max")})
    return IoTune(**values)


@st.composite
def disks(draw: Any) -> DiskConfig:
    kind = draw(st.sampled_from(["block", "file", "rbd", "iscsi"]))
    auth = None
    if kind == "block":
        source: Any = BlockSource(draw(paths))
    elif kind == "file":
        source = FileSource(draw(paths))
    elif kind == "rbd":
        source = NetworkSource("rbd", f"{draw(ceph_names)}/{draw(ceph_names)}", tuple(draw(st.lists(hosts, max_size=4))),
                               config_file=draw(st.one_of(st.none(), paths)))
        if draw(st.booleans()):
            auth = DiskAuth(draw(generic_names), "ceph", secret_uuid=draw(uuids))
    else:
        source = NetworkSource("iscsi", f"iqn.2010-10.org.x:{draw(ceph_names)}/{draw(st.integers(0, 255))}",
                               (draw(hosts),), initiator_iqn=draw(st.one_of(st.none(), st.just("iqn.1994-05.x:h1"))))
        if draw(st.booleans()):
            by_uuid = draw(st.booleans())
            auth = DiskAuth(draw(generic_names), "iscsi", secret_uuid=draw(uuids) if by_uuid else None,
                            secret_usage=None if by_uuid else draw(st.text(_PRINTABLE, min_size=1, max_size=20).filter(
                                lambda s: "/" not in s)))
    bus = draw(st.sampled_from(["virtio", "scsi", "sata", "ide", "usb"]))
    device = draw(st.sampled_from(["disk", "disk", "lun", "cdrom"] if kind in ("block", "iscsi") else ["disk", "cdrom"]))
    if device == "lun":
        bus = "scsi"
    prefix = device_prefix(bus)
    cache = draw(st.sampled_from([None, "none", "writeback", "directsync", "unsafe"]))
    io = draw(st.sampled_from([None, "threads", "native"] if cache in ("none", "directsync") else [None, "threads"]))
    iotune = draw(iotunes())
    address: Optional[Any] = None
    if draw(st.booleans()):
        address = (DriveAddress(0, 0, 0, draw(st.integers(0, 255))) if bus in ("scsi", "sata", "ide")
                   else PciAddress(0, 0, draw(st.integers(1, 31)), 0) if bus == "virtio" else None)
    lsize = None if device == "lun" else draw(st.one_of(st.none(), pow2))
    psize = None if device == "lun" or lsize is None else draw(st.one_of(st.none(), st.sampled_from([lsize, 65536])))
    return DiskConfig(
        source=source, target_dev=device_name(prefix, draw(st.integers(0, 800))), bus=bus, device=device,
        driver=DiskDriver(draw(st.sampled_from([None, "qemu"])), draw(st.sampled_from([None, "raw", "qcow2"])),
                          cache, io, draw(st.sampled_from([None, "unmap", "ignore"]))),
        alias=draw(st.one_of(st.none(), st.from_regex(r"\Aua-[a-zA-Z0-9_.\-]{1,20}\Z"))), auth=auth,
        serial=None if device == "lun" else draw(st.one_of(st.none(), serials)), iotune=iotune,
        logical_block_size=lsize, physical_block_size=psize, readonly=draw(st.booleans()),
        shareable=draw(st.booleans()), boot_order=draw(st.one_of(st.none(), st.integers(1, 99))), address=address,
        encryption=draw(st.one_of(st.none(), uuids.map(DiskEncryption))))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(disks())
def test_property_every_disk_passes_libvirt_schema_and_round_trips(cfg: DiskConfig) -> None:
    root = valid(cfg)
    assert root.get("type") == cfg.source_type and root.get("device") == cfg.device
    assert root.find("target").attrib == {"dev": cfg.target_dev, "bus": cfg.bus}  # type: ignore[union-attr]
    src = root.find("source")
    assert src is not None
    if isinstance(cfg.source, BlockSource):
        assert src.get("dev") == cfg.source.dev
    elif isinstance(cfg.source, FileSource):
        assert src.get("file") == cfg.source.path
    else:
        assert src.get("name") == cfg.source.name
        assert [(h.get("name"), h.get("port")) for h in src.findall("host")] == [
            (h.name, None if h.port is None else str(h.port)) for h in cfg.source.hosts]
    assert (root.find("serial").text if root.find("serial") is not None else None) == cfg.serial  # type: ignore[union-attr]
    got_tune = root.find("iotune")
    want = list(cfg.iotune.items()) if cfg.iotune else []
    assert ([(c.tag, int(c.text or "")) for c in got_tune] if got_tune is not None else []) == want
    assert (root.find("readonly") is not None) == cfg.readonly
    assert (root.find("shareable") is not None) == cfg.shareable


iscsi_infos = st.fixed_dictionaries({
    "target_portal": st.one_of(ipv4.map(lambda h: f"{h}:3260"), ipv6.map(lambda h: f"[{h}]:3260"), dns),
    "target_iqn": st.from_regex(r"\Aiqn\.20[0-9]{2}-[01][0-9]\.[a-z]{2,8}\.[a-z]{2,8}:[a-z0-9.\-]{1,20}\Z"),
    "target_lun": st.integers(0, 16383),
}, optional={
    "auth_method": st.sampled_from(["CHAP", None]),
    "auth_username": st.one_of(generic_names, st.text(_PRINTABLE, max_size=10)),
    "auth_password": st.text("abcdefghjk0123456789", min_size=12, max_size=20),
    "volume_id": st.one_of(st.uuids().map(str), st.text(_PRINTABLE, max_size=10)),
    "access_mode": st.sampled_from(["rw", "ro", "bad"]),
    "discard": st.one_of(st.booleans(), st.just("true")),
    "qos_specs": st.one_of(st.none(), iotune_values.map(lambda d: {k: str(v) for k, v in d.items()}),
                           st.just("junk")),
    "logical_block_size": st.sampled_from(["512", "4096", "300"]),
    "device_path": paths,
})
rbd_infos = st.fixed_dictionaries({"name": st.builds(lambda p, i: f"{p}/{i}", ceph_names, ceph_names)}, optional={
    "hosts": st.lists(st.one_of(ipv4, ipv6, dns), min_size=2, max_size=2),
    "auth_enabled": st.booleans(), "auth_username": ceph_names, "secret_type": st.sampled_from(["ceph"]),
    "secret_uuid": st.one_of(st.none(), uuids), "volume_id": st.text(_PRINTABLE, max_size=12),
    "qos_specs": st.one_of(st.none(), iotune_values), "access_mode": st.sampled_from(["rw", "ro"]),
}).map(lambda d: {**d, "ports": ["6789"] * len(d["hosts"])} if "hosts" in d else d)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(iscsi_infos.map(lambda d: ("iscsi", d)), rbd_infos.map(lambda d: ("rbd", d))),
       st.sampled_from(["virtio", "scsi", "sata"]), st.integers(0, 100), st.booleans(),
       st.one_of(st.none(), uuids), st.one_of(st.none(), paths), st.sampled_from(["disk", "lun"]),
       st.one_of(st.none(), st.integers(0, 40)), st.one_of(st.none(), st.just("serial-1")))
def test_property_adapter_output_is_schema_valid_or_a_typed_error(
        info: Any, bus: str, idx: int, envelope_serial: bool, secret: Optional[str], device: Optional[str],
        device_type: str, size: Optional[int], serial: Optional[str]) -> None:
    dvt, data = info
    ci: Dict[str, Any] = {"driver_volume_type": dvt, "data": data}
    if envelope_serial:
        ci["serial"] = data.get("volume_id", "x")
    opts: Dict[str, Any] = {"secret_uuid": secret, "device_type": device_type, "volume_size_gb": size}
    if serial is not None:
        opts["serial"] = serial
    dev = AttachedDevice(dvt, path=device) if device else None
    try:
        xml = disk_xml(ci, dev, target_dev=device_name(device_prefix(bus), idx), bus=bus, **opts)
    except InvalidConnectionInfo as e:  # a typed refusal naming a field
        assert e.field and e.reason
        event(f"refused: {e.field.split('[')[0]}")
        return
    event("xml")
    validate_disk_xml(xml)
    root = parse(xml)
    password = data.get("auth_password")
    assert not password or password not in xml or password in (device or "") + data.get("device_path", "")
    assert (root.find("readonly") is not None) == (data.get("access_mode") == "ro")


def test_disk_config_matches_disk_xml() -> None:
    cfg = disk_config(RBD, target_dev="vdc")
    assert format_disk(cfg) == disk_xml(RBD, target_dev="vdc")
    assert isinstance(cfg.source, NetworkSource) and cfg.source.hosts[0] == NetworkHost("::1", 6789)


def test_cdrom() -> None:
    root = valid(DiskConfig(BlockSource("/dev/sr0"), "hdc", bus="ide", device="cdrom", readonly=True))
    assert root.get("device") == "cdrom" and root.find("readonly") is not None


def test_socket_device_is_refused_for_a_vm_disk() -> None:
    """An NBD/vhost-user socket from the userspace connector is neither a file nor a block node."""
    info = {"driver_volume_type": "rbd", "data": {"name": "volumes/v1", "hosts": ["127.0.0.1"], "ports": ["6789"]}}
    sock = AttachedDevice(protocol="rbd", path="/run/blocklink/qsd/v1/nbd.sock", type="socket")
    with pytest.raises(InvalidConnectionInfo) as e:
        disk_xml(info, sock, target_dev="vdb")
    assert e.value.field == "device" and "socket" in str(e.value)
    as_file = AttachedDevice(protocol="rbd", path="/run/blocklink/qsd/v1/disk", type="file")
    assert "<source file=\"/run/blocklink/qsd/v1/disk\"" in disk_xml(info, as_file, target_dev="vdb")
