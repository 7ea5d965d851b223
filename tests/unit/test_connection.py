"""Connection models: every real Cinder dict parses and round-trips; bad input names its field."""

import copy
import json
import os

import pytest

import blocklink
from blocklink.connection import (AttachedDevice, FcInfo, HostConnector, IscsiInfo, NvmeofInfo, Portal, RbdInfo,
                                  normalize_wwn, parse_connection_info)
from blocklink.errors import InvalidConnectionInfo, InvalidConnector
from tests.conftest import VECTORS

with open(os.path.join(VECTORS, "connection_info.json")) as f:
    CASES = json.load(f)


def _envelope(case):
    return {"driver_volume_type": case["driver_volume_type"], "data": copy.deepcopy(case["data"])}


@pytest.mark.parametrize("case", CASES, ids=[c["source"].split("::", 1)[-1][:70] for c in CASES])
def test_vector_round_trip(case):
    d = _envelope(case)
    info = parse_connection_info(d)
    assert info.to_dict() == d
    # the bare data dict parses to the same info and gives the same data back
    bare = type(info).from_dict(copy.deepcopy(case["data"]))
    assert bare.data_dict() == case["data"]
    assert bare == info


@pytest.mark.parametrize("case", [c for c in CASES if "auth_password" in c["data"] or "keyring" in c["data"]])
def test_secrets_never_in_repr_or_str(case):
    info = parse_connection_info(_envelope(case))
    secret_values = [case["data"][k] for k in ("auth_password", "discovery_auth_password", "keyring")
                     if k in case["data"]]
    for text in (repr(info), str(info)):
        for s in secret_values:
            assert repr(s) not in text  # short fixture secrets ("c") occur as letters elsewhere
            if len(s) >= 6:
                assert s not in text
        assert "Secret('***')" in text


def test_iscsi_plural_only_pure():
    case = next(c for c in CASES if "purestorage" in json.dumps(c["data"]) and "2001:db8" not in json.dumps(c))
    info = IscsiInfo.from_dict(case["data"])
    assert info.primary is None and info.form == "multi"
    assert [t.portal.address for t in info.targets] == ["10.0.0.1:3260", "10.0.0.2:3260", "10.0.0.3:3260",
                                                         "10.0.0.4:3260"]
    assert {t.lun for t in info.targets} == {1}
    assert info.addressing_mode == "SAM2"


def test_iscsi_ipv6_portals():
    case = next(c for c in CASES if "fd00:fd00" in json.dumps(c["data"]))
    info = IscsiInfo.from_dict(case["data"])
    assert info.targets[0].portal.host == "fd00:fd00:fd00:3000::12"
    assert info.targets[0].portal.port == 3260
    assert info.targets[1].portal.address == "[fd00:fd00:fd00:3000::13]:3260"


def test_iscsi_multipath_different_iqns_pair_by_index():
    case = next(c for c in CASES if "sim.node2" in json.dumps(c["data"]))
    info = IscsiInfo.from_dict(case["data"])
    assert [(t.portal.host, t.iqn[-5:]) for t in info.targets] == [
        ("1.234.56.78", "node1"), ("1.234.56.80", "node1"), ("1.234.56.79", "node2")]


@pytest.mark.parametrize("data,field", [
    ({"target_iqn": "iqn.x:y", "target_lun": 0}, "target_portal"),
    ({"target_portal": "1.2.3.4:3260", "target_lun": 0}, "target_iqn"),
    ({"target_portal": "1.2.3.4:3260", "target_iqn": "iqn.x:y", "target_lun": "zero"}, "target_lun"),
    ({"target_portal": "1.2.3.4:99999", "target_iqn": "iqn.x:y", "target_lun": 0}, "target_portal"),
    ({"target_portal": "1.2.3.4:3260", "target_iqn": "iqn.x y", "target_lun": 0}, "target_iqn"),
    ({"target_portal": "1.2.3.4:3260", "target_iqn": "../../etc", "target_lun": 0}, "target_iqn"),
    ({"target_portals": ["1.2.3.4:3260"], "target_iqns": ["a:b", "c:d"], "target_luns": [0]}, "target_iqns"),
    ({"target_portals": ["1.2.3.4:3260", "1.2.3.5:3260;rm"], "target_iqns": ["a:b", "a:b"],
      "target_luns": [0, 0]}, "target_portals[1]"),
    ({"target_portal": "1.2.3.4:3260", "target_iqn": "iqn.x:y", "target_lun": 0, "access_mode": "rwx"},
     "access_mode"),
    ({"target_portal": "1.2.3.4:3260", "target_iqn": "iqn.x:y", "target_lun": 0, "auth_password": 5},
     "auth_password"),
])
def test_iscsi_invalid_names_field(data, field):
    with pytest.raises(InvalidConnectionInfo) as ei:
        parse_connection_info({"driver_volume_type": "iscsi", "data": data})
    assert ei.value.field == f"data.{field}"


def test_invalid_error_text_has_no_secret():
    data = {"target_portal": "1.2.3.4:3260", "target_iqn": "iqn.x:y", "target_lun": "bad",
            "auth_password": "supersecret-pw-123"}
    with pytest.raises(InvalidConnectionInfo) as ei:
        IscsiInfo.from_dict(data)
    assert "supersecret-pw-123" not in str(ei.value)


@pytest.mark.parametrize("data,field", [
    ({"hosts": ["127.0.0.1"], "ports": ["6789"]}, "name"),
    ({"name": "onlyimage"}, "name"),
    ({"name": "pool/../image"}, "name"),
    ({"name": "pool/img", "hosts": ["127.0.0.1", "::1"], "ports": ["6789"]}, "ports"),
    ({"name": "pool/img", "hosts": ["bad host"], "ports": ["6789"]}, "hosts[0]"),
    ({"name": "pool/img", "hosts": ["127.0.0.1"], "ports": ["http"]}, "ports[0]"),
    ({"name": "pool/img", "auth_username": "a b"}, "auth_username"),
    ({"name": "pool/img", "discard": "maybe"}, "discard"),
])
def test_rbd_invalid_names_field(data, field):
    with pytest.raises(InvalidConnectionInfo) as ei:
        RbdInfo.from_dict(data)
    assert ei.value.field == field


def test_rbd_fields():
    info = RbdInfo.from_dict({"name": "volumes/ns1/volume-1", "hosts": ["::1", "10.0.0.1"], "ports": ["6789", 3300]})
    assert (info.pool, info.namespace, info.image) == ("volumes", "ns1", "volume-1")
    assert info.monitors == (("::1", 6789), ("10.0.0.1", 3300))
    assert info.data_dict()["ports"] == ["6789", "3300"]


def test_fc_target_paths_normalise_and_prefer_plurals():
    case = next(c for c in CASES if "AABBCCDDEEFF0011" in json.dumps(c["data"]))
    info = FcInfo.from_dict(case["data"])
    assert info.target_paths() == (("aabbccddeeff0011", 0),)
    pure = FcInfo.from_dict(next(c for c in CASES if c["data"].get("target_wwns"))["data"])
    assert pure.target_paths()[0] == ("21000024ff59fe91", 1)
    short = FcInfo.from_dict(next(c for c in CASES if "0987654321234" in json.dumps(c["data"]))["data"])
    assert short.target_paths()[0] == ("0000987654321234", 90)
    minimal = FcInfo.from_dict({"initiator_target_map": {"fake_wwn": ["fake_wwn2"]}})
    assert minimal.target_paths() == ()  # non-hex WWNs match nothing, but parse


def test_normalize_wwn():
    assert normalize_wwn("0x21000024FF59FE91") == "21000024ff59fe91"
    assert normalize_wwn("21:00:00:24:ff:59:fe:91") == "21000024ff59fe91"
    assert normalize_wwn("123") == "0000000000000123"
    assert normalize_wwn("xyz") is None
    assert normalize_wwn("1" * 17) is None


def test_portal_forms():
    assert Portal.parse("10.0.0.1").port == 3260
    assert Portal.parse("[::1]:3261").address == "[::1]:3261"
    assert Portal.parse("fe80::1").host == "fe80::1"
    assert Portal.parse("storage.example.com:3260").host == "storage.example.com"
    assert str(Portal.parse("0.0.0.0:0000")) == "0.0.0.0:0000"


def test_nvmeof_both_forms_round_trip():
    new = {"target_nqn": "nqn.2014-08.org.nvmexpress:uuid:1", "vol_uuid": "c4b0d3e4-1111-2222-3333-444455556666",
           "portals": [["10.0.0.1", 4420, "tcp"], ["10.0.0.2", 4420, "tcp"]]}
    legacy = {"nqn": "nqn.2016-06.io.spdk:cnode1", "transport_type": "tcp", "target_portal": "10.0.0.1",
              "target_port": "4420", "ns_id": 1}
    for d in (new, legacy):
        info = parse_connection_info({"driver_volume_type": "nvmeof", "data": dict(d)})
        assert info.to_dict()["data"] == d
    assert NvmeofInfo.from_dict(legacy).portals[0].port == 4420


def test_envelope_type_mismatch():
    with pytest.raises(InvalidConnectionInfo) as ei:
        IscsiInfo.from_dict({"driver_volume_type": "rbd", "data": {}})
    assert ei.value.field == "driver_volume_type"
    with pytest.raises(InvalidConnectionInfo) as ei:
        parse_connection_info({"driver_volume_type": "floppy", "data": {}})
    assert "iscsi" in str(ei.value) and ei.value.field == "driver_volume_type"
    with pytest.raises(InvalidConnectionInfo):
        parse_connection_info(["not", "a", "dict"])


def test_envelope_extras_kept():
    d = {"driver_volume_type": "rbd", "data": {"name": "p/i"}, "serial": "vol-1", "multiattach": False}
    assert parse_connection_info(d).to_dict() == d


def test_host_connector_round_trip_and_errors():
    props = {"platform": "x86_64", "os_type": "linux", "ip": "10.0.0.5", "host": "cmp1", "multipath": True,
             "initiator": "iqn.1993-08.org.debian:01:abc", "wwpns": ["21000024ff406cc3"],
             "wwnns": ["20000024ff406cc3"], "nqn": "nqn.2014-08.org.nvmexpress:uuid:x", "do_local_attach": False,
             "system uuid": "abc"}
    hc = HostConnector.from_dict(props)
    assert hc.to_dict() == props
    with pytest.raises(InvalidConnector) as ei:
        HostConnector.from_dict({"host": "h", "initiator": "iqn.bad name"})
    assert ei.value.field == "initiator"
    with pytest.raises(InvalidConnector) as ei:
        HostConnector.from_dict({"initiator": "iqn.x:y"})
    assert ei.value.field == "host"


def test_attached_device_os_brick_shape():
    dev = AttachedDevice(protocol="iscsi", path="/dev/dm-0", wwn="3600", multipath_id="3600")
    assert dev.to_dict() == {"protocol": "iscsi", "type": "block", "path": "/dev/dm-0", "scsi_wwn": "3600",
                             "multipath_id": "3600"}
    back = AttachedDevice.from_dict(dev.to_dict(), "iscsi")
    assert back == dev
    handle = object()
    h = AttachedDevice.from_dict({"path": handle})
    assert h.handle is handle and h.type == "handle"
    with pytest.raises(InvalidConnectionInfo):
        AttachedDevice(protocol="x")


def test_public_api_exports():
    assert blocklink.parse_connection_info is parse_connection_info
    assert callable(blocklink.connector_for)


def test_rbd_port_none_means_default_ports():
    """Nova's vectors carry ports [None, ...]: a monitor on its default ports (3300 and 6789)."""
    from blocklink.ceph_client import mon_host_entry

    d = {"name": "rbd/volume-1", "hosts": ["example.com", "1.2.3.4", "::1"], "ports": [None, "6790", "6791"]}
    info = RbdInfo.from_dict(d)
    assert info.monitors == (("example.com", None), ("1.2.3.4", 6790), ("::1", 6791))
    assert info.data_dict() == d
    assert [mon_host_entry(h, p) for h, p in info.monitors] == ["example.com", "[v1:1.2.3.4:6790]", "[v1:[::1]:6791]"]
    assert mon_host_entry("::1", None) == "[::1]"
