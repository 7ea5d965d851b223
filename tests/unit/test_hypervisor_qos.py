"""Cinder QoS -> libvirt <iotune>: every vector of tests/vectors/qos_mapping.json, plus the refusals."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List

import pytest

from blocklink.hypervisor import IoTune, disk_xml, iotune_from_qos, resolve_per_gb
from blocklink.hypervisor.disk import IOTUNE_ORDER, NOVA_IOTUNE_ORDER, InvalidDiskConfig
from blocklink.hypervisor.schema import SchemaError, validate_disk_xml
from tests.conftest import VECTORS

QOS: Dict[str, Any] = json.load(open(os.path.join(VECTORS, "qos_mapping.json")))
PER_GB = QOS["cinder_per_gb_vectors"]
NOVA = QOS["nova_iotune_vectors"]


def _iotune_children(specs: Any, **kw: Any) -> Any:
    """What our adapter writes inside <iotune> for a volume with these qos_specs (None: no element)."""
    xml = disk_xml({"driver_volume_type": "local", "data": {"device_path": "/dev/sdz", "qos_specs": specs}},
                   target_dev="vdb", **kw)
    validate_disk_xml(xml)
    tune = ET.fromstring(xml).find("iotune")
    return None if tune is None else [[c.tag, c.text] for c in tune]


def in_libvirt_order(children: Any) -> Any:
    """Nova's <iotune> children re-ordered the way libvirt (and we) write them; values untouched."""
    return sorted(children, key=lambda kv: IOTUNE_ORDER.index(kv[0]))


def test_mapping_tables_agree_with_ours() -> None:
    # same 13 elements; we write them in libvirt's order (test_hypervisor_nova_vectors.IOTUNE_ORDER_REASON)
    assert list(QOS["iotune_element_emission_order"]) == list(NOVA_IOTUNE_ORDER)
    assert sorted(NOVA_IOTUNE_ORDER) == sorted(IOTUNE_ORDER)
    assert set(QOS["nova_qos_key_to_iotune_element"]) == set(IOTUNE_ORDER)
    assert all(k == v for k, v in QOS["nova_qos_key_to_iotune_element"].items())  # key name == element name
    assert sorted(QOS["cinder_per_gb_rules"]["applies_to"]) == sorted(
        ["read_iops_sec", "read_bytes_sec", "write_iops_sec", "write_bytes_sec", "total_iops_sec", "total_bytes_sec"])


@pytest.mark.parametrize("vec", PER_GB, ids=[v["source"].rsplit("::", 1)[-1] for v in PER_GB])
def test_cinder_per_gb_vectors(vec: Dict[str, Any]) -> None:
    specs = vec["qos_specs_in_volume_type"]
    if vec["volume_size_gb"] is None:  # fetchqos: no per-GB keys; non-iotune keys are ignored
        assert _iotune_children(specs) is None
        assert _iotune_children(vec["expected_connection_info_qos_specs"]["back-end"]) is None
        return
    resolved = resolve_per_gb(specs, vec["volume_size_gb"])
    assert resolved == vec["expected_connection_info_qos_specs"]  # Cinder's step: exactly
    expected = vec["expected_iotune_children_in_order (derived by nova code)"]
    # Nova's step writes total_* next to read_*/write_*, which libvirt refuses (grammar and attach-time
    # check): we refuse it up front, naming the key - from the resolved specs and from raw specs + size
    for kw in ({"specs": resolved}, {"specs": specs, "volume_size_gb": vec["volume_size_gb"]}):
        with pytest.raises(InvalidDiskConfig) as ei:
            _iotune_children(**kw)
        assert ei.value.field == "data.qos_specs.total_bytes_sec"
    _assert_nova_iotune_refused_by_schema(expected)
    # the mapping itself (values, order) matches Nova on each half that libvirt accepts
    for drop in (("total_",), ("read_", "write_")):
        half = {k: v for k, v in resolved.items() if not k.startswith(drop)}
        assert _iotune_children(half) == in_libvirt_order([kv for kv in expected if not kv[0].startswith(drop)])


def _assert_nova_iotune_refused_by_schema(children: Any) -> None:
    tune = ET.Element("iotune")
    for k, v in children:
        ET.SubElement(tune, k).text = v
    disk = ET.fromstring('<disk type="block" device="disk"><source dev="/dev/sdz"/>'
                         '<target dev="vdb" bus="virtio"/></disk>')
    disk.append(tune)
    with pytest.raises(SchemaError):
        validate_disk_xml(ET.tostring(disk, encoding="unicode"))


REFUSED_NOVA_VECTORS = {
    0: "data.qos_specs.total_bytes_sec",   # total_bytes_sec with read/write_bytes_sec: libvirt refuses
    1: "data.qos_specs",                   # 'bar' is not a dict: Nova ignores it, we refuse
    2: "data.qos_specs.total_bytes_sec_max",  # total_*_max with read/write_*_max: libvirt refuses
}


@pytest.mark.parametrize("i", range(len(NOVA)), ids=[f"nova{i}" for i in range(len(NOVA))])
def test_nova_iotune_vectors(i: int) -> None:
    vec = NOVA[i]
    if i in REFUSED_NOVA_VECTORS:
        with pytest.raises(InvalidDiskConfig) as ei:
            _iotune_children(vec["qos_specs"])
        assert ei.value.field == REFUSED_NOVA_VECTORS[i]
        if vec["expected_iotune_children_in_order"]:  # Nova's XML for it: refused by libvirt's grammar too
            _assert_nova_iotune_refused_by_schema(vec["expected_iotune_children_in_order"])
        return
    assert _iotune_children(vec["qos_specs"]) == in_libvirt_order(vec["expected_iotune_children_in_order"])


def test_max_has_two_meanings() -> None:
    # with a per-GB key, X_max caps the per-GB result and is consumed ...
    assert resolve_per_gb({"total_iops_sec_per_gb": 100, "total_iops_sec_max": 250}, 5) == {"total_iops_sec": 250}
    assert _iotune_children({"total_iops_sec_per_gb": 100, "total_iops_sec_max": 250}, volume_size_gb=5) == [
        ["total_iops_sec", "250"]]
    # ... without one it is QEMU's burst limit and reaches <iotune>
    assert _iotune_children({"total_iops_sec": 100, "total_iops_sec_max": 250}) == [
        ["total_iops_sec", "100"], ["total_iops_sec_max", "250"]]
    assert resolve_per_gb({"total_iops_sec": 100, "total_iops_sec_max": 250}, 5) == {
        "total_iops_sec": 100, "total_iops_sec_max": 250}


def test_per_gb_rules() -> None:
    # minimum wins for small volumes, the cap for big ones, an explicit X is overwritten
    assert resolve_per_gb({"read_iops_sec_per_gb": 10, "read_iops_sec_per_gb_min": 100}, 3) == {"read_iops_sec": 100}
    assert resolve_per_gb({"read_iops_sec": 7, "read_iops_sec_per_gb": 10}, 3) == {"read_iops_sec": 30}
    # a _per_gb_min alone is left in place (and ignored by the iotune mapping)
    assert resolve_per_gb({"read_iops_sec_per_gb_min": 100}, 3) == {"read_iops_sec_per_gb_min": 100}
    assert _iotune_children({"read_iops_sec_per_gb_min": 100}, volume_size_gb=3) is None
    # without the size, per-GB keys are ignored like Nova does (Cinder resolves them first)
    assert _iotune_children({"total_iops_sec": 500, "read_iops_sec_per_gb": 5}) == [["total_iops_sec", "500"]]
    with pytest.raises(InvalidDiskConfig) as ei:
        resolve_per_gb({"read_iops_sec_per_gb": "lots"}, 3)
    assert ei.value.field == "qos_specs.read_iops_sec_per_gb"
    with pytest.raises(InvalidDiskConfig):
        resolve_per_gb({"read_iops_sec_per_gb": 1}, -1)


@pytest.mark.parametrize("specs,field", [
    ({"total_iops_sec": "-5"}, "data.qos_specs.total_iops_sec"),
    ({"total_iops_sec": "fast"}, "data.qos_specs.total_iops_sec"),
    ({"total_iops_sec": True}, "data.qos_specs.total_iops_sec"),
    ({"total_iops_sec": 10 ** 16}, "data.qos_specs.total_iops_sec"),
    ({"read_iops_sec": 1, "total_iops_sec": 2}, "data.qos_specs.total_iops_sec"),
    ({"total_iops_sec_max": 100}, "data.qos_specs.total_iops_sec_max"),          # burst without base
    ({"total_iops_sec": 100, "total_iops_sec_max": 50}, "data.qos_specs.total_iops_sec_max"),  # burst < base
    (["total_iops_sec"], "data.qos_specs"),
])
def test_refusals_name_the_key(specs: Any, field: str) -> None:
    with pytest.raises(InvalidDiskConfig) as ei:
        _iotune_children(specs)
    assert ei.value.field == field


def test_zero_and_none() -> None:
    assert _iotune_children({"total_iops_sec": 0, "read_bytes_sec": None}) == [["total_iops_sec", "0"]]
    assert _iotune_children({}) is None and _iotune_children(None) is None
    assert iotune_from_qos({"group_name": "g", "foo": "bar"}) is None


def test_iotune_model_order_and_types() -> None:
    t = IoTune.from_mapping({"size_iops_sec": "16", "write_iops_sec": "7", "read_bytes_sec": 5})
    assert t.items() == (("read_bytes_sec", 5), ("write_iops_sec", 7), ("size_iops_sec", 16))
    with pytest.raises(InvalidDiskConfig) as ei:
        IoTune.from_mapping({"bogus": 1}, "x")
    assert ei.value.field == "x.bogus"
    cases: List[Any] = [IoTune(read_bytes_sec=1, read_bytes_sec_max=2), IoTune(size_iops_sec=3)]
    assert [c.items() for c in cases] == [(("read_bytes_sec", 1), ("read_bytes_sec_max", 2)), (("size_iops_sec", 3),)]
