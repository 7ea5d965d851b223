"""Fuzzing of the hypervisor disk model inputs: connection info + device + options -> <disk>, QoS specs, secrets.

Property: a typed error (InvalidConnectionInfo / InvalidDiskConfig, both BlocklinkError) or XML that
libvirt's own RelaxNG grammar accepts. Never another exception, never XML libvirt would refuse
(that would fail later, inside libvirtd, after the host attach).
"""

from __future__ import annotations

import copy
import json
import os
import xml.etree.ElementTree as ET
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from blocklink.errors import BlocklinkError
from blocklink.hypervisor import disk_xml, iotune_from_qos
from blocklink.hypervisor.disk import IOTUNE_ORDER
from blocklink.hypervisor.schema import validate_disk_xml, validate_secret_xml
from blocklink.hypervisor.secrets import secret_xml
from tests.conftest import VECTORS
from tests.reliability import strategies as S
from tests.reliability.results import RESULTS
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


@FUZZ
@given(disk_inputs())
def test_disk_xml_from_hostile_inputs(case: Any) -> None:
    info, device, opts = case
    RESULTS.fuzzed("hypervisor disk_xml (connection info, device, options)")
    try:
        xml = disk_xml(info, device, **opts)
    except BlocklinkError:
        return
    validate_disk_xml(xml)  # what we write, libvirt accepts
    root = ET.fromstring(xml)
    assert root.tag == "disk" and root.find("target") is not None


@FUZZ
@given(st.one_of(qos_values, S.json_value), st.one_of(st.none(), st.integers(-3, 10 ** 7), S.hostile_token))
def test_qos_specs(specs: Any, size: Any) -> None:
    RESULTS.fuzzed("hypervisor QoS specs -> iotune")
    try:
        tune = iotune_from_qos(specs, size_gb=size)
    except BlocklinkError:
        return
    if tune is not None:
        for k, v in tune.items():
            assert k in IOTUNE_ORDER and isinstance(v, int) and 0 <= v <= 10 ** 15
        xml = disk_xml({"driver_volume_type": "local", "data": {"device_path": "/dev/sdz"}}, target_dev="vdb",
                       qos_specs=dict(tune.items()))
        validate_disk_xml(xml)


@FUZZ
@given(st.sampled_from(["ceph", "iscsi", "volume", "tls", "vtpm", "bogus"]), hostile_text,
       st.one_of(st.none(), st.uuids().map(str), hostile_text), st.one_of(st.none(), hostile_text))
def test_secret_definition(usage_type: str, usage_id: str, uuid: Any, description: Any) -> None:
    RESULTS.fuzzed("libvirt secret XML (usage, uuid, description)")
    try:
        xml = secret_xml(usage_type, usage_id, uuid=uuid, description=description)
    except BlocklinkError:
        return
    validate_secret_xml(xml)
    assert ET.fromstring(xml).find("usage") is not None


def test_found_lone_surrogate_in_secret_usage_and_disk_text() -> None:
    # was UnicodeEncodeError at validation (and inside libvirt-python): XML cannot carry lone surrogates
    import pytest

    for call in (lambda: secret_xml("ceph", "\udcff"), lambda: secret_xml("iscsi", "u", description="\ufffe"),
                 lambda: disk_xml({"driver_volume_type": "local", "data": {"device_path": "/dev/sd\udcff"}},
                                  target_dev="vdb")):
        with pytest.raises(BlocklinkError):
            call()
