"""AttachFlow's host-side layers on the real kernel: an encrypted iSCSI (LIO) volume opened with dm-crypt
by the flow (the domain's disk is the /dev/mapper device), and a staged volume (mkfs once, mount,
publish) detached and attached again with its files intact. Each test checks that nothing is left: no
dm-crypt mapping, no mount, no session (the folder's ``leak_check``), no active record.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from typing import Any, Dict, Optional, Set

import pytest

from blocklink.attach.flow import AttachFailed, AttachFlow, VolumeSpec
from blocklink.attach.records import ACTIVE, AttachmentStore
from blocklink.encryption import LuksEncryptor, StaticKeyManager, mapping_name
from blocklink.executor import ProcessExecutor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.iscsi import ISCSIConnector
from blocklink.masking import Secret
from blocklink.staging import Stager
from blocklink.staging.mountinfo import MountTable
from blocklink.target.lio import LioTarget
from tests.harness.guest.blockio import direct_read, direct_write

pytestmark = pytest.mark.kernel

MiB = 1 << 20
# a fixed small PBKDF cost: cryptsetup's benchmark alone takes ~40 s under TCG (see test_encryption.py)
FAST_LUKS2 = {"pbkdf_memory_kib": 32, "pbkdf_force_iterations": 4}
ENCRYPTION = {"provider": "luks2", "control_location": "front-end", "encryption_key_id": "vol-key"}


class SinglePathLio(LioTarget):
    """LIO with the single-portal connection info Cinder sends without multipath."""

    def initialize_connection(self, volume_id: str, host_connector: Any, **kw: Any) -> Any:
        info = super().initialize_connection(volume_id, host_connector, **kw)
        return info.replace(targets=info.targets[:1], form="single")


class XmlOnlyHypervisor:
    """Stands in for LibvirtHost (the guest runs no libvirtd): builds the real ``<disk>`` XML for what the
    flow hands it and keeps it "plugged" until detached."""

    def __init__(self) -> None:
        self.plugged: Dict[str, str] = {}

    def next_device_name(self, domain: str, bus: str, reserved: Any = ()) -> str:
        return next(f"vd{c}" for c in "bcdefgh" if f"vd{c}" not in self.plugged and f"vd{c}" not in reserved)

    def attach_volume(self, domain: str, info: Any, device: Any, *, bus: str = "virtio",
                      target_dev: Optional[str] = None, **opts: Any) -> Any:
        from blocklink.hypervisor import disk_xml

        xml = disk_xml(info, device, target_dev=target_dev or "vdb", bus=bus, **opts)
        self.plugged[target_dev or "vdb"] = xml

        class Att:
            secret_uuid = None
            encryption_secret_uuid = None
        att = Att()
        att.xml = xml  # type: ignore[attr-defined]
        return att

    def find_disk(self, domain: str, target_dev: Optional[str]) -> Any:
        return self.plugged.get(target_dev or "")

    def detach_volume(self, domain: str, att: Any) -> None:
        self.plugged.pop(att.disk.target_dev, None)


def mounts() -> Set[str]:
    return {e.mount_point for e in MountTable.read(HostPaths()).entries}


@pytest.fixture
def world(lio_clean: Any, iscsid: Any, modprobe: Any, tmp_path: Any) -> Any:
    modprobe("dm_crypt", "ext4")

    class World:
        lio = SinglePathLio(portals=["127.0.0.1:3260"], backing_dir=str(tmp_path),
                            lock_path=str(tmp_path / "target-locks"))
        conn = ISCSIConnector(executor=ProcessExecutor(), lock_path=str(tmp_path / "locks"), timeout=60)
        store = AttachmentStore(str(tmp_path / "attachments.db"))
        stager = Stager(state_dir=str(tmp_path / "staging-state"), lock_path=str(tmp_path / "locks"))
        hv = XmlOnlyHypervisor()
        key = Secret(os.urandom(32).hex())

        def flow(self, hypervisor: Any = None, **kw: Any) -> AttachFlow:
            return AttachFlow(store=self.store, targets={"iscsi": self.lio}, hypervisor=hypervisor,
                              connector_factory=lambda p: self.conn,
                              connector_properties=lambda: dict(self.conn.get_connector_properties(), host="guest",
                                                                multipath=False),
                              key_manager=StaticKeyManager({"vol-key": self.key}),
                              encryptor_factory=lambda spec: LuksEncryptor(spec, lock_path=str(tmp_path / "locks"),
                                                                           timeout=300),
                              stager=self.stager, **kw)

    w = World()
    before = mounts()
    yield w
    left = sorted(mounts() - before)
    active = w.store.list(statuses=ACTIVE)
    w.store.close()
    assert not left, f"mounts left: {left}"
    assert not active, f"active records left: {active}"


def marked(size: int, marker: bytes) -> bytes:
    buf = bytearray(os.urandom(size))
    for off in range(0, size, 4096):
        buf[off:off + len(marker)] = marker
    return bytes(buf)


def test_encrypted_attach_io_detach(world: Any, tmp_path: Any) -> None:
    vid = "fe" + uuid.uuid4().hex[:10]
    flow = world.flow(hypervisor=world.hv)
    spec = VolumeSpec(volume_id=vid, protocol="iscsi", size=48 * MiB, host_attach=True, encryption=ENCRYPTION,
                      encryption_options=FAST_LUKS2, new_volume=True)
    att = flow.attach_volume(spec, "guest-instance")
    crypt = f"/dev/mapper/{mapping_name(vid)}"
    enc = att.extra["encryption"]
    assert att.status == "attached" and list(att.steps)[-2:] == ["encrypt", "hypervisor"]
    assert enc["device"] == crypt and enc["lower_path"] == att.host_device and att.host_device.startswith("/dev/sd")
    assert f"<source dev='{crypt}'" in att.extra["disk_xml"].replace('"', "'")  # the domain gets dm-crypt
    dm = os.path.basename(os.path.realpath(crypt))
    assert os.listdir(f"/sys/block/{dm}/slaves") == [os.path.basename(att.host_device)]
    assert world.key.reveal() not in repr(world.store.get(att.id))

    marker = f"BLOCKLINK-FLOW-PLAINTEXT-{uuid.uuid4().hex}".encode()
    data = marked(4 * MiB, marker)
    direct_write(crypt, data, offset=MiB)
    assert direct_read(crypt, len(data), offset=MiB) == data
    with open(tmp_path / f"volume-{vid}", "rb") as f:  # the target's backing store: ciphertext only
        assert marker not in f.read()

    done = flow.detach_volume(att.id)
    assert done.status == "detached"
    assert not os.path.exists(crypt) and world.lio.get_export(vid) is None and not world.hv.plugged


def test_encrypted_rollback_closes_mapping_before_disconnect(world: Any) -> None:
    """The hot-plug fails after dm-crypt was opened: the mapping is closed, then the session logged out."""
    vid = "fr" + uuid.uuid4().hex[:10]

    class Refusing(XmlOnlyHypervisor):
        def attach_volume(self, *a: Any, **kw: Any) -> Any:
            raise RuntimeError("injected: the domain refused the disk")

    flow = world.flow(hypervisor=Refusing())
    spec = VolumeSpec(volume_id=vid, protocol="iscsi", size=32 * MiB, host_attach=True, encryption=ENCRYPTION,
                      encryption_options=FAST_LUKS2, new_volume=True)
    with pytest.raises(AttachFailed) as ei:
        flow.attach_volume(spec, "guest-instance")
    assert ei.value.step == "hypervisor" and ei.value.undo_failures == ()
    assert not os.path.exists(f"/dev/mapper/{mapping_name(vid)}") and world.lio.get_export(vid) is None
    assert [a.status for a in world.store.list(volume_id=vid)] == ["error"]


def sha_files(root: str) -> Dict[str, str]:
    out = {}
    for name in sorted(os.listdir(root)):
        if name.startswith("f"):
            with open(os.path.join(root, name), "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_staged_attach_detach_reattach_keeps_files(world: Any, tmp_path: Any) -> None:
    vid = "fs" + uuid.uuid4().hex[:10]
    world.lio.create_export(vid, size=64 * MiB, chap=True)  # the volume outlives both attachments
    try:
        stage, pub = str(tmp_path / "staging" / vid), str(tmp_path / "pods" / "p1" / vid)
        spec = VolumeSpec(volume_id=vid, protocol="iscsi", host_attach=True, staging_path=stage, fs_type="ext4",
                          mount_options=("noatime",), publish_path=pub)
        flow = world.flow()  # no hypervisor: a node agent's host
        att = flow.attach_volume(spec, "node-agent")
        first = att.extra["staging"]
        assert first["formatted"] is True and first["fs_uuid"] and list(att.steps)[-2:] == ["stage", "publish"]
        assert os.path.ismount(stage) and os.path.ismount(pub)
        for i in range(3):
            with open(os.path.join(pub, f"f{i}"), "wb") as f:
                f.write(os.urandom(128 * 1024 + i))
                f.flush()
                os.fsync(f.fileno())
        files = sha_files(stage)
        assert len(files) == 3
        flow.detach_volume(att.id)
        assert not os.path.exists(stage) and not os.path.exists(pub)
        assert world.lio.get_export(vid) is not None  # not created by the flow: kept

        again = flow.attach_volume(spec, "node-agent")
        second = again.extra["staging"]
        assert second["formatted"] is False and second["fs_uuid"] == first["fs_uuid"]  # no second mkfs
        assert sha_files(pub) == files
        flow.detach_volume(again.id)
        assert not os.path.exists(stage)
    finally:
        world.lio.remove_export(vid)


def luks_uuid(dev: str) -> str:
    return subprocess.run(["cryptsetup", "luksUUID", dev], capture_output=True, text=True, check=True).stdout.strip()


def test_encrypted_staged_volume_reattached_is_neither_reformatted_nor_refilesystemed(world: Any, tmp_path: Any) -> None:
    """encrypt then stage: LUKS and ext4 made on the first attach only, even asked again with new_volume=True."""
    vid = "fx" + uuid.uuid4().hex[:10]
    world.lio.create_export(vid, size=48 * MiB, chap=True)
    try:
        stage = str(tmp_path / "staging" / vid)
        spec = VolumeSpec(volume_id=vid, protocol="iscsi", host_attach=True, encryption=ENCRYPTION,
                          encryption_options=FAST_LUKS2, new_volume=True, staging_path=stage)
        flow = world.flow()
        att = flow.attach_volume(spec, "node-agent")
        crypt = f"/dev/mapper/{mapping_name(vid)}"
        assert list(att.steps)[-2:] == ["encrypt", "stage"] and att.extra["staging"]["device"] == crypt
        header = luks_uuid(att.host_device)
        with open(os.path.join(stage, "f0"), "wb") as f:
            f.write(os.urandom(200 * 1024))
            f.flush()
            os.fsync(f.fileno())
        files = sha_files(stage)
        flow.detach_volume(att.id)
        assert not os.path.exists(crypt) and not os.path.exists(stage)

        again = flow.attach_volume(spec, "node-agent")
        assert luks_uuid(again.host_device) == header  # the LUKS header was opened, not rewritten
        assert again.extra["staging"]["formatted"] is False
        assert again.extra["staging"]["fs_uuid"] == att.extra["staging"]["fs_uuid"]
        assert sha_files(stage) == files
        flow.detach_volume(again.id)
        assert not os.path.exists(crypt)
    finally:
        world.lio.remove_export(vid)


def test_cli_connect_and_disconnect_encrypted(world: Any, tmp_path: Any, capsys: Any) -> None:
    """``blocklink connect --encryption ... --key-file`` opens the mapping; ``disconnect --encryption`` closes it
    first; the passphrase is on no argv."""
    from blocklink.cli import main

    vid = "fc" + uuid.uuid4().hex[:10]
    world.lio.create_export(vid, size=32 * MiB, chap=True)
    try:
        props = dict(world.conn.get_connector_properties(), host="guest", multipath=False)
        info_file, key_file = tmp_path / "info.json", tmp_path / "key"
        info_file.write_text(json.dumps(world.lio.initialize_connection(vid, props).to_dict()))
        key_file.write_text(world.key.reveal())
        os.chmod(info_file, 0o600)
        os.chmod(key_file, 0o600)
        enc = json.dumps(dict(ENCRYPTION))
        argv = ["connect", str(info_file), "--encryption", enc, "--key-file", str(key_file), "--new-volume",
                "--pbkdf-force-iterations", "4"]
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        crypt = f"/dev/mapper/{mapping_name(vid)}"
        assert out["path"] == crypt and out["encryption"]["lower_path"].startswith("/dev/sd")
        data = os.urandom(MiB)
        direct_write(crypt, data)
        assert direct_read(crypt, len(data)) == data
        assert main(["disconnect", str(info_file), "--encryption", enc, "--device", crypt]) == 0
        assert json.loads(capsys.readouterr().out) == {"disconnected": True}
        assert not os.path.exists(crypt) and not os.path.exists(out["encryption"]["lower_path"])
        assert world.key.reveal() not in " ".join(argv)
    finally:
        world.lio.terminate_connection(vid, props)
        world.lio.remove_export(vid)
