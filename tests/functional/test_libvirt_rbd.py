"""QEMU-native RBD disks on a real private libvirtd + TCG guest, against the real throwaway Ceph (cephx on).

The cephx key reaches QEMU only through a private libvirt ``ceph`` secret; data written by QEMU
lands in the cluster (read back with ``rbd export``); detach drops QEMU's watch on the image and the
secret the attach defined. A wrong key fails the attach cleanly, leaving no disk and no secret.
"""

from __future__ import annotations

import os
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any, Iterator

import libvirt
import libvirt_qemu
import pytest

from blocklink.errors import HypervisorError
from blocklink.hypervisor.secrets import define_secret, undefine_secret
from blocklink.masking import Secret

pytestmark = [pytest.mark.libvirt, pytest.mark.ceph]
MiB = 1 << 20
HMP = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP


@pytest.fixture(autouse=True)
def nothing_left(libvirtd: Any) -> Iterator[None]:
    yield
    left = libvirtd.leftovers()
    assert left == {"domains": [], "secrets": []}, left


@pytest.fixture(scope="module")
def cephx_user(ceph_cluster: Any) -> Any:
    """A pool-restricted cephx user (``profile rbd``) for QEMU, and its key."""
    return "libvirt", Secret(ceph_cluster.create_user("libvirt"))


def _qemu_write(dom: Any, alias: str, pattern: int, offset: int, length: int) -> None:
    """Write through QEMU's own block layer (librbd here), as the guest's disk would."""
    out = libvirt_qemu.qemuMonitorCommand(dom, f'qemu-io -d {alias} "write -P {pattern:#x} {offset} {length}"', HMP)
    assert "error" not in out.lower(), out


def test_rbd_network_disk_attach_write_detach(ceph_cluster: Any, rbd_volume: str, cephx_user: Any,
                                              libvirt_host: Any, libvirt_domain: Any, tmp_path: Any) -> None:
    user, key = cephx_user
    secret_uuid = str(uuid.uuid4())
    info = ceph_cluster.rbd_target(client_user=user, secret_uuid=secret_uuid).initialize_connection(rbd_volume)
    image = f"volume-{rbd_volume}"
    assert ceph_cluster.watchers(image) == []

    att = libvirt_host.attach_volume(libvirt_domain, info, bus="scsi", secret_value=key)
    print(f"\n[libvirt timing] attach rbd (scsi): {att.disk.elapsed_ms:.0f} ms")
    assert att.secret_uuid == secret_uuid and att.target_dev == "sda"
    disk = ET.fromstring(att.xml)
    assert disk.get("type") == "network"
    assert [h.attrib for h in disk.findall("source/host")] == [
        {"name": h, "port": p} for h, p in zip(info.hosts, info.ports)]
    assert disk.find("auth").get("username") == user  # type: ignore[union-attr]
    assert key.reveal() not in att.xml and key.reveal() not in libvirt_domain.XMLDesc(0)
    # the secret is private: libvirt never hands the key back out
    sec = libvirt_host.connection.secretLookupByUUIDString(secret_uuid)
    assert sec.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_CEPH
    with pytest.raises(libvirt.libvirtError):
        sec.value()
    # QEMU opened the image (capacity, a watch on it) and writes reach the cluster
    assert libvirt_domain.blockInfo("sda")[0] == 64 * MiB
    assert len(ceph_cluster.watchers(image)) == 1
    _qemu_write(libvirt_domain, att.disk.alias, 0x5A, 3 * MiB, 64 * 1024)

    ms = libvirt_host.detach_volume(libvirt_domain, att)
    print(f"[libvirt timing] detach rbd (scsi): {ms:.0f} ms")
    assert ceph_cluster.watchers(image) == []
    assert secret_uuid not in libvirt_host.connection.listSecrets()
    assert [d.target_dev for d in libvirt_host.disks(libvirt_domain)] == []
    out = str(tmp_path / "export.raw")
    ceph_cluster.export_image(image, out)
    with open(out, "rb") as f:
        f.seek(3 * MiB - 512)
        chunk = f.read(64 * 1024 + 1024)
    assert chunk[:512] == b"\0" * 512 and chunk[512:512 + 64 * 1024] == b"\x5a" * (64 * 1024)
    assert chunk[-512:] == b"\0" * 512


def test_preprovisioned_secret_is_used_and_kept(ceph_cluster: Any, rbd_volume: str, cephx_user: Any,
                                               libvirt_host: Any, libvirt_domain: Any) -> None:
    """Nova's model: the operator defined the ceph secret once per host; attach/detach leave it alone."""
    user, key = cephx_user
    conn = libvirt_host.connection
    secret_uuid = define_secret(conn, "ceph", f"client.{user} host secret", key)
    try:
        info = ceph_cluster.rbd_target(client_user=user, secret_uuid=secret_uuid).initialize_connection(rbd_volume)
        att = libvirt_host.attach_volume(libvirt_domain, info.to_dict(), bus="scsi")
        assert att.secret_uuid is None  # not ours
        assert libvirt_domain.blockInfo(att.target_dev)[0] == 64 * MiB
        libvirt_host.detach_volume(libvirt_domain, att)
        assert conn.listSecrets() == [secret_uuid]
    finally:
        undefine_secret(conn, secret_uuid)


def test_wrong_cephx_key_fails_cleanly(ceph_cluster: Any, rbd_volume: str, cephx_user: Any,
                                       libvirt_host: Any, libvirt_domain: Any, tmp_path: Any) -> None:
    """A key the monitors refuse: QEMU's librados gives up after client_mount_timeout (3 s here, via the
    disk's <config file>; the default is 300 s); no disk, no secret is left."""
    user, key = cephx_user
    raw = key.reveal()
    # a cephx key is base64 of type(2) + created(8) + length(2) + secret(16 bytes): change the secret part
    wrong = Secret(raw[:20] + ("A" if raw[20] != "A" else "B") + raw[21:])
    conf = tmp_path / "ceph-client.conf"
    conf.write_text("[global]\nclient_mount_timeout = 3\n")
    os.chmod(conf, 0o644)
    info = ceph_cluster.rbd_target(client_user=user, secret_uuid=str(uuid.uuid4())).initialize_connection(rbd_volume)
    t0 = time.monotonic()
    with pytest.raises(HypervisorError) as ei:
        libvirt_host.attach_volume(libvirt_domain, info, bus="scsi", secret_value=wrong, rbd_config_file=str(conf))
    took = time.monotonic() - t0
    print(f"\n[libvirt timing] refused rbd attach (wrong key): {took * 1000:.0f} ms")
    assert took < 60 and "attaching disk sda failed" in str(ei.value)
    assert raw not in str(ei.value) and wrong.reveal() not in str(ei.value)
    assert libvirt_host.connection.listSecrets() == []
    assert [d.target_dev for d in libvirt_host.disks(libvirt_domain)] == []
    assert [d.target_dev for d in libvirt_host.disks(libvirt_domain, inactive=True)] == []
    assert ceph_cluster.watchers(f"volume-{rbd_volume}") == []
