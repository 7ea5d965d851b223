"""Guest device names and SCSI units from a domain's XML (Nova's get_next_disk_info behaviour)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Iterable, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocklink.hypervisor.disk import InvalidDiskConfig
from blocklink.hypervisor.names import (TooManyDevices, device_index, device_name, device_prefix, next_device_name,
                                        next_scsi_unit, used_device_names)


def domain(disks: Iterable[Tuple[str, str]] = (), units: Iterable[Tuple[str, int, int]] = ()) -> str:
    """A domain XML with ``(dev, bus)`` disks and ``(dev, controller, unit)`` SCSI disks with addresses."""
    root = ET.Element("domain", {"type": "qemu"})
    ET.SubElement(root, "name").text = "g"
    devs = ET.SubElement(root, "devices")
    for dev, bus in disks:
        d = ET.SubElement(devs, "disk", {"type": "block", "device": "disk"})
        ET.SubElement(d, "target", {"dev": dev, "bus": bus})
    for dev, controller, unit in units:
        d = ET.SubElement(devs, "disk", {"type": "block", "device": "disk"})
        ET.SubElement(d, "target", {"dev": dev, "bus": "scsi"})
        ET.SubElement(d, "address", {"type": "drive", "controller": str(controller), "bus": "0", "target": "0",
                                     "unit": str(unit)})
    ET.SubElement(devs, "interface", {"type": "user"})  # not a disk: ignored
    return ET.tostring(root, encoding="unicode")


def test_letters_beyond_z() -> None:
    assert [device_name("vd", i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702, 18277)] == [
        "vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba", "vdzz", "vdaaa", "vdzzz"]


@given(st.integers(0, 20000))
def test_index_round_trip(i: int) -> None:
    assert device_index(device_name("sd", i)) == i


def test_device_index_outside_scheme() -> None:
    assert device_index("sda1") is None and device_index("nvme0n1") is None and device_index("/dev/vdc") == 2


def test_prefix_per_bus() -> None:
    assert [device_prefix(b) for b in ("virtio", "scsi", "sata", "usb", "ide", "fdc", "xen")] == [
        "vd", "sd", "sd", "sd", "hd", "fd", "xvd"]
    with pytest.raises(InvalidDiskConfig) as ei:
        device_prefix("nvme")
    assert ei.value.field == "bus"


def test_next_free_name_fills_gaps_and_counts_every_bus() -> None:
    xml = domain([("vda", "virtio"), ("vdc", "virtio"), ("sda", "sata"), ("hda", "ide")])
    assert next_device_name(xml, "virtio") == "vdb"
    assert next_device_name(xml, "scsi") == "sdb"  # sda is taken on the SATA bus: same namespace
    assert next_device_name(xml, "ide") == "hdb"
    assert next_device_name(xml, "virtio", reserved=["vdb", "/dev/vdd"]) == "vde"
    assert next_device_name(domain(), "virtio") == "vda"


def test_beyond_vdz() -> None:
    xml = domain([(device_name("vd", i), "virtio") for i in range(26)])
    assert next_device_name(xml, "virtio") == "vdaa"
    xml = domain([(device_name("vd", i), "virtio") for i in range(26 + 26 * 26)])
    assert next_device_name(xml, "virtio") == "vdaaa"


def test_limits() -> None:
    full_ide = domain([(f"hd{c}", "ide") for c in "abcd"])
    with pytest.raises(TooManyDevices) as ei:
        next_device_name(full_ide, "ide")
    assert ei.value.field == "target_dev"
    xml = domain([("vda", "virtio"), ("vdb", "virtio")])
    with pytest.raises(TooManyDevices):
        next_device_name(xml, "virtio", max_devices=2)
    assert next_device_name(xml, "virtio", max_devices=3) == "vdc"


def test_live_and_persistent_xml_both_count() -> None:
    live = domain([("vda", "virtio")])
    persistent = domain([("vda", "virtio"), ("vdb", "virtio")])  # attached to config only
    assert next_device_name(live, "virtio", extra_xml=[persistent]) == "vdc"
    assert used_device_names(live, persistent, "") == {"vda", "vdb"}


def test_scsi_units() -> None:
    xml = domain(units=[("sda", 0, 0), ("sdb", 0, 1), ("sdc", 0, 3), ("sdd", 1, 2)])
    assert next_scsi_unit(xml) == 2
    assert next_scsi_unit(xml, controller=1) == 0
    assert next_scsi_unit(xml, reserved={2}) == 4
    with pytest.raises(TooManyDevices) as ei:
        next_scsi_unit(domain(units=[(device_name("sd", u), 0, u) for u in range(4)]), max_units=4)
    assert ei.value.field == "unit"


@given(st.sets(st.integers(0, 200), max_size=60), st.sampled_from(["virtio", "scsi"]))
def test_property_first_free(taken: set, bus: str) -> None:  # type: ignore[type-arg]
    prefix = device_prefix(bus)
    xml = domain([(device_name(prefix, i), bus) for i in taken])
    got: Optional[int] = device_index(next_device_name(xml, bus))
    assert got is not None and got not in taken and all(i in taken for i in range(got))
