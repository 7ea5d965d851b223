"""The attach_flow benchmark's floor plugs the same <disk> as blocklink's flow (no service is started)."""

import xml.etree.ElementTree as ET

from benchmarks.attach_flow import floor_iscsi_xml, floor_rbd_xml
from blocklink.hypervisor.adapter import disk_xml
from blocklink.hypervisor.schema import validate_disk_xml

UUID = "0b5e5b4c-2b5a-4f6e-9c59-2d5f7c3f2a11"
INITIATOR = "iqn.1993-08.org.debian:01:abcdef"


def _shape(xml):
    """Every element as (path, attributes, text): order-free, quoting-free."""
    out = set()

    def walk(el, path):
        here = f"{path}/{el.tag}"
        out.add((here, tuple(sorted(el.attrib.items())), (el.text or "").strip()))
        for child in el:
            walk(child, here)
    walk(ET.fromstring(xml), "")
    return out


def test_floor_rbd_disk_is_blocklinks():
    info = {"driver_volume_type": "rbd",
            "data": {"name": "volumes/volume-v1", "hosts": ["127.0.0.1"], "ports": ["6789"], "auth_enabled": True,
                     "auth_username": "admin", "secret_type": "ceph", "volume_id": "v1", "discard": True,
                     "cluster_name": "ceph"}}
    ours = disk_xml(info, None, target_dev="sda", bus="scsi", secret_uuid=UUID)
    assert _shape(floor_rbd_xml("volumes/volume-v1", ("127.0.0.1", "6789"), "admin", UUID, "v1", "sda")) == _shape(ours)


def test_floor_iscsi_disk_is_blocklinks():
    iqn = "iqn.2010-10.org.openstack:volume-v2"
    info = {"driver_volume_type": "iscsi",
            "data": {"target_iqn": iqn, "target_portal": "127.0.0.1:3260", "target_lun": 1, "auth_method": "CHAP",
                     "auth_username": "u1", "auth_password": "p", "volume_id": "v2"}}
    ours = disk_xml(info, None, target_dev="sda", bus="scsi", secret_uuid=UUID, initiator_iqn=INITIATOR)
    assert _shape(floor_iscsi_xml(iqn, ("127.0.0.1", 3260), INITIATOR, "u1", UUID, "v2", "sda")) == _shape(ours)


def test_floor_disks_pass_libvirts_grammar():
    validate_disk_xml(floor_rbd_xml("volumes/volume-v1", ("127.0.0.1", "6789"), "admin", UUID, "v1", "sda"))
    validate_disk_xml(floor_iscsi_xml("iqn.2010-10.org.openstack:volume-v2", ("127.0.0.1", 3260), INITIATOR,
                                             "u1", UUID, "v2", "sda"))
