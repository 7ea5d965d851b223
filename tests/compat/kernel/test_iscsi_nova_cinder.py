"""Nova's and Cinder's iSCSI attach code, unmodified, against LIO with CHAP in the real kernel.

Nova: ``LibvirtDriver.get_volume_connector`` -> LIO export for that connector ->
``LibvirtISCSIVolumeDriver.connect_volume`` -> ``get_config`` (the XML Nova would hot-plug) ->
data checked through the device -> ``disconnect_volume`` (``device_info`` None) in a new process,
as after a nova-compute restart. Cinder: ``brick_get_connector_properties`` -> ``brick_get_connector``
-> ``connect_volume`` -> ``check_valid_device`` -> ``disconnect_volume(force=True, ignore_errors=True)``.
Each on the facade and on the real os-brick; nothing may be left (``leak_check``).
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from blocklink.target.lio import LioTarget
from blocklink.testing.guest.blockio import direct_read, direct_write
from tests.compat.conftest import FACADE, REAL, plain

pytestmark = pytest.mark.kernel
MiB = 1 << 20
BOTH = pytest.mark.parametrize("facade", [True, False], ids=["facade", "os-brick"])


@pytest.fixture
def lio(lio_clean: Any, tmp_path: Any) -> LioTarget:
    return LioTarget(portals=["127.0.0.1:3260"], backing_dir=str(tmp_path), lock_path=str(tmp_path / "target-locks"))


def _export(lio: LioTarget, tmp_path: Any, volume_id: str, connector: Any) -> Any:
    lio.create_export(volume_id, size=32 * MiB, chap=True)
    backing = tmp_path / f"volume-{volume_id}"
    with open(backing, "r+b") as f:  # something to recognise at the start of the volume
        f.write(hashlib.sha256(volume_id.encode()).digest() * 128)
    info = lio.initialize_connection(volume_id, connector)
    return info.replace(targets=info.targets[:1], form="single"), str(backing)


def _no_sessions() -> bool:
    return not os.listdir("/sys/class/iscsi_session") and not [
        n for n in os.listdir("/sys/block") if n.startswith("sd")]


@BOTH
def test_nova_libvirt_iscsi_driver_with_chap(scenario: Any, facade: bool, lio: LioTarget, iscsid: Any,
                                            tmp_path: Any) -> None:
    lib = FACADE if facade else REAL
    conn = scenario("nova_volume_connector", facade=facade)
    assert conn["library"] == lib and conn["connector"]["initiator"]
    info, backing = _export(lio, tmp_path, f"nova{int(facade)}", conn["connector"])
    assert info.auth_method == "CHAP" and info.auth_password
    ci = dict(plain(info), serial=info.volume_id)
    disk_info = {"bus": "virtio", "dev": "vdb", "type": "disk"}
    res = scenario("nova_iscsi", facade=facade, step="connect", connection_info=ci, disk_info=disk_info)
    assert res["library"] == lib and res["connector_class"].startswith(lib)
    path = res["connection_info"]["data"]["device_path"]
    assert path.startswith("/dev/sd") and os.path.exists(path)
    disk = ET.fromstring(res["xml"])
    assert disk.get("type") == "block" and disk.find("source").get("dev") == path  # type: ignore[union-attr]
    assert disk.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none", "io": "native"}
    assert direct_read(path, 4096) == hashlib.sha256(info.volume_id.encode()).digest() * 128
    data = os.urandom(MiB)
    direct_write(path, data, offset=4 * MiB)
    with open(backing, "rb") as f:
        f.seek(4 * MiB)
        assert f.read(MiB) == data  # through the device to LIO's backstore

    res = scenario("nova_iscsi", facade=facade, step="disconnect", connection_info=res["connection_info"])
    assert not os.path.exists(path) and _no_sessions()
    lio.terminate_connection(info.volume_id, conn["connector"])
    lio.remove_export(info.volume_id)


@BOTH
def test_cinder_iscsi_attach_check_detach_with_chap(scenario: Any, facade: bool, lio: LioTarget, iscsid: Any,
                                                    tmp_path: Any) -> None:
    props = scenario("cinder_connector_properties", facade=facade, cinder={"my_ip": "127.0.0.1"})["connector"]
    info, backing = _export(lio, tmp_path, f"cinder{int(facade)}", props)
    res = scenario("cinder_attach_check_detach", facade=facade, connection_info=plain(info))
    assert res["library"] == (FACADE if facade else REAL) and res["connector_is_iscsi"] == "ISCSIConnector"
    assert res["valid"] is True and res["device"]["path"].startswith("/dev/sd")
    assert res["device"]["scsi_wwn"]
    with open(backing, "rb") as f:
        assert res["head_sha256"] == hashlib.sha256(f.read(4096)).hexdigest()
    assert res["still_there"] is False and _no_sessions()
    lio.terminate_connection(info.volume_id, props)
    lio.remove_export(info.volume_id)
