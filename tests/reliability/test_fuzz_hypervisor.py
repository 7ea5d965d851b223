"""Fuzzing of the hypervisor disk model inputs: connection info + device + options -> <disk>, QoS specs, secrets.

Property: a valid seed gives the known result (the <disk> carries exactly the connection it was given;
the QoS keys come back as the iotune values; the secret names its usage); anything else gives a typed
error (InvalidConnectionInfo / InvalidDiskConfig, both BlocklinkError) or XML that libvirt's own
RelaxNG grammar accepts. Never another exception, never XML libvirt would refuse (that would fail
later, inside libvirtd, after the host attach).
"""

from __future__ import annotations

import copy
import json
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocklink.errors import BlocklinkError
from blocklink.hypervisor import disk_xml, iotune_from_qos
from blocklink.hypervisor.disk import IOTUNE_ORDER
from blocklink.hypervisor.schema import validate_disk_xml, validate_secret_xml
from blocklink.hypervisor.secrets import secret_xml
from tests.conftest import VECTORS
from tests.reliability import strategies as S
from tests.reliability.fuzzing import Target, check, check_valid_seeds
from tests.reliability.strategies import FUZZ

with open(os.path.join(VECTORS, "connection_info.json")) as _f:
    INFOS = [{"driver_volume_type": c["driver_volume_type"], "data": c["data"]} for c in json.load(_f)
             if c["driver_volume_type"] in ("iscsi", "rbd")]
INFOS.append({"driver_volume_type": "local", "data": {"device_path": "/dev/sdz"}})
DATA_KEYS = sorted({k for c in INFOS for k in c["data"]} | {"qos_specs", "discard", "access_mode", "encrypted",
                                                            "logical_block_size", "physical_block_size", "volume_id"})
qos_values = st.dictionaries(st.sampled_from(list(IOTUNE_ORDER) + [k + "_per_gb" for k in IOTUNE_ORDER[:6]]
                                             + ["consumer", "read_iops_sec_per_gb_min"]) | st.text(max_size=6),
                             st.one_of(st.integers(-5, 10 ** 16), st.sampled_from(["100", "0", "-1", " 7 ", "1e3"]),
                                       st.none(), st.booleans(), S.hostile_token), max_size=6)
hostile_text = st.one_of(S.hostile_token, st.text(max_size=20))


@st.composite
def disk_inputs(draw: Any) -> Any:
    info = copy.deepcopy(draw(st.sampled_from(INFOS)))
    for _ in range(draw(st.integers(0, 3))):
        k = draw(st.sampled_from(DATA_KEYS))
        if draw(st.integers(0, 3)) == 0:
            info["data"].pop(k, None)
        else:
            info["data"][k] = draw(st.one_of(S.json_value, qos_values, hostile_text))
    if draw(st.integers(0, 4)) == 0:
        info["serial"] = draw(hostile_text)
    device = draw(st.one_of(st.none(), st.none(), st.fixed_dictionaries(
        {"type": st.sampled_from(["block", "file"]), "path": st.one_of(st.just("/dev/sdb"), hostile_text)})))
    opts = draw(st.fixed_dictionaries({}, optional={
        "target_dev": st.one_of(st.sampled_from(["vdb", "sda", "/dev/vdc"]), hostile_text),
        "bus": st.one_of(st.sampled_from(["virtio", "scsi", "sata"]), hostile_text),
        "serial": st.one_of(st.none(), hostile_text),
        "qos_specs": st.one_of(st.none(), qos_values, S.json_value),
        "volume_size_gb": st.one_of(st.none(), st.integers(-1, 10 ** 6)),
        "secret_uuid": st.one_of(st.none(), st.uuids().map(str), hostile_text),
        "initiator_iqn": st.one_of(st.none(), st.just("iqn.2024-01.x:y"), hostile_text),
        "rbd_user": st.one_of(st.none(), st.just("cinder"), hostile_text),
        "cache": st.one_of(st.just("none"), hostile_text),
        "unit": st.one_of(st.none(), st.integers(-1, 70000)),
        "boot_order": st.one_of(st.none(), st.integers(-1, 10))}))
    opts.setdefault("target_dev", "vdb")
    return info, device, opts


def _disk(case: Any) -> str:
    info, device, opts = case
    return disk_xml(info, device, **opts)


def _valid_disk(xml: str) -> None:
    validate_disk_xml(xml)  # what we write, libvirt accepts
    root = ET.fromstring(xml)
    check(root.tag == "disk" and root.find("target") is not None, "not a <disk> with a <target>", xml)


def _disk_view(xml: str) -> Dict[str, Any]:
    """What the <disk> says about the volume: kind, source, hosts, auth and the guest device."""
    root = ET.fromstring(xml)
    src, auth = root.find("source"), root.find("auth")
    assert src is not None
    secret = auth.find("secret") if auth is not None else None
    return {"type": root.get("type"), "protocol": src.get("protocol"), "name": src.get("name"), "dev": src.get("dev"),
            "hosts": [[h.get("name"), h.get("port")] for h in src.findall("host")],
            "auth": None if auth is None or secret is None else [auth.get("username"), secret.get("type"),
                                                                  secret.get("uuid") or secret.get("usage")],
            "target": root.find("target").get("dev")}  # type: ignore[union-attr]


_IQN = "iqn.2010-10.org.openstack:volume-1"
_UUID = "0a5b8a2e-37b1-4c3a-9f5e-0c1c5e4d9a10"


def _network(protocol: str, name: str, hosts: List[List[str]], auth: Optional[List[str]] = None) -> Dict[str, Any]:
    return {"type": "network", "protocol": protocol, "name": name, "dev": None, "hosts": hosts, "auth": auth,
            "target": "vdb"}


DISK = Target("hypervisor disk_xml (connection info, device, options)", _disk, [
    (({"driver_volume_type": "iscsi", "data": {"target_iqn": _IQN, "target_lun": 1, "target_portal": "10.0.0.1:3260"}},
      None, {"target_dev": "vdb"}), _network("iscsi", f"{_IQN}/1", [["10.0.0.1", "3260"]])),
    (({"driver_volume_type": "iscsi", "data": {"target_iqn": _IQN, "target_lun": 0, "target_portal": "[fd00::2]:3260",
                                               "auth_method": "CHAP", "auth_username": "chap-user",
                                               "auth_password": "chap-secret-1"}},
      None, {"target_dev": "vdb", "secret_uuid": _UUID}),
     _network("iscsi", f"{_IQN}/0", [["fd00::2", "3260"]], ["chap-user", "iscsi", _UUID])),
    (({"driver_volume_type": "rbd", "data": {"name": "volumes/volume-1", "hosts": ["127.0.0.1", "::1"],
                                             "ports": ["6789", "3300"], "auth_enabled": False}},
      None, {"target_dev": "vdb"}), _network("rbd", "volumes/volume-1", [["127.0.0.1", "6789"], ["::1", "3300"]])),
    (({"driver_volume_type": "local", "data": {"device_path": "/dev/sdz"}}, None, {"target_dev": "vdb"}),
     {"type": "block", "protocol": None, "name": None, "dev": "/dev/sdz", "hosts": [], "auth": None, "target": "vdb"})],
    _valid_disk, _disk_view)


@FUZZ
@given(disk_inputs())
def test_disk_xml_from_hostile_inputs(case: Any) -> None:
    DISK.fuzz(case)


def _qos(case: Any) -> Any:
    specs, size = case
    return iotune_from_qos(specs, size_gb=size)


def _valid_tune(tune: Any) -> None:
    if tune is None:
        return
    for k, v in tune.items():
        check(k in IOTUNE_ORDER and isinstance(v, int) and 0 <= v <= 10 ** 15, "a bad iotune value", (k, v))
    validate_disk_xml(disk_xml({"driver_volume_type": "local", "data": {"device_path": "/dev/sdz"}}, target_dev="vdb",
                               qos_specs=dict(tune.items())))


QOS = Target("hypervisor QoS specs -> iotune", _qos, [
    (({"read_iops_sec": "200", "write_iops_sec": 100, "consumer": "front-end"}, None),
     {"read_iops_sec": 200, "write_iops_sec": 100}),
    (({"read_iops_sec_per_gb": 10, "write_bytes_sec": 5}, 3), {"read_iops_sec": 30, "write_bytes_sec": 5}),
    (({}, None), None), ((None, 7), None)],
    _valid_tune, lambda tune: None if tune is None else dict(tune.items()))


@FUZZ
@given(st.one_of(qos_values, S.json_value), st.one_of(st.none(), st.integers(-3, 10 ** 7), S.hostile_token))
def test_qos_specs(specs: Any, size: Any) -> None:
    QOS.fuzz((specs, size))


def _secret(case: Any) -> str:
    usage_type, usage_id, uuid, description = case
    return secret_xml(usage_type, usage_id, uuid=uuid, description=description)


def _valid_secret(xml: str) -> None:
    validate_secret_xml(xml)
    check(ET.fromstring(xml).find("usage") is not None, "a secret without <usage>", xml)


def _secret_view(xml: str) -> List[Any]:
    root = ET.fromstring(xml)
    usage = root.find("usage")
    assert usage is not None
    return [usage.get("type"), usage[0].text if len(usage) else None, root.findtext("uuid"), root.findtext("description")]


SECRET = Target("libvirt secret XML (usage, uuid, description)", _secret, [
    (("ceph", "client.cinder secret", _UUID, "d"), ["ceph", "client.cinder secret", _UUID, "d"]),
    (("iscsi", _IQN, None, None), ["iscsi", _IQN, None, None]),
    (("volume", "/var/lib/x.img", None, None), ["volume", "/var/lib/x.img", None, None])], _valid_secret, _secret_view)


@FUZZ
@given(st.sampled_from(["ceph", "iscsi", "volume", "tls", "vtpm", "bogus"]), hostile_text,
       st.one_of(st.none(), st.uuids().map(str), hostile_text), st.one_of(st.none(), hostile_text))
def test_secret_definition(usage_type: str, usage_id: str, uuid: Any, description: Any) -> None:
    SECRET.fuzz((usage_type, usage_id, uuid, description))


TARGETS = [DISK, QOS, SECRET]


@pytest.mark.parametrize("fuzz_target", TARGETS, ids=[t.name for t in TARGETS])
def test_valid_seeds_give_their_known_results(fuzz_target: Target) -> None:
    assert check_valid_seeds([fuzz_target]) == [fuzz_target.name]


def test_found_lone_surrogate_in_secret_usage_and_disk_text() -> None:
    # was UnicodeEncodeError at validation (and inside libvirt-python): XML cannot carry lone surrogates
    for call in (lambda: secret_xml("ceph", "\udcff"), lambda: secret_xml("iscsi", "u", description="\ufffe"),
                 lambda: disk_xml({"driver_volume_type": "local", "data": {"device_path": "/dev/sd\udcff"}},
                                  target_dev="vdb")):
        with pytest.raises(BlocklinkError):
            call()
