"""QEMU-native iSCSI disks with CHAP on a real private libvirtd + TCG guest, against a real tgtd on 127.0.0.1.

QEMU's own initiator (libiscsi) logs in to a TgtTarget export with the initiator name its ACL
admits and the CHAP password from a private libvirt ``iscsi`` secret that the attach defines and
the detach removes. Data QEMU writes lands in the target's backing file. A wrong password or an
initiator the ACL does not admit fails the attach cleanly: no disk, no secret, no session.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Any, Iterator

import libvirt
import libvirt_qemu
import pytest

from blocklink.errors import HypervisorError
from blocklink.masking import Secret
from blocklink.testing.tgt import TgtDaemon

pytestmark = [pytest.mark.libvirt, pytest.mark.tgt]
MiB = 1 << 20
INITIATOR = "iqn.1994-05.com.example:blocklink-libvirt-test"
HMP = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP


@pytest.fixture
def export(tgtd: TgtDaemon, tmp_path: Any) -> Iterator[Any]:
    """A 64 MiB CHAP-protected export; returns (target helper, volume id, backing file)."""
    target = tgtd.target(backing_dir=str(tmp_path))
    vid = f"lv{int(time.time() * 1000) % 10**9}"
    exp = target.create_export(vid, size=64 * MiB)
    try:
        yield target, vid, exp.device_path
    finally:
        target.remove_export(vid)


@pytest.fixture(autouse=True)
def nothing_left(libvirtd: Any) -> Iterator[None]:
    yield
    left = libvirtd.leftovers()
    assert left == {"domains": [], "secrets": []}, left


def _sessions(tgtd: TgtDaemon, iqn: str) -> Any:
    state = tgtd.admin.find(iqn)
    return [] if state is None else [s.initiator for s in state.sessions]


def test_iscsi_network_disk_with_chap(tgtd: TgtDaemon, export: Any, libvirt_host: Any, libvirt_domain: Any) -> None:
    target, vid, backing = export
    info = target.initialize_connection(vid, {"host": "compute1", "initiator": INITIATOR})
    assert info.chap and info.auth_password is not None
    password = info.auth_password.reveal()
    att = libvirt_host.attach_volume(libvirt_domain, info, bus="scsi", initiator_iqn=INITIATOR)
    print(f"\n[libvirt timing] attach iscsi+CHAP (scsi): {att.disk.elapsed_ms:.0f} ms")
    disk = ET.fromstring(att.xml)
    t = info.primary
    assert disk.find("source").attrib == {"protocol": "iscsi", "name": f"{t.iqn}/{t.lun}"}  # type: ignore[union-attr]
    assert disk.find("source/host").attrib == {"name": "127.0.0.1", "port": str(tgtd.port)}  # type: ignore[union-attr]
    assert disk.find("auth/secret").attrib == {"type": "iscsi", "uuid": att.secret_uuid}  # type: ignore[union-attr]
    assert password not in att.xml and password not in libvirt_domain.XMLDesc(0)
    sec = libvirt_host.connection.secretLookupByUUIDString(att.secret_uuid)
    assert sec.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_ISCSI
    with pytest.raises(libvirt.libvirtError):
        sec.value()  # private
    # QEMU is logged in (the target shows its session) and sees the LUN
    assert _sessions(tgtd, t.iqn) == [INITIATOR]
    assert libvirt_domain.blockInfo(att.target_dev)[0] == 64 * MiB
    out = libvirt_qemu.qemuMonitorCommand(
        libvirt_domain, f'qemu-io -d {att.disk.alias} "write -P 0xc3 {5 * MiB} 65536"', HMP)
    assert "error" not in out.lower(), out

    ms = libvirt_host.detach_volume(libvirt_domain, att)
    print(f"[libvirt timing] detach iscsi (scsi): {ms:.0f} ms")
    assert [d.target_dev for d in libvirt_host.disks(libvirt_domain)] == []
    assert att.secret_uuid not in libvirt_host.connection.listSecrets()
    assert _sessions(tgtd, t.iqn) == []  # QEMU logged out
    with open(backing, "rb") as f:
        f.seek(5 * MiB)
        assert f.read(65536) == b"\xc3" * 65536


@pytest.mark.parametrize("what", ["wrong CHAP password", "initiator not in the ACL"])
def test_refused_login_fails_cleanly(tgtd: TgtDaemon, export: Any, libvirt_host: Any, libvirt_domain: Any,
                                     what: str) -> None:
    target, vid, _ = export
    info = target.initialize_connection(vid, {"host": "compute1", "initiator": INITIATOR})
    initiator = INITIATOR
    if what == "wrong CHAP password":
        info = info.replace(auth_password=Secret("not-the-password-1234"))
    else:
        initiator = "iqn.1994-05.com.example:someone-else"
    t0 = time.monotonic()
    with pytest.raises(HypervisorError) as ei:
        libvirt_host.attach_volume(libvirt_domain, info, bus="scsi", initiator_iqn=initiator)
    print(f"\n[libvirt timing] refused iscsi attach ({what}): {(time.monotonic() - t0) * 1000:.0f} ms: {ei.value}")
    assert "attaching disk sda failed" in str(ei.value)
    assert "not-the-password-1234" not in str(ei.value)
    assert libvirt_host.connection.listSecrets() == []
    assert [d.target_dev for d in libvirt_host.disks(libvirt_domain)] == []
    assert [d.target_dev for d in libvirt_host.disks(libvirt_domain, inactive=True)] == []
    assert _sessions(tgtd, info.primary.iqn) == []
