"""Nova's and Cinder's attach code, unmodified, against LIO (iSCSI with CHAP) and nvmet (NVMe/TCP) in
the real kernel.

Nova: ``LibvirtDriver.get_volume_connector`` -> an export for that connector -> the volume driver's
``connect_volume`` -> ``get_config`` (the XML Nova would hot-plug) -> data checked through the
device -> (iSCSI: the target grows, the driver's ``extend_volume``) -> ``disconnect_volume``
(``device_info`` None, as Nova calls it); iSCSI single path with CHAP and multipath over two portals.
The Nova tests share one Nova interpreter per library (the session's ``nova`` fixture). Cinder:
``brick_get_connector_properties`` -> ``brick_get_connector`` -> ``connect_volume`` ->
``check_valid_device`` -> ``disconnect_volume(force=True, ignore_errors=True)``. Each on the facade
and on the real os-brick, in one service interpreter per test; nothing may be left (``leak_check``).
"""

from __future__ import annotations

import glob
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
from tests.harness.guest.blockio import block_size, direct_read, direct_write
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
                        io: Any, grow: Any = None, **nova_conf: Any) -> None:
    lib = FACADE if facade else REAL
    head = _mark(backing, info.volume_id) if os.path.exists(backing) else None
    ci = dict(plain(info), serial=info.volume_id)
    res = service("nova_volume_driver", facade=facade, driver=driver, step="connect", connection_info=ci,
                  disk_info={"bus": "virtio", "dev": "vdb", "type": "disk"}, **nova_conf)
    assert res["library"] == lib and res["connector_class"].startswith(lib)
    path = res["connection_info"]["data"]["device_path"]
    assert os.path.realpath(path).startswith(prefix) and os.path.exists(path)
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
    if grow is not None:  # the target grows the volume; Nova's driver extends it on the host
        size = block_size(path) + 16 * MiB
        grow(size)
        ext = service("nova_volume_driver", facade=facade, driver=driver, step="extend", requested_size=size,
                      connection_info=res["connection_info"], **nova_conf)
        assert ext["new_size"] == size == block_size(path)
        direct_write(path, data, offset=size - MiB)
        assert direct_read(path, MiB, offset=size - MiB) == data
    done = service("nova_volume_driver", facade=facade, driver=driver, step="disconnect",
                   connection_info=res["connection_info"], **nova_conf)
    assert not os.path.exists(path) and _no_devices()
    print(f"[compat timing] {driver} on {lib}: connect {res['seconds']:.2f} s, disconnect {done['seconds']:.2f} s")


def resize_fileio(name: str, backing: str, size: int) -> None:
    """Grow a LIO fileio backstore as targetcli does: the file, then its fd_dev_size."""
    os.truncate(backing, size)
    for control in glob.glob(f"/sys/kernel/config/target/core/fileio_*/{name}/control"):
        with open(control, "w") as f:
            f.write(f"fd_dev_size={size}")


@BOTH
def test_nova_iscsi_driver_with_chap(nova_service: Any, facade: bool, lio: LioTarget, iscsid: Any, tmp_path: Any) -> None:
    service = nova_service(facade)
    conn = service("nova_volume_connector", facade=facade)["connector"]
    assert conn["initiator"]
    vid = f"nova{int(facade)}"
    lio.create_export(vid, size=32 * MiB, chap=True)
    info = lio.initialize_connection(vid, conn)
    info = info.replace(targets=info.targets[:1], form="single")
    assert info.auth_method == "CHAP" and info.auth_password
    backing = str(tmp_path / f"volume-{vid}")
    # the real os-brick's extend_volume runs lsscsi (scripts/debian-packages.txt installs it)
    assert facade or shutil.which("lsscsi"), "lsscsi is not installed: run scripts/bootstrap"
    _nova_attach_detach(service, facade, "iscsi.LibvirtISCSIVolumeDriver", info, backing, "/dev/sd", "native",
                        grow=lambda size: resize_fileio(f"volume-{vid}", backing, size))
    lio.terminate_connection(vid, conn)
    lio.remove_export(vid)


@BOTH
def test_nova_iscsi_driver_multipath(nova_service: Any, facade: bool, lio_clean: Any, iscsid: Any, multipathd: Any,
                                     tmp_path: Any) -> None:
    """``[libvirt] volume_use_multipath``: Nova's connector says multipath, Cinder's dict lists both
    portals, the driver gives a dm-multipath device over two paths."""
    service = nova_service(facade)
    mp = {"nova_libvirt": {"volume_use_multipath": True}}
    conn = service("nova_volume_connector", facade=facade, **mp)["connector"]
    assert conn["multipath"] is True
    lio = LioTarget(portals=["127.0.0.1:3260", "127.0.0.2:3260"], backing_dir=str(tmp_path),
                    lock_path=str(tmp_path / "target-locks"))
    vid = f"novamp{int(facade)}"
    lio.create_export(vid, size=32 * MiB, chap=True)
    info = lio.initialize_connection(vid, conn)
    assert len(info.targets) == 2
    _nova_attach_detach(service, facade, "iscsi.LibvirtISCSIVolumeDriver", info, str(tmp_path / f"volume-{vid}"),
                        "/dev/dm-", "native", **mp)
    assert not [n for n in os.listdir("/sys/block") if n.startswith("dm-")]
    lio.terminate_connection(vid, conn)
    lio.remove_export(vid)


@BOTH
def test_nova_nvme_driver(nova_service: Any, facade: bool, nvmet: NvmetTarget) -> None:
    service = nova_service(facade)
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
