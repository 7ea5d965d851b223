"""Host-side LUKS (blocklink.encryption) on real dm-crypt, over kernel iSCSI (LIO), NVMe/TCP and krbd.

Every test checks what it leaves: the encryptor's mapping is gone (and ``leak_check`` finds no dm map,
session, controller or rbd mapping). Passphrases only ever reach cryptsetup on stdin: the recording
executor's argv list is checked, and one flow runs under the reliability suite's secret watchers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Iterator, List, Tuple

import pytest

import blocklink
from blocklink.connection import AttachedDevice, HostConnector
from blocklink.encryption import (EncryptionBusy, EncryptionSpec, FormatRefused, LuksEncryptor, WrongKey,
                                  mapping_name, probe)
from blocklink.errors import DetachIncomplete
from blocklink.executor import ProcessExecutor
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.iscsi import ISCSIConnector
from blocklink.masking import Secret
from blocklink.target.lio import LioTarget
from tests.harness.guest.blockio import block_size, direct_read, direct_write
from tests.functional.kernel.test_iscsi_connector import RecordingExecutor, resize_fileio
from tests.functional.kernel.test_nvme_tcp import NVME_MODULES, Holder, make_target

pytestmark = pytest.mark.kernel

MiB = 1 << 20
LUKS2_HEADER = 16 * MiB  # cryptsetup's default LUKS2 data offset (LUKS1's follows the device's I/O alignment)


def new_key() -> Secret:
    return Secret(secrets.token_hex(32))


def plaintext(size: int, marker: bytes) -> bytes:
    """Random data with ``marker`` at the start of every 4 KiB block: greppable if it ever lands unencrypted."""
    buf = bytearray(os.urandom(size))
    for off in range(0, size, 4096):
        buf[off:off + len(marker)] = marker
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# one exported volume per transport: connect/disconnect, grow on the target, read the backing store

class IscsiVolume:
    def __init__(self, request: Any, vid: str, size: int) -> None:
        request.getfixturevalue("lio_clean")
        request.getfixturevalue("iscsid")
        tmp = str(request.getfixturevalue("tmp_path"))
        self.vid = vid
        self.lio = LioTarget(portals=["127.0.0.1:3260"], backing_dir=tmp, lock_path=os.path.join(tmp, "target-locks"))
        self.conn = ISCSIConnector(executor=ProcessExecutor(), lock_path=os.path.join(tmp, "locks"),
                                   device_timeout=60)
        self.lio.create_export(vid, size=size, chap=True)
        props = dict(self.conn.get_connector_properties(), host="guest", multipath=False)
        info = self.lio.initialize_connection(vid, props)
        self.info = info.replace(targets=info.targets[:1], form="single", wwn=None)
        self.file = os.path.join(tmp, f"volume-{vid}")

    def connect(self) -> AttachedDevice:
        dev = self.conn.connect_volume(self.info)
        self.info = self.info.replace(wwn=dev.wwn)
        return dev

    def disconnect(self, dev: AttachedDevice) -> None:
        self.conn.disconnect_volume(self.info, dev)

    def grow(self, size: int) -> int:
        resize_fileio(f"volume-{self.vid}", self.file, size)
        return int(self.conn.extend_volume(self.info))

    def backing(self) -> bytes:
        with open(self.file, "rb") as f:
            return f.read()

    def close(self) -> None:
        self.lio.remove_export(self.vid)


class NvmeVolume:
    def __init__(self, request: Any, vid: str, size: int) -> None:
        request.getfixturevalue("modprobe")(*NVME_MODULES)
        self.workdir = tempfile.mkdtemp(prefix="blocklink-crypt-", dir="/run")  # tmpfs: nvmet serves files there
        self.vid = vid
        self.target = make_target(self.workdir)
        self.export = self.target.create_export(vid, size=size)
        self.conn = blocklink.connector_for("nvmeof", run_dir=os.path.join(self.workdir, "run"), timeout=60.0)
        host = HostConnector.from_dict({"host": "blguest", **self.conn.get_connector_properties()})
        self.info = self.target.initialize_connection(vid, host)

    def connect(self) -> AttachedDevice:
        return self.conn.connect_volume(self.info)

    def disconnect(self, dev: AttachedDevice) -> None:
        self.conn.disconnect_volume(self.info, dev)

    def grow(self, size: int) -> int:
        os.truncate(self.export.device_path, size)
        assert self.target.revalidate_size(self.vid) == size
        return int(self.conn.extend_volume(self.info))

    def backing(self) -> bytes:
        with open(self.export.device_path, "rb") as f:
            return f.read()

    def close(self) -> None:
        try:
            self.target.remove_export(self.vid)
        finally:
            subprocess.run(["rm", "-rf", self.workdir], check=False)


class RbdVolume:
    def __init__(self, request: Any, vid: str, size: int) -> None:
        request.getfixturevalue("modprobe")("rbd")
        self.ceph = request.getfixturevalue("ceph_cluster")
        self.target = self.ceph.rbd_target(include_keyring=True)  # the guest has no /etc/ceph
        self.vid = vid
        self.name = self.target.create_volume(vid, size)
        self.info = self.target.initialize_connection(vid)
        self.conn = blocklink.connector_for("rbd", do_local_attach=True, device_type="krbd")

    def connect(self) -> AttachedDevice:
        return self.conn.connect_volume(self.info)

    def disconnect(self, dev: AttachedDevice) -> None:
        self.conn.disconnect_volume(self.info, dev)

    def grow(self, size: int) -> int:
        assert self.target.extend_volume(self.vid, size) == size
        return int(self.conn.extend_volume(self.info))

    def backing(self) -> bytes:
        path = os.path.join("/tmp", f"{self.name}.raw")
        self.ceph.export_image(self.name, path)
        try:
            with open(path, "rb") as f:
                return f.read()
        finally:
            os.unlink(path)

    def close(self) -> None:
        try:
            self.target.delete_volume(self.vid)
        finally:
            self.target.close()


TRANSPORTS = {"iscsi": IscsiVolume, "nvme": NvmeVolume, "krbd": RbdVolume}
Volume = Any


@pytest.fixture
def volumes(request: Any) -> Iterator[Callable[[str, int], Volume]]:
    made: List[Volume] = []

    def make(transport: str, size: int) -> Volume:
        vol = TRANSPORTS[transport](request, f"c{uuid.uuid4().hex[:12]}", size)
        made.append(vol)
        return vol

    yield make
    for vol in reversed(made):
        vol.close()


@pytest.fixture
def executor() -> RecordingExecutor:
    return RecordingExecutor()


# A fixed, small PBKDF cost: under TCG cryptsetup's benchmark alone takes ~40 s and argon2id at its
# minimum of 4 passes over 64 MiB 16-35 s per unlock (the library's default, iter_time_ms=1000).
FAST = {"luks2": {"pbkdf_memory_kib": 32, "pbkdf_force_iterations": 4},
        "luks1": {"pbkdf_force_iterations": 1000}}


def fast_spec(fmt: str = "luks2") -> EncryptionSpec:
    return EncryptionSpec(format=fmt, **FAST[fmt])  # type: ignore[arg-type]


def make_encryptor(executor: RecordingExecutor, tmp_path: Any, fmt: str = "luks2") -> LuksEncryptor:
    return LuksEncryptor(fast_spec(fmt), executor=executor, lock_path=str(tmp_path / "crypt-locks"), timeout=300)


@pytest.fixture
def encryptor(executor: RecordingExecutor, tmp_path: Any) -> LuksEncryptor:
    return make_encryptor(executor, tmp_path)


@contextlib.contextmanager
def attached(vol: Volume, enc: LuksEncryptor, key: Secret, *,
             new_volume: bool = False) -> Iterator[Tuple[AttachedDevice, AttachedDevice]]:
    """Connect and open the volume; close and disconnect after (also when the body fails)."""
    dev = vol.connect()
    try:
        crypt = enc.attach(dev, key, volume_id=vol.vid, new_volume=new_volume)
        try:
            yield dev, crypt
        finally:
            enc.detach(vol.vid)
    finally:
        vol.disconnect(dev)
    assert enc.mapping(vol.vid) is None and not os.path.exists(f"/dev/mapper/{mapping_name(vol.vid)}")


def new_encrypted_volume(vol: Volume, enc: LuksEncryptor, key: Secret) -> bytes:
    """Format the blank volume, write 1 MiB through the mapping, close and disconnect; returns the data."""
    data = os.urandom(MiB)
    with attached(vol, enc, key, new_volume=True) as (_dev, crypt):
        direct_write(crypt.path or "", data)
    return data


def timed(record_property: Any, name: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    t0 = time.monotonic()
    out = fn(*args, **kw)
    secs = time.monotonic() - t0
    record_property(name, round(secs, 3))
    print(f"TIMING {name} {secs:.3f}s")
    return out


def payload_offset(mapping: str) -> int:
    """Bytes before the encrypted data on the device under ``mapping`` (``cryptsetup status``)."""
    out = subprocess.run(["cryptsetup", "status", mapping], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"offset:\s+(\d+) sectors", out).group(1)) * 512  # type: ignore[union-attr]


def luks_keyslots(path: str) -> int:
    """How many keyslots the header at ``path`` has in use (LUKS1 or LUKS2 ``luksDump``)."""
    dump = subprocess.run(["cryptsetup", "luksDump", path], capture_output=True, text=True, check=True).stdout
    if "Key Slot 0:" in dump:  # LUKS1
        return dump.count(": ENABLED")
    section = dump.split("Keyslots:")[1].split("Tokens:")[0]
    return len(re.findall(r"^\s+\d+: luks2$", section, re.M))


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["iscsi", "nvme", "krbd"])
def test_roundtrip_keeps_data_and_no_plaintext_reaches_the_target(transport, volumes, encryptor, executor,
                                                                  record_property) -> None:
    vol = volumes(transport, 64 * MiB)
    key = new_key()
    marker = f"BLOCKLINK-PLAINTEXT-{uuid.uuid4().hex}".encode()
    data = plaintext(16 * MiB, marker)
    dev = vol.connect()
    try:
        crypt = timed(record_property, f"{transport}_attach_format", encryptor.attach, dev, key,
                      volume_id=vol.vid, new_volume=True)
        try:
            assert crypt.path == f"/dev/mapper/crypt-{vol.vid}" and os.path.exists(crypt.path)
            assert crypt.extra["encryption"]["lower_path"] == dev.path
            assert [(s.kind, s.version) for s in probe(executor, dev.path or "")] == [("luks", "2")]
            assert encryptor.attach(dev, key, volume_id=vol.vid) == crypt  # idempotent: same mapping
            assert block_size(crypt.path) == 64 * MiB - LUKS2_HEADER == 64 * MiB - payload_offset(mapping_name(vol.vid))
            direct_write(crypt.path, data, offset=MiB)
            assert direct_read(crypt.path, len(data), offset=MiB) == data
        finally:
            encryptor.detach(vol.vid)
        encryptor.detach(vol.vid)  # idempotent
        assert encryptor.mapping(vol.vid) is None and not os.path.exists(crypt.path)
    finally:
        vol.disconnect(dev)

    stored = vol.backing()
    assert stored[:6] == b"LUKS\xba\xbe"
    assert marker not in stored, "plaintext reached the target"

    dev = vol.connect()
    try:
        crypt = timed(record_property, f"{transport}_attach_open", encryptor.attach, dev, key, volume_id=vol.vid)
        try:
            assert direct_read(crypt.path, len(data), offset=MiB) == data
        finally:
            encryptor.detach(vol.vid)
    finally:
        vol.disconnect(dev)
    print("commands:\n" + executor.profile())
    executor.assert_never_on_argv(key)


@pytest.mark.parametrize("transport,fmt", [("iscsi", "luks2"), ("iscsi", "luks1"), ("nvme", "luks2"),
                                           ("krbd", "luks2")])
def test_extend_while_in_use(transport, fmt, volumes, executor, tmp_path, record_property) -> None:
    enc = make_encryptor(executor, tmp_path, fmt)
    vol = volumes(transport, 48 * MiB)
    key = new_key()
    head = os.urandom(4 * MiB)
    with attached(vol, enc, key, new_volume=True) as (dev, crypt):
        direct_write(crypt.path or "", head)
        header = payload_offset(mapping_name(vol.vid))
        assert 0 < header <= LUKS2_HEADER and block_size(crypt.path or "") == 48 * MiB - header
        holder = Holder(crypt.path or "")  # a process has the mapping open all along
        try:
            assert vol.grow(96 * MiB) == 96 * MiB
            assert block_size(dev.path or "") == 96 * MiB
            new_size = timed(record_property, f"{transport}_{fmt}_extend", enc.extend, vol.vid, key)
            assert new_size == 96 * MiB - header == block_size(crypt.path or "")
            tail = os.urandom(4 * MiB)
            direct_write(crypt.path or "", tail, offset=new_size - len(tail))  # the new space is usable
            assert direct_read(crypt.path or "", len(tail), offset=new_size - len(tail)) == tail
            assert direct_read(crypt.path or "", len(head)) == head
            assert holder.proc.poll() is None
        finally:
            holder.close()
            holder.stop()
    with attached(vol, enc, key) as (_dev, crypt):  # after a reopen the new size is kept
        assert block_size(crypt.path or "") == 96 * MiB - header
        assert direct_read(crypt.path or "", len(head)) == head
    executor.assert_never_on_argv(key)


def test_signatures_refused_never_formatted(volumes, encryptor, executor) -> None:
    vol = volumes("iscsi", 48 * MiB)
    key = new_key()
    dev = vol.connect()
    try:
        path = dev.path or ""
        with pytest.raises(FormatRefused) as e:  # blank, but nobody said it is a new volume
            encryptor.attach(dev, key, volume_id=vol.vid)
        assert "new volume" in e.value.found and e.value.device == path
        subprocess.run(["mkfs.ext4", "-q", "-F", path], check=True, capture_output=True)
        fs_uuid = subprocess.run(["blkid", "-p", "-s", "UUID", "-o", "value", path], capture_output=True,
                                 text=True, check=True).stdout.strip()
        with pytest.raises(FormatRefused) as e:
            encryptor.attach(dev, key, volume_id=vol.vid, new_volume=True)
        assert "ext4 filesystem" in e.value.found and fs_uuid in e.value.found
        assert encryptor.mapping(vol.vid) is None
        assert not [a for a in executor.argvs if "luksFormat" in a]
        assert [(s.kind, s.type, s.uuid) for s in probe(executor, path)] == [("filesystem", "ext4", fs_uuid)]
        subprocess.run(["fsck.ext4", "-n", path], check=True, capture_output=True)  # the filesystem is intact
    finally:
        vol.disconnect(dev)


def test_wrong_key_is_typed_and_leaves_nothing_open(volumes, encryptor, executor) -> None:
    vol = volumes("nvme", 48 * MiB)
    key, wrong = new_key(), new_key()
    data = new_encrypted_volume(vol, encryptor, key)
    dev = vol.connect()
    try:
        with pytest.raises(WrongKey) as e:
            encryptor.attach(dev, wrong, volume_id=vol.vid, new_volume=True)
        assert e.value.device == dev.path
        assert wrong.reveal() not in str(e.value) and key.reveal() not in str(e.value)
        assert encryptor.mapping(vol.vid) is None and not os.path.exists(f"/dev/mapper/{mapping_name(vol.vid)}")
        assert [s.kind for s in probe(executor, dev.path or "")] == ["luks"]  # not reformatted
        crypt = encryptor.attach(dev, key, volume_id=vol.vid)
        try:
            assert direct_read(crypt.path or "", len(data)) == data
        finally:
            encryptor.detach(vol.vid)
    finally:
        vol.disconnect(dev)
    executor.assert_never_on_argv(key, wrong)


# LUKS1 re-keying on demand (-m slow): LUKS1 opens, extends and is refused with a wrong key in the default run
@pytest.mark.parametrize("fmt", ["luks2", pytest.param("luks1", marks=pytest.mark.slow)])
def test_rotate_key_while_in_use(fmt, volumes, executor, tmp_path, record_property) -> None:
    enc = make_encryptor(executor, tmp_path, fmt)
    vol = volumes("iscsi", 48 * MiB)
    old, new = new_key(), new_key()
    data = os.urandom(2 * MiB)
    with attached(vol, enc, old, new_volume=True) as (dev, crypt):
        direct_write(crypt.path or "", data)
        holder = Holder(crypt.path or "")
        try:
            steps: List[str] = []
            slot = timed(record_property, f"rotate_{fmt}", enc.rotate_key, dev, old, new, on_step=steps.append)
            assert steps == ["added", "verified", "removed"]
            with pytest.raises(WrongKey):
                enc.test_key(dev.path or "", old)
            assert enc.test_key(dev.path or "", new) == slot
            assert luks_keyslots(dev.path or "") == 1
            again: List[str] = []
            assert enc.rotate_key(dev, old, new, on_step=again.append) == slot and again == []  # already done
            assert direct_read(crypt.path or "", len(data)) == data and holder.proc.poll() is None
        finally:
            holder.close()
            holder.stop()
    with pytest.raises(WrongKey):
        with attached(vol, enc, old):
            pass
    with attached(vol, enc, new) as (_dev, crypt):
        assert direct_read(crypt.path or "", len(data)) == data
    executor.assert_never_on_argv(old, new)


ROTATE_CHILD = """
import json, sys
from blocklink.connection import AttachedDevice
from blocklink.encryption import EncryptionSpec, LuksEncryptor
from blocklink.masking import Secret
cfg = json.loads(sys.stdin.readline())
enc = LuksEncryptor(EncryptionSpec(**cfg["spec"]), lock_path=cfg["locks"])
def step(name):
    print(name, flush=True)
    if name == "added":
        sys.stdin.readline()  # parked here until the test kills us
enc.rotate_key(AttachedDevice(protocol="nvmeof", path=cfg["path"]), Secret(cfg["old"]), Secret(cfg["new"]),
               on_step=step)
print("done", flush=True)
"""


def test_rotation_killed_after_the_new_keyslot_still_opens(volumes, encryptor, tmp_path) -> None:
    vol = volumes("nvme", 48 * MiB)
    old, new = new_key(), new_key()
    data = new_encrypted_volume(vol, encryptor, old)
    dev = vol.connect()
    try:
        path = dev.path or ""
        child = subprocess.Popen([sys.executable, "-c", ROTATE_CHILD], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(json.dumps({"path": path, "old": old.reveal(), "new": new.reveal(),  # stdin only
                                          "locks": str(tmp_path / "child-locks"), "spec": FAST["luks2"]}) + "\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "added"
        finally:
            child.kill()
            child.wait(timeout=60)
        assert child.returncode == -9
        old_slot, new_slot = encryptor.test_key(path, old), encryptor.test_key(path, new)
        assert old_slot != new_slot  # interrupted between add and remove: both keys open it
        crypt = encryptor.attach(dev, old, volume_id=vol.vid)
        try:
            assert direct_read(crypt.path or "", len(data)) == data
        finally:
            encryptor.detach(vol.vid)
        steps: List[str] = []
        assert encryptor.rotate_key(dev, old, new, on_step=steps.append) == new_slot  # rerun finishes the job
        assert steps == ["verified", "removed"]
        with pytest.raises(WrongKey):
            encryptor.test_key(path, old)
    finally:
        vol.disconnect(dev)
    with attached(vol, encryptor, new) as (_dev, crypt):
        assert direct_read(crypt.path or "", len(data)) == data


def test_detach_names_the_holder_and_force_defers(volumes, encryptor) -> None:
    vol = volumes("nvme", 48 * MiB)
    key = new_key()
    dev = vol.connect()
    try:
        crypt = encryptor.attach(dev, key, volume_id=vol.vid, new_volume=True)
        holder = Holder(crypt.path or "")
        try:
            t0 = time.monotonic()
            with pytest.raises(EncryptionBusy) as e:
                encryptor.detach(vol.vid, timeout=2)
            assert time.monotonic() - t0 < 60
            assert f"pid {holder.proc.pid} (python" in e.value.reason and e.value.device == crypt.path
            assert encryptor.mapping(vol.vid) is not None  # still open, still usable
            with pytest.raises(DetachIncomplete) as e2:
                encryptor.detach(vol.vid, force=True)
            assert len(e2.value.failures) == 1 and f"pid {holder.proc.pid}" in e2.value.failures[0]
            assert "deferred" in e2.value.failures[0]
            holder.close()
            wait_for(lambda: True if encryptor.mapping(vol.vid) is None else None, timeout=60,
                     watch=["/dev/mapper"], what="the deferred removal")
        finally:
            holder.stop()
            encryptor.detach(vol.vid)
        encryptor.detach(vol.vid)  # nothing left: returns at once
    finally:
        vol.disconnect(dev)


# strace -f -p stops this process at every syscall: under TCG that made the watch cost 4 minutes, so the
# traced variant runs on demand (-m slow); the default one has every other channel (the /proc argv and
# environment sampler, files, log records, reprs) and the executor's own argv check
STRACE = pytest.mark.parametrize("traced", [pytest.param(True, marks=pytest.mark.slow, id="strace"),
                                            pytest.param(False, id="sampled")])


@STRACE
def test_secret_watchers_find_no_passphrase(volumes, encryptor, executor, traced: bool) -> None:
    from tests.reliability.secretscan import GUEST_SWEEP_ROOTS, SecretWatch

    vol = volumes("nvme", 48 * MiB)
    old, new = new_key(), new_key()
    with SecretWatch([old.reveal(), new.reveal()], run_dirs=["/run/blocklink"], strace=traced,
                     sweep_roots=GUEST_SWEEP_ROOTS) as watch:
        with attached(vol, encryptor, old, new_volume=True) as (dev, crypt):
            direct_write(crypt.path or "", os.urandom(MiB))
            assert vol.grow(64 * MiB) == 64 * MiB
            encryptor.extend(vol.vid, old)
            encryptor.rotate_key(dev, old, new)
            try:
                encryptor.test_key(dev.path or "", old)
            except WrongKey as e:
                watch.check_text("WrongKey", str(e) + repr(e))
    print(watch.summary())
    assert watch.execs > 0 or watch.proc_samples > 0
    watch.assert_clean()
    executor.assert_never_on_argv(old, new)
