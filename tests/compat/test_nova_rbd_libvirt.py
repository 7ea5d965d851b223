"""Nova's LibvirtNetVolumeDriver on the facade: Cinder's RBD connection info from the throwaway Ceph ->
the disk XML Nova builds -> hot-plugged by a real libvirtd into a running QEMU, data reaching the
cluster, unplugged again. The same on the real os-brick (Nova's RBD driver imports it only)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Iterator

import libvirt_qemu
import pytest

from blocklink.hypervisor.secrets import define_secret, undefine_secret
from blocklink.masking import Secret
from tests.compat.conftest import FACADE, REAL, plain

pytestmark = [pytest.mark.libvirt, pytest.mark.ceph]
MiB = 1 << 20


@pytest.fixture
def ceph_secret(ceph_cluster: Any, libvirt_host: Any) -> Iterator[Any]:
    """Nova's model: the operator defined the cephx key as a libvirt ``ceph`` secret once per host."""
    user = "novacompat"
    key = Secret(ceph_cluster.create_user(user))
    uuid = define_secret(libvirt_host.connection, "ceph", f"client.{user} secret", key)
    try:
        yield user, uuid
    finally:
        undefine_secret(libvirt_host.connection, uuid)


@pytest.mark.parametrize("facade", [True, False], ids=["facade", "os-brick"])
def test_nova_rbd_disk_xml_hotplugs_into_libvirt(scenario: Any, facade: bool, ceph_cluster: Any, rbd_volume: str,
                                                 ceph_secret: Any, libvirtd: Any, libvirt_host: Any,
                                                 libvirt_domain: Any, tmp_path: Any) -> None:
    user, secret_uuid = ceph_secret
    info = ceph_cluster.rbd_target(client_user=user, secret_uuid=secret_uuid).initialize_connection(rbd_volume)
    ci = dict(plain(info), serial=rbd_volume)
    res = scenario("nova_rbd_config", facade=facade, libvirt_uri=libvirtd.uri, connection_info=ci,
                   disk_info={"bus": "scsi", "dev": "sda", "type": "disk", "unit": 0})
    assert res["library"] == (FACADE if facade else REAL)
    disk = ET.fromstring(res["xml"])
    src = disk.find("source")
    assert disk.get("type") == "network" and src is not None and src.get("protocol") == "rbd"
    assert src.get("name") == f"{ceph_cluster.pool}/volume-{rbd_volume}"
    assert disk.find("auth/secret").get("uuid") == secret_uuid  # type: ignore[union-attr]
    assert disk.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none", "discard": "unmap"}

    att = libvirt_host.attach_disk(libvirt_domain, res["xml"])
    try:
        assert att.target_dev == "sda" and att.alias == f"ua-{rbd_volume}"
        assert libvirt_domain.blockInfo("sda")[0] == 64 * MiB
        assert len(ceph_cluster.watchers(f"volume-{rbd_volume}")) == 1  # QEMU's librbd opened it
        out = libvirt_qemu.qemuMonitorCommand(libvirt_domain, f'qemu-io -d {att.alias} "write -P 0x6b 1M 128k"',
                                              libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        assert "error" not in out.lower(), out
    finally:
        libvirt_host.detach_disk(libvirt_domain, "sda")
    assert ceph_cluster.watchers(f"volume-{rbd_volume}") == []
    exported = tmp_path / "export.raw"
    ceph_cluster.export_image(f"volume-{rbd_volume}", str(exported))
    with open(exported, "rb") as f:
        f.seek(1 * MiB)
        assert f.read(128 * 1024) == b"\x6b" * (128 * 1024)
