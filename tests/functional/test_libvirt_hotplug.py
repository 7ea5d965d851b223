"""Disk hot-plug on a real private libvirtd + QEMU (TCG) guest: block device, file, names, flags, QoS, refusals.

The guest has no OS: SCSI (virtio-scsi, sdX) hot-plug and unplug need no guest cooperation; a
virtio-blk (vdX) unplug does, so the bare guest shows the "guest did not release" error path.
Every test leaves no disk, domain or secret behind (checked after each test).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any, Dict, Iterator, List

import libvirt
import pytest

from blocklink.connection import AttachedDevice
from blocklink.errors import HypervisorError
from blocklink.hypervisor import disk_xml
from blocklink.hypervisor.disk import IOTUNE_ORDER
from blocklink.testing.libvirtd import tiny_domain_xml

pytestmark = pytest.mark.libvirt
MiB = 1 << 20
TIMINGS: Dict[str, List[float]] = {}


def _timed(label: str, ms: float) -> None:
    TIMINGS.setdefault(label, []).append(ms)


@pytest.fixture(autouse=True)
def nothing_left(libvirtd: Any) -> Iterator[None]:
    yield
    left = libvirtd.leftovers()
    assert left == {"domains": [], "secrets": []}, left


@pytest.fixture(scope="module", autouse=True)
def report_timings() -> Iterator[None]:
    yield
    for label, values in sorted(TIMINGS.items()):
        print(f"\n[libvirt timing] {label}: n={len(values)} median={sorted(values)[len(values) // 2]:.0f} ms "
              f"max={max(values):.0f} ms")


@pytest.fixture
def loop_device(tmp_path: Any) -> Iterator[str]:
    """A real host block device: a loop device over a 64 MiB file (detached afterwards)."""
    img = tmp_path / "blk.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=True)


def _info(volume_id: str, **data: Any) -> Dict[str, Any]:
    return {"driver_volume_type": "iscsi", "data": {"target_portal": "127.0.0.1:3260",
                                                    "target_iqn": f"iqn.2010-10.org.openstack:{volume_id}",
                                                    "target_lun": 1, "volume_id": volume_id, **data}}


def _live(dom: Any, dev: str) -> ET.Element:
    root = ET.fromstring(dom.XMLDesc(0))
    return next(d for d in root.findall("./devices/disk") if d.find("target").get("dev") == dev)  # type: ignore[union-attr]


def _devs(host: Any, dom: Any, inactive: bool = False) -> List[str]:
    return [d.target_dev for d in host.disks(dom, inactive)]


def test_block_device_on_scsi_attach_detach(libvirt_host: Any, libvirt_domain: Any, loop_device: str) -> None:
    info = _info("3c1d0a3e-0000-4000-8000-0000000000b1", qos_specs={"total_iops_sec": "500",
                                                                  "total_bytes_sec": str(10 * MiB)},
                 discard=True, logical_block_size="512", physical_block_size="4096")
    att = libvirt_host.attach_volume(libvirt_domain, info, AttachedDevice("iscsi", path=loop_device), bus="scsi")
    _timed("attach block (scsi)", att.disk.elapsed_ms)
    assert att.target_dev == "sda" and att.disk.live and att.disk.config and att.secret_uuid is None
    assert _devs(libvirt_host, libvirt_domain) == ["sda"] == _devs(libvirt_host, libvirt_domain, True)
    # QEMU opened the device: capacity, throttling and the rest as libvirt reports them
    assert libvirt_domain.blockInfo("sda")[0] == 64 * MiB
    tune = libvirt_domain.blockIoTune("sda", libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert tune["total_iops_sec"] == 500 and tune["total_bytes_sec"] == 10 * MiB
    disk = _live(libvirt_domain, "sda")
    assert disk.get("type") == "block" and disk.find("source").get("dev") == loop_device  # type: ignore[union-attr]
    assert disk.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none", "io": "native",  # type: ignore[union-attr]
                                          "discard": "unmap"}
    assert disk.find("serial").text == "3c1d0a3e-0000-4000-8000-0000000000b1"  # type: ignore[union-attr]
    assert disk.find("alias").get("name") == "ua-3c1d0a3e-0000-4000-8000-0000000000b1"  # type: ignore[union-attr]
    assert disk.find("blockio").attrib == {"logical_block_size": "512", "physical_block_size": "4096"}  # type: ignore[union-attr]
    ms = libvirt_host.detach_volume(libvirt_domain, att)
    _timed("detach block (scsi)", ms)
    assert _devs(libvirt_host, libvirt_domain) == [] == _devs(libvirt_host, libvirt_domain, True)


def test_file_source_readonly_shareable_and_next_names(libvirt_host: Any, libvirt_domain: Any, tmp_path: Any) -> None:
    paths = []
    atts = []
    for i in range(3):
        p = tmp_path / f"vol{i}.img"
        with open(p, "wb") as f:
            f.truncate(16 * MiB)
        paths.append(str(p))
        info = _info(f"vol{i}", access_mode="ro" if i == 1 else "rw")
        info["multiattach"] = i == 2
        att = libvirt_host.attach_volume(libvirt_domain, info, AttachedDevice("iscsi", path=str(p), type="file"),
                                         bus="scsi")
        _timed("attach file (scsi)", att.disk.elapsed_ms)
        atts.append(att)
    assert [a.target_dev for a in atts] == ["sda", "sdb", "sdc"]
    assert _live(libvirt_domain, "sdb").find("readonly") is not None
    assert _live(libvirt_domain, "sdc").find("shareable") is not None
    assert _live(libvirt_domain, "sda").find("source").get("file") == paths[0]  # type: ignore[union-attr]
    libvirt_host.detach_volume(libvirt_domain, atts[1])  # a gap: the next disk takes sdb again
    att = libvirt_host.attach_volume(libvirt_domain, _info("vol9"), AttachedDevice("x", path=paths[1], type="file"),
                                     bus="scsi")
    assert att.target_dev == "sdb"
    for a in (atts[0], att, atts[2]):
        _timed("detach file (scsi)", libvirt_host.detach_volume(libvirt_domain, a))
    assert _devs(libvirt_host, libvirt_domain) == []


def test_virtio_disk_on_a_guest_that_does_not_answer(libvirt_host: Any, libvirt_domain: Any, tmp_path: Any) -> None:
    """No OS -> nobody acknowledges the ACPI unplug: a typed error after the deadline, disk still attached."""
    p = tmp_path / "v.img"
    with open(p, "wb") as f:
        f.truncate(16 * MiB)
    att = libvirt_host.attach_volume(libvirt_domain, _info("vvirtio"), AttachedDevice("x", path=str(p), type="file"))
    assert att.target_dev == "vda" and _live(libvirt_domain, "vda").find("address").get("type") == "pci"  # type: ignore[union-attr]
    t0 = time.monotonic()
    with pytest.raises(HypervisorError) as ei:
        libvirt_host.detach_volume(libvirt_domain, att, timeout=2.0)
    waited = time.monotonic() - t0
    assert "did not release disk vda" in str(ei.value) and ei.value.domain == libvirt_domain.name()
    assert 2.0 <= waited < 15.0  # the deadline, plus what a loaded machine adds; not a hang
    assert _devs(libvirt_host, libvirt_domain) == ["vda"] == _devs(libvirt_host, libvirt_domain, True)
    # the disk goes with the domain (the fixture destroys it); nothing else to undo


def test_transient_domain_is_live_only(libvirt_host: Any, loop_device: str) -> None:
    dom = libvirt_host.connection.createXML(tiny_domain_xml(f"bl-t-{uuid.uuid4().hex[:8]}"), 0)
    try:
        assert not dom.isPersistent()
        att = libvirt_host.attach_volume(dom, _info("vtrans"), AttachedDevice("x", path=loop_device), bus="scsi")
        assert (att.disk.live, att.disk.config) == (True, False)
        assert _devs(libvirt_host, dom) == ["sda"]
        _timed("detach block (scsi, transient)", libvirt_host.detach_volume(dom, att))
        assert _devs(libvirt_host, dom) == []
    finally:
        dom.destroy()


def test_stopped_domain_config_only_and_names_beyond_vdz(libvirt_host: Any, tmp_path: Any) -> None:
    dom = libvirt_host.connection.defineXML(tiny_domain_xml(f"bl-s-{uuid.uuid4().hex[:8]}"))
    try:
        p = tmp_path / "f.img"
        p.write_bytes(b"")
        names = []
        for i in range(28):
            att = libvirt_host.attach_volume(dom.name(), _info(f"v{i}"), AttachedDevice("x", path=str(p), type="file"))
            assert (att.disk.live, att.disk.config) == (False, True)
            names.append(att.target_dev)
        assert names[:2] == ["vda", "vdb"] and names[25:] == ["vdz", "vdaa", "vdab"]
        assert len(set(_devs(libvirt_host, dom, True))) == 28
        libvirt_host.detach_disk(dom, "vdaa")
        assert "vdaa" not in _devs(libvirt_host, dom, True) and len(_devs(libvirt_host, dom, True)) == 27
        assert libvirt_host.next_device_name(dom, "virtio") == "vdaa"
    finally:
        dom.undefine()


def test_constant_alias_collides(libvirt_host: Any, libvirt_domain: Any, tmp_path: Any) -> None:
    """Why we write no alias when Nova would write 'ua-None': libvirt refuses a second disk with it."""
    xmls = []
    for i in range(2):
        p = tmp_path / f"a{i}.img"
        p.write_bytes(b"\0" * 4096)
        x = ET.fromstring(disk_xml({"data": {"device_path": str(p)}}, target_dev=f"sd{'ab'[i]}", bus="scsi"))
        assert x.find("alias") is None
        x.insert(1, ET.Element("alias", {"name": "ua-None"}))
        x.set("type", "file")
        x.find("source").attrib = {"file": str(p)}  # type: ignore[union-attr]
        xmls.append(ET.tostring(x, encoding="unicode"))
    libvirt_host.attach_disk(libvirt_domain, xmls[0])
    with pytest.raises(HypervisorError) as ei:
        libvirt_host.attach_disk(libvirt_domain, xmls[1])
    assert "alias" in str(ei.value).lower()
    libvirt_host.detach_disk(libvirt_domain, "sda")
    assert _devs(libvirt_host, libvirt_domain) == []


def test_iotune_order_is_libvirts_own(libvirt_host: Any, libvirt_domain: Any, loop_device: str) -> None:
    """We write <iotune> children in the order libvirt writes them back."""
    qos = {"read_bytes_sec": "1000000", "write_bytes_sec": "2000000", "read_iops_sec": "300", "write_iops_sec": "400",
           "read_bytes_sec_max": "3000000", "write_iops_sec_max": "800", "size_iops_sec": "4096"}
    att = libvirt_host.attach_volume(libvirt_domain, _info("vtune", qos_specs=qos), AttachedDevice("x", path=loop_device),
                                     bus="scsi")
    ours = [e.tag for e in ET.fromstring(att.xml).find("iotune")]  # type: ignore[union-attr]
    theirs = [e.tag for e in _live(libvirt_domain, att.target_dev).find("iotune")]  # type: ignore[union-attr]
    assert ours == theirs == sorted(qos, key=IOTUNE_ORDER.index)
    assert [e.text for e in _live(libvirt_domain, att.target_dev).find("iotune")] == [  # type: ignore[union-attr]
        qos[k] for k in theirs]
    libvirt_host.detach_volume(libvirt_domain, att)


@pytest.mark.parametrize("iotune,outcome", [
    ("<total_iops_sec>100</total_iops_sec><total_iops_sec_max>150</total_iops_sec_max>", "applied"),
    ("<total_bytes_sec>100000</total_bytes_sec><read_bytes_sec>50000</read_bytes_sec>", "refused"),
    ("<total_iops_sec_max>100</total_iops_sec_max>", "ignored"),
    ("<total_iops_sec>100</total_iops_sec><total_iops_sec_max>50</total_iops_sec_max>", "ignored"),
])
def test_what_libvirt_does_with_the_qos_the_model_refuses(libvirt_host: Any, libvirt_domain: Any, loop_device: str,
                                                          iotune: str, outcome: str) -> None:
    """Raw XML past our checks: libvirt refuses total+read, and silently throttles nothing for a burst
    without its base or below it. The model refuses all three up front."""
    from blocklink.hypervisor.disk import IoTune, InvalidDiskConfig
    from blocklink.hypervisor.live import LibvirtHost

    values = {e.tag: int(e.text or "") for e in ET.fromstring(f"<t>{iotune}</t>")}
    raw = (f"<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/>"
           f"<source dev='{loop_device}'/><target dev='sda' bus='scsi'/><iotune>{iotune}</iotune></disk>")
    unchecked = LibvirtHost(connection=libvirt_host.connection, validate_xml=False)
    if outcome == "refused":
        with pytest.raises(HypervisorError) as ei:
            unchecked.attach_disk(libvirt_domain, raw)
        assert "total and read/write bytes_sec cannot be set at the same time" in str(ei.value)
    else:
        unchecked.attach_disk(libvirt_domain, raw)
        applied = {k: v for k, v in libvirt_domain.blockIoTune("sda", libvirt.VIR_DOMAIN_AFFECT_LIVE).items()
                   if k in values and v}
        assert applied == (values if outcome == "applied" else {})
        libvirt_host.detach_disk(libvirt_domain, "sda")
    if outcome == "applied":
        IoTune(**values)
    else:
        with pytest.raises(InvalidDiskConfig):
            IoTune(**values)
    assert _devs(libvirt_host, libvirt_domain) == [] == _devs(libvirt_host, libvirt_domain, True)


def test_virtio_disk_detach_with_a_booted_guest(libvirt_host: Any, tmp_path: Any) -> None:
    """A virtio-blk unplug needs a guest that answers ACPI: boot Debian's kernel on a busybox initramfs."""
    import glob

    from blocklink.initiator.host.wait import wait_for
    from blocklink.testing.libvirtd import tiny_initramfs

    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    assert kernels, "no kernel in /boot (linux-image-amd64)"
    log = str(tmp_path / "console.log")
    initrd = tiny_initramfs(str(tmp_path / "initrd.gz"))
    dom = libvirt_host.connection.defineXML(tiny_domain_xml(
        f"bl-k-{uuid.uuid4().hex[:8]}", memory_mib=128, kernel=kernels[-1], initrd=initrd,
        cmdline="console=ttyS0 panic=-1 quiet loglevel=1", console_log=log))
    try:
        t0 = time.monotonic()
        dom.create()

        def ready() -> Any:
            return True if os.path.exists(log) and "BLOCKLINK-GUEST-READY" in open(log, errors="replace").read() \
                else None

        wait_for(ready, timeout=300, watch=[str(tmp_path)], uevents=False, what="guest kernel")
        _timed("guest boot to /init (TCG)", (time.monotonic() - t0) * 1000)
        img = tmp_path / "v.img"
        with open(img, "wb") as f:
            f.truncate(16 * MiB)
        for i in range(2):
            att = libvirt_host.attach_volume(dom, _info(f"vk{i}"), AttachedDevice("x", path=str(img), type="file"))
            assert att.target_dev == "vda" and att.disk.live and att.disk.config
            _timed("attach file (virtio, booted guest)", att.disk.elapsed_ms)
            _timed("detach file (virtio, booted guest)", libvirt_host.detach_volume(dom, att, timeout=60))
            assert _devs(libvirt_host, dom) == [] == _devs(libvirt_host, dom, True)
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


LUKS_PASSPHRASE = "luks-passphrase-0123"


@pytest.fixture(scope="module")
def luks_template(tmp_path_factory: Any) -> Any:
    """A 16 MiB LUKS volume made once by qemu-img (passphrase through a 0600 file, never argv)."""
    d = tmp_path_factory.mktemp("luks")
    pw = d / "pw"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(LUKS_PASSPHRASE)
    img = d / "template.luks"
    argv = ["qemu-img", "create", "-q", "-f", "luks", "--object", f"secret,id=s0,file={pw}",
            "-o", "key-secret=s0,iter-time=10", str(img), "16M"]
    # qemu calibrates PBKDF2 by timing 2^15 iterations with the thread's CPU clock and refuses when that
    # reads 0 ms (seen on this loaded 2-core host); only that refusal is retried.
    for _ in range(5):
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode == 0 or "Unable to get accurate CPU usage" not in p.stderr:
            break
        img.unlink(missing_ok=True)
    assert p.returncode == 0, p.stderr
    return img, pw


def _luks_image(tmp_path: Any, template: Any) -> Any:
    import shutil

    img = tmp_path / "vol.luks"
    shutil.copyfile(template[0], img)
    return img, template[1]


def test_luks_volume_decrypted_by_qemu(libvirt_host: Any, libvirt_domain: Any, tmp_path: Any,
                                       luks_template: Any) -> None:
    """<encryption format='luks'> + a private 'volume' secret: QEMU opens the LUKS volume, the guest sees
    plaintext (16 MiB), the file holds ciphertext; detach removes the secret."""
    import libvirt_qemu

    from blocklink.masking import Secret

    img, pw = _luks_image(tmp_path, luks_template)
    info = {"driver_volume_type": "local", "data": {"volume_id": "luks-vol-1", "encrypted": True}}
    att = libvirt_host.attach_volume(libvirt_domain, info, AttachedDevice("x", path=str(img), type="file"),
                                     bus="scsi", encryption_passphrase=Secret(LUKS_PASSPHRASE))
    assert att.encryption_secret_uuid is not None and att.secret_uuid is None
    enc = ET.fromstring(att.xml).find("encryption/secret")
    assert enc is not None and enc.attrib == {"type": "passphrase", "uuid": att.encryption_secret_uuid}
    assert LUKS_PASSPHRASE not in att.xml and LUKS_PASSPHRASE not in libvirt_domain.XMLDesc(0)
    sec = libvirt_host.connection.secretLookupByUUIDString(att.encryption_secret_uuid)
    assert sec.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_VOLUME
    assert libvirt_domain.blockInfo("sda")[0] == 16 * MiB  # the LUKS payload, not the 18 MiB file
    out = libvirt_qemu.qemuMonitorCommand(libvirt_domain, f'qemu-io -d {att.disk.alias} "write -P 0x77 0 65536"',
                                          libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    assert "error" not in out.lower(), out
    libvirt_host.detach_volume(libvirt_domain, att)
    assert libvirt_host.connection.listSecrets() == []
    assert b"\x77" * 4096 not in img.read_bytes()  # ciphertext on disk ...
    check = subprocess.run(  # ... plaintext through the LUKS layer
        ["qemu-io", "--object", f"secret,id=s0,file={pw}", "--image-opts",
         f"driver=luks,key-secret=s0,file.filename={img}", "-c", "read -P 0x77 0 65536"],
        capture_output=True, text=True)
    assert check.returncode == 0 and "Pattern verification failed" not in check.stdout, check.stdout + check.stderr


def test_luks_wrong_passphrase_fails_cleanly(libvirt_host: Any, libvirt_domain: Any, tmp_path: Any,
                                             luks_template: Any) -> None:
    from blocklink.masking import Secret

    img, _ = _luks_image(tmp_path, luks_template)
    with pytest.raises(HypervisorError) as ei:
        libvirt_host.attach_volume(libvirt_domain, {"data": {"volume_id": "luks-vol-2"}},
                                   AttachedDevice("x", path=str(img), type="file"), bus="scsi",
                                   encryption_passphrase=Secret("not-the-luks-passphrase"))
    assert "not-the-luks-passphrase" not in str(ei.value) and "attaching disk sda failed" in str(ei.value)
    print(f"\n[libvirt] wrong LUKS passphrase: {ei.value}")
    assert libvirt_host.connection.listSecrets() == []
    assert _devs(libvirt_host, libvirt_domain) == [] == _devs(libvirt_host, libvirt_domain, True)


def test_audit_finds_the_secrets_blocklink_defined_and_no_record_names(libvirt_host: Any, tmp_path: Any) -> None:
    import socket

    from blocklink.attach.records import AttachmentStore
    from blocklink.audit import Auditor
    from blocklink.hypervisor.secrets import define_secret, undefine_secret

    conn = libvirt_host.connection
    orphan, kept, own = (str(uuid.uuid4()) for _ in range(3))
    define_secret(conn, "iscsi", f"blocklink iqn.2010-10.org.openstack:volume-x lun 0 {orphan}", "chap-pw", uuid=orphan)
    define_secret(conn, "iscsi", f"blocklink iqn.2010-10.org.openstack:volume-y lun 0 {kept}", "chap-pw", uuid=kept)
    define_secret(conn, "iscsi", "operator's own", "chap-pw", uuid=own)
    store = AttachmentStore(str(tmp_path / "a.db"))
    try:
        rec = store.reserve("vol-y", "inst")
        store.record_step(rec.id, "hypervisor", extra={"secret_uuid": kept}, protocol="iscsi",
                          host=socket.gethostname())
        store.transition(rec.id, ["attaching"], "attached")
        auditor = Auditor(store, libvirt=conn)
        report = auditor.audit()
        assert [o.name for o in report.orphans if o.kind == "libvirt_secret"] == [orphan]
        assert [o.name for o in report.explained if o.kind == "libvirt_secret"] == [kept]
        secrets_only = type(report)(orphans=[o for o in report.orphans if o.kind == "libvirt_secret"])
        cleaned = auditor.clean(secrets_only)  # never the rest of this shared host's orphans
        assert [o.name for o in cleaned.removed] == [orphan] and cleaned.refused == []
        assert sorted(conn.listSecrets()) == sorted([kept, own])
    finally:
        store.close()
        for u in (orphan, kept, own):
            undefine_secret(conn, u)
