"""``blocklink disk-xml``: JSON {"xml": ...} on stdout, typed errors as JSON, exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from blocklink.cli import main
from blocklink.hypervisor.schema import validate_disk_xml

RBD = {"driver_volume_type": "rbd", "data": {
    "name": "volumes/volume-1", "hosts": ["127.0.0.1"], "ports": ["6789"], "auth_enabled": True,
    "auth_username": "cinder", "secret_type": "ceph", "secret_uuid": "5fe62cc7-0392-4a32-8466-081ce0ea970f",
    "volume_id": "1", "qos_specs": {"total_iops_sec": "100"}}}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    rc = main(list(argv))
    return rc, json.loads(capsys.readouterr().out)


def test_disk_xml_network(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "disk-xml", json.dumps(RBD), "--target-dev", "sdb", "--bus", "scsi")
    assert rc == 0
    validate_disk_xml(out["xml"])
    root = ET.fromstring(out["xml"])
    assert root.get("type") == "network" and root.find("target").attrib == {"dev": "sdb", "bus": "scsi"}  # type: ignore[union-attr]
    assert root.find("iotune/total_iops_sec").text == "100"  # type: ignore[union-attr]


def test_disk_xml_host_device_and_next_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dom = tmp_path / "dom.xml"
    dom.write_text("<domain><devices><disk type='file'><target dev='vda' bus='virtio'/></disk></devices></domain>")
    info = tmp_path / "info.json"
    info.write_text(json.dumps(RBD))
    rc, out = run(capsys, "disk-xml", str(info), "--device", "/dev/rbd0", "--domain-xml", str(dom))
    assert rc == 0
    root = ET.fromstring(out["xml"])
    assert root.get("type") == "block" and root.find("source").get("dev") == "/dev/rbd0"  # type: ignore[union-attr]
    assert root.find("target").get("dev") == "vdb"  # type: ignore[union-attr]


def test_disk_xml_errors(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "disk-xml", json.dumps(RBD))
    assert rc == 2 and out["error"] == "UsageError"
    bad = {**RBD, "data": {**RBD["data"], "qos_specs": {"total_iops_sec": "lots"}}}
    rc, out = run(capsys, "disk-xml", json.dumps(bad), "--target-dev", "vdb")
    assert rc == 1 and out["error"] == "InvalidDiskConfig" and "data.qos_specs.total_iops_sec" in out["message"]
