"""Nova's and Cinder's attach code, unmodified, against LIO (iSCSI with CHAP) and nvmet (NVMe/TCP) in
the real kernel.

Nova: ``LibvirtDriver.get_volume_connector`` -> an export for that connector -> the volume driver's
``connect_volume`` -> ``get_config`` (the XML Nova would hot-plug) -> data checked through the
device -> ``disconnect_volume`` (``device_info`` None, as Nova calls it). Cinder:
``brick_get_connector_properties`` -> ``brick_get_connector`` -> ``connect_volume`` ->
``check_valid_device`` -> ``disconnect_volume(force=True, ignore_errors=True)``. Each on the facade
and on the real os-brick, in one service interpreter per test; nothing may be left (``leak_check``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
import xml.etree.ElementTree as ET
from typing import Any, Iterator

import pytest

from blocklink.target.lio import LioTarget
from blocklink.target.nvmet import NvmetTarget
from tests.harness.guest.blockio import direct_read, direct_write
from tests.compat.conftest import FACADE, REAL, plain

pytestmark = pytest.mark.kernel
MiB = 1 << 20
BOTH = pytest.mark.parametrize("facade", [True, False], ids=["facade", "os-brick"])


@pytest.fixture
def lio(lio_clean: Any, tmp_path: Any) -> LioTarget:
    return LioTarget(portals=["127.0.0.1:3260"], backing_dir=str(tmp_path), lock_path=str(tmp_path / "target-locks"))


@pytest.fixture
def nvmet(modprobe: Any) -> Iterator[NvmetTarget]:
    """nvmet on 127.0.0.1:4420, backing files on tmpfs (/run: nvmet cannot serve files from overlayfs)."""
    modprobe("nvmet", "nvmet-tcp", "nvme-tcp", "nvme-fabrics")
    work = tempfile.mkdtemp(prefix="compat-nvme-", dir="/run")
    target = NvmetTarget(portals=["127.0.0.1:4420"], backing_dir=work, lock_path=os.path.join(work, "locks"))
    try:
        yield target
    finally:
        for vid in target.list_exports():
            target.remove_export(vid)
        shutil.rmtree(work)


def _mark(path: str, volume_id: str) -> bytes:
    head = hashlib.sha256(volume_id.encode()).digest() * 128
    with open(path, "r+b") as f:  # something to recognise at the start of the volume
        f.write(head)
    return head


def _no_devices() -> bool:
    return not os.listdir("/sys/class/iscsi_session") and not [
        n for n in os.listdir("/sys/block") if n.startswith(("sd", "nvme"))]


def _nova_attach_detach(service: Any, facade: bool, driver: str, info: Any, backing: str, prefix: str,
                        io: Any) -> None:
    lib = FACADE if facade else REAL
    head = _mark(backing, info.volume_id) if os.path.exists(backing) else None
    ci = dict(plain(info), serial=info.volume_id)
    res = service("nova_volume_driver", facade=facade, driver=driver, step="connect", connection_info=ci,
                  disk_info={"bus": "virtio", "dev": "vdb", "type": "disk"})
    assert res["library"] == lib and res["connector_class"].startswith(lib)
    path = res["connection_info"]["data"]["device_path"]
    assert path.startswith(prefix) and os.path.exists(path)
    disk = ET.fromstring(res["xml"])
    assert disk.get("type") == "block" and disk.find("source").get("dev") == path  # type: ignore[union-attr]
    driver_attrs = {"name": "qemu", "type": "raw", "cache": "none"}
    if io:
        driver_attrs["io"] = io
    assert disk.find("driver").attrib == driver_attrs  # type: ignore[union-attr]
    if head is not None:
        assert direct_read(path, 4096) == head
    data = os.urandom(MiB)
    direct_write(path, data, offset=4 * MiB)
    assert direct_read(path, MiB, offset=4 * MiB) == data
    if head is not None:
        with open(backing, "rb") as f:
            f.seek(4 * MiB)
            assert f.read(MiB) == data  # through the device to the target's backstore
    done = service("nova_volume_driver", facade=facade, driver=driver, step="disconnect",
                   connection_info=res["connection_info"])
    assert not os.path.exists(path) and _no_devices()
    print(f"[compat timing] {driver} on {lib}: connect {res['seconds']:.2f} s, disconnect {done['seconds']:.2f} s")


@BOTH
def test_nova_iscsi_driver_with_chap(service: Any, facade: bool, lio: LioTarget, iscsid: Any, tmp_path: Any) -> None:
    conn = service("nova_volume_connector", facade=facade)["connector"]
    assert conn["initiator"]
    vid = f"nova{int(facade)}"
    lio.create_export(vid, size=32 * MiB, chap=True)
    info = lio.initialize_connection(vid, conn)
    info = info.replace(targets=info.targets[:1], form="single")
    assert info.auth_method == "CHAP" and info.auth_password
    _nova_attach_detach(service, facade, "iscsi.LibvirtISCSIVolumeDriver", info, str(tmp_path / f"volume-{vid}"),
                        "/dev/sd", "native")
    lio.terminate_connection(vid, conn)
    lio.remove_export(vid)


@BOTH
def test_nova_nvme_driver(service: Any, facade: bool, nvmet: NvmetTarget) -> None:
    conn = service("nova_volume_connector", facade=facade)["connector"]
    assert conn["nqn"].startswith("nqn.")
    vid = str(uuid.uuid4())
    nvmet.create_export(vid, size=32 * MiB)
    info = nvmet.initialize_connection(vid, conn)
    _nova_attach_detach(service, facade, "nvme.LibvirtNVMEVolumeDriver", info, "", "/dev/nvme", None)
    nvmet.remove_export(vid)


@BOTH
def test_cinder_iscsi_attach_check_detach_with_chap(service: Any, facade: bool, lio: LioTarget, iscsid: Any,
                                                    tmp_path: Any) -> None:
    props = service("cinder_connector_properties", facade=facade, cinder={"my_ip": "127.0.0.1"})["connector"]
    vid = f"cinder{int(facade)}"
    lio.create_export(vid, size=32 * MiB, chap=True)
    backing = str(tmp_path / f"volume-{vid}")
    _mark(backing, vid)
    info = lio.initialize_connection(vid, props)
    info = info.replace(targets=info.targets[:1], form="single")
    res = service("cinder_attach_check_detach", facade=facade, connection_info=plain(info))
    assert res["library"] == (FACADE if facade else REAL) and res["connector_is_iscsi"] == "ISCSIConnector"
    assert res["valid"] is True and res["device"]["path"].startswith("/dev/sd") and res["device"]["scsi_wwn"]
    with open(backing, "rb") as f:
        assert res["head_sha256"] == hashlib.sha256(f.read(4096)).hexdigest()
    assert res["still_there"] is False and _no_devices()
    lio.terminate_connection(vid, props)
    lio.remove_export(vid)
