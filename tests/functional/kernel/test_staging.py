"""blocklink.staging on the real kernel: iSCSI (LIO), NVMe/TCP (nvmet) and krbd volumes are formatted
once, mounted, published, grown online, watched and undone, in the guest.

Every test leaves nothing behind: the module's ``no_new_mounts`` fixture fails a test that leaves a
mount (staging or publication), and the folder's ``leak_check`` one that leaves a session, a
controller, a mapping or a target object.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from typing import Any, Dict, Iterator, List, Optional, Set

import pytest

import blocklink
from blocklink.connection import AttachedDevice, HostConnector
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host.wait import wait_for
from blocklink.staging import ForeignSignature, MountBusy, MountConflict, Stager, StillPublished
from blocklink.staging.mountinfo import MountTable
from blocklink.target.lio import LioTarget
from tests.harness.guest.blockio import block_size, direct_read, direct_write
from tests.functional.kernel.test_iscsi_connector import connector as iscsi_connector
from tests.functional.kernel.test_iscsi_connector import export as iscsi_export
from tests.functional.kernel.test_iscsi_connector import resize_fileio
from tests.functional.kernel.test_nvme_tcp import NVME_MODULES, make_target

pytestmark = pytest.mark.kernel

MiB = 1 << 20
SIZE = {"ext4": 64 * MiB, "xfs": 320 * MiB}  # mkfs.xfs refuses filesystems under 300 MB


def sh(*argv: str, ok: tuple = (0,), input: Optional[str] = None) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, input=input)
    assert res.returncode in ok, f"{' '.join(argv)}: exit {res.returncode}: {res.stderr}"
    return res.stdout


def mount_points() -> Set[str]:
    return {e.mount_point for e in MountTable.read(HostPaths()).entries}


@pytest.fixture(autouse=True)
def no_new_mounts() -> Iterator[None]:
    """Fail a test that leaves a mount behind (and lazily unmount it so the next test starts clean)."""
    before = mount_points()
    yield
    left = sorted(mount_points() - before)
    for m in reversed(left):
        subprocess.run(["umount", "-l", m], check=False)
    assert not left, f"the test left mounts behind: {left}"


@pytest.fixture(scope="module")
def fs_modules(modprobe: Any) -> None:
    modprobe("ext4")
    modprobe("xfs")


@pytest.fixture
def stager(tmp_path: Any, fs_modules: None) -> Stager:
    return Stager(state_dir=str(tmp_path / "state"), lock_path=str(tmp_path / "locks"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_files(root: str, n: int = 4) -> Dict[str, str]:
    """``n`` files of random content (synced), returns name -> sha256."""
    out = {}
    os.makedirs(os.path.join(root, "dir"), exist_ok=True)
    for i in range(n):
        data = os.urandom(256 * 1024 + i)
        name = os.path.join("dir", f"file{i}")
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        out[name] = sha(data)
    return out


def read_files(root: str, names: Dict[str, str]) -> Dict[str, str]:
    out = {}
    for name in names:
        with open(os.path.join(root, name), "rb") as f:
            out[name] = sha(f.read())
    return out


def mbr(size: int) -> bytes:
    """A DOS partition table with one Linux partition from sector 2048 to the end (one 4 KiB block)."""
    entry = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + (size // 512 - 2048).to_bytes(4, "little")
    sector = bytes(440) + b"\x12\x34\x56\x78" + bytes(2) + entry + bytes(48) + b"\x55\xaa"
    return sector + bytes(4096 - len(sector))


def fs_uuid(dev: str) -> str:
    return sh("blkid", "-p", "-o", "value", "-s", "UUID", dev).strip()


def df_size(path: str) -> int:
    return int(sh("df", "-B1", "--output=size", path).split()[-1])


# ------------------------------------------------------------------------------ one volume per protocol
class Volume:
    """A volume on a real target with its connector: connect, disconnect, grow, lose the device."""

    protocol = ""

    def connect(self) -> AttachedDevice:
        dev: AttachedDevice = self.conn.connect_volume(self.info)
        return dev

    def disconnect(self, dev: AttachedDevice) -> None:
        self.conn.disconnect_volume(self.info, dev)

    conn: Any
    info: Any


class IscsiVolume(Volume):
    protocol = "iscsi"

    def __init__(self, lio: LioTarget, tmp_path: Any, vid: str, size: int) -> None:
        self.lio, self.vid, self.backing = lio, vid, str(tmp_path / f"volume-{vid}")
        self.conn = iscsi_connector(blocklink.executor.ProcessExecutor(), tmp_path)
        self.info = iscsi_export(lio, self.conn, vid, size=size)

    def connect(self) -> AttachedDevice:
        dev = super().connect()
        self.info = self.info.replace(wwn=dev.wwn)  # extend_volume finds the disks by WWN
        return dev

    def grow(self, size: int) -> int:
        resize_fileio(f"volume-{self.vid}", self.backing, size)
        return int(self.conn.extend_volume(self.info))

    def lose_device(self, dev: AttachedDevice) -> None:
        """Log out of the target's session under the mounted filesystem."""
        t = self.info.targets[0]
        sh("iscsiadm", "-m", "node", "-T", t.iqn, "-p", f"{t.portal.host}:{t.portal.port}", "-u")


class NvmeVolume(Volume):
    protocol = "nvme"

    def __init__(self, vid: str, size: int) -> None:
        # backing files on tmpfs (/run): nvmet cannot serve files from the guest's overlayfs /tmp
        self.workdir = workdir = tempfile.mkdtemp(prefix="blocklink-staging-", dir="/run")
        self.target = make_target(workdir)
        self.vid = vid
        self.export = self.target.create_export(vid, size=size)
        self.conn = blocklink.connector_for("nvmeof", run_dir=os.path.join(workdir, "run"), timeout=60.0)
        host = HostConnector.from_dict({"host": "blguest", **self.conn.get_connector_properties()})
        self.info = self.target.initialize_connection(vid, host)

    def grow(self, size: int) -> int:
        os.truncate(self.export.device_path, size)
        assert self.target.revalidate_size(self.vid) == size
        return int(self.conn.extend_volume(self.info))

    def lose_device(self, dev: AttachedDevice) -> None:
        """Disconnect the controller(s) behind the mounted filesystem (the NVMe logout)."""
        sh("nvme", "disconnect", "-n", self.info.target_nqn)

    def remove(self) -> None:
        for vid in self.target.list_exports():
            self.target.remove_export(vid)
        shutil.rmtree(self.workdir)


class RbdVolume(Volume):
    protocol = "rbd"

    def __init__(self, ceph_cluster: Any, size: int) -> None:
        self.target = ceph_cluster.rbd_target(include_keyring=True)
        self.vid = f"s{uuid.uuid4().hex[:10]}"
        self.target.create_volume(self.vid, size)
        self.info = self.target.initialize_connection(self.vid)
        self.conn = blocklink.connector_for("rbd", do_local_attach=True, device_type="krbd")

    def grow(self, size: int) -> int:
        assert self.target.extend_volume(self.vid, size) == size
        return int(self.conn.extend_volume(self.info))

    def remove(self) -> None:
        self.target.delete_volume(self.vid)
        self.target.close()


@pytest.fixture
def lio(lio_clean: Any, tmp_path: Any) -> LioTarget:
    return LioTarget(portals=["127.0.0.1:3260"], backing_dir=str(tmp_path), lock_path=str(tmp_path / "tlocks"))


@pytest.fixture
def volumes(request: Any, tmp_path: Any) -> Iterator[Any]:
    """``volumes(protocol, size)`` makes a volume; all are removed on the target after the test."""
    made: List[Volume] = []

    def make(protocol: str, size: int = 64 * MiB, vid: str = "") -> Volume:
        vid = vid or f"st{len(made)}"
        v: Volume
        if protocol == "iscsi":
            request.getfixturevalue("iscsid")
            v = IscsiVolume(request.getfixturevalue("lio"), tmp_path, vid, size)
        elif protocol == "nvme":
            request.getfixturevalue("modprobe")(*NVME_MODULES)
            v = NvmeVolume(str(uuid.uuid4()), size)
        else:
            request.getfixturevalue("modprobe")("rbd")
            v = RbdVolume(request.getfixturevalue("ceph_cluster"), size)
        made.append(v)
        return v

    yield make
    for v in made:
        remove = getattr(v, "remove", None)
        if remove:
            remove()


@contextlib.contextmanager
def attached(vol: Volume, stager: Stager, *mounts: str) -> Iterator[AttachedDevice]:
    """The volume connected for the block; after it (also on failure) whatever of ``mounts`` is still
    mounted is taken down by force, then the volume is disconnected."""
    dev = vol.connect()
    try:
        yield dev
    finally:
        try:
            for m in mounts:
                if MountTable.read(stager.paths).at(m):
                    stager.unpublish(m, force=True)
        finally:
            vol.disconnect(dev)


# ------------------------------------------------------------------------------ the full cycle
@pytest.mark.parametrize("protocol,fs_type", [("iscsi", "ext4"), ("nvme", "xfs"), ("rbd", "ext4")])
def test_stage_publish_reconnect_keeps_data_without_second_mkfs(volumes, stager, tmp_path, protocol, fs_type) -> None:
    vol = volumes(protocol, SIZE[fs_type])
    staging, target = str(tmp_path / "staging" / "vol"), str(tmp_path / "pods" / "p 1" / "vol")
    ro = str(tmp_path / "pods" / "ro")
    with attached(vol, stager, target, ro, staging) as dev:
        first = stager.stage(dev, staging, fs_type, mount_options=("noatime",))
        assert first.formatted and first.changed and first.fs_uuid == fs_uuid(dev.path)
        entry = MountTable.read(stager.paths).at(staging)
        assert entry is not None and entry.fs_type == fs_type and "noatime" in entry.mount_options
        again = stager.stage(dev, staging, fs_type, mount_options=("noatime",))
        assert not again.changed and not again.formatted  # idempotent: a no-op
        with pytest.raises(MountConflict) as conflict:  # same path, other options: refused, nothing changes
            stager.stage(dev, staging, fs_type, mount_options=("noatime", "nodev"))
        assert conflict.value.path == staging and "noatime" in conflict.value.found

        assert stager.publish(staging, target).changed
        assert not stager.publish(staging, target).changed
        files = write_files(target)
        stager.publish(staging, ro, readonly=True)
        assert read_files(ro, files) == files
        with pytest.raises(OSError) as erofs:
            open(os.path.join(ro, "new"), "wb").close()
        assert erofs.value.errno == 30  # EROFS through the read-only publication only
        with pytest.raises(StillPublished) as still:
            stager.unstage(staging)
        assert sorted(still.value.targets) == sorted([target, ro])
        health = stager.condition(staging, dev)
        assert not health.abnormal, health.reason
        usage = stager.stats(target)
        assert usage.bytes_used and usage.bytes_used >= 4 * 256 * 1024 and usage.inodes_used
        assert usage.bytes_total == df_size(target)

        for t in (target, ro):
            assert stager.unpublish(t).changed
            assert not os.path.exists(t)  # the mount point went with the publication
        assert stager.unstage(staging).changed
        assert not os.path.exists(staging)  # stage created it, unstage removed it

    # reconnect (possibly another device name): the filesystem is found, not re-made
    with attached(vol, stager, staging) as dev:
        second = stager.stage(dev, staging, fs_type, mount_options=("noatime",))
        assert not second.formatted and second.fs_uuid == first.fs_uuid
        assert read_files(staging, files) == files
        assert stager.unstage(staging).changed


# ------------------------------------------------------------------------------ refusals, data untouched
def test_xfs_volume_staged_as_ext4_is_refused_and_untouched(volumes, stager, tmp_path) -> None:
    vol = volumes("iscsi", SIZE["xfs"])
    staging = str(tmp_path / "staging")
    with attached(vol, stager, staging) as dev:
        sh("mkfs.xfs", "-q", "-K", dev.path)
        before = sha(direct_read(dev.path, MiB))
        with pytest.raises(ForeignSignature) as e:
            stager.stage(dev, staging, "ext4")
        assert e.value.device == dev.path and e.value.path == staging and "xfs" in e.value.found
        assert sha(direct_read(dev.path, MiB)) == before
        assert MountTable.read(stager.paths).at(staging) is None and not os.path.exists(staging)
        # a partition table is refused as well (an MBR written over the xfs superblock's first sector)
        direct_write(dev.path, mbr(block_size(dev.path)))
        with pytest.raises(ForeignSignature) as e2:
            stager.stage(dev, staging, "xfs")
        assert "dos partition table" in e2.value.found and not os.path.exists(staging)


def test_luks_header_is_refused(volumes, stager, tmp_path) -> None:
    vol = volumes("nvme")
    staging = str(tmp_path / "staging")
    with attached(vol, stager, staging) as dev:
        sh("cryptsetup", "luksFormat", "--batch-mode", "--key-file=-", "--pbkdf", "pbkdf2",
           "--pbkdf-force-iterations", "1000", dev.path, input=os.urandom(32).hex())
        before = sha(direct_read(dev.path, MiB))
        for fs_type in ("ext4", "xfs"):
            with pytest.raises(ForeignSignature) as e:
                stager.stage(dev, staging, fs_type)
            assert e.value.device == dev.path and "crypto_LUKS" in e.value.found and e.value.wanted == fs_type
        assert sha(direct_read(dev.path, MiB)) == before
        assert not os.path.exists(staging)


# ------------------------------------------------------------------------------ online grow
class OpenFile:
    """A child process holding a file open (writing) on the mount until :meth:`close`."""

    def __init__(self, path: str) -> None:
        code = ("import os,sys; f=open(sys.argv[1],'wb'); print('open', flush=True)\n"
                "for line in sys.stdin: f.write(os.urandom(int(line))); f.flush(); os.fsync(f.fileno()); "
                "print('ok', flush=True)")
        self.proc = subprocess.Popen([sys.executable, "-c", code, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.readline() == "open"

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def write(self, n: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.readline() == "ok"

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


@pytest.mark.parametrize("protocol,fs_type", [("iscsi", "ext4"), ("nvme", "xfs"), ("rbd", "xfs")])
def test_online_grow_while_a_file_is_open(volumes, stager, tmp_path, protocol, fs_type) -> None:
    vol = volumes(protocol, SIZE[fs_type])
    grown = SIZE[fs_type] + 96 * MiB
    staging = str(tmp_path / "staging")
    holder = None
    with attached(vol, stager, staging) as dev:
        try:
            stager.stage(dev, staging, fs_type)
            before = stager.stats(staging).bytes_total
            holder = OpenFile(os.path.join(staging, "growing"))
            holder.write(4 * MiB)
            assert vol.grow(grown) == grown
            assert block_size(dev.path) == grown
            new = stager.expand(staging)
            assert new > before + 80 * MiB, (before, new)
            assert stager.stats(staging).bytes_total == new == df_size(staging)
            holder.write(8 * MiB)  # the open file keeps working across the grow
            holder.close()
            assert os.path.getsize(os.path.join(staging, "growing")) == 12 * MiB
            assert stager.expand(staging) == new  # nothing more to grow: same size
            holder = OpenFile(os.path.join(staging, "busy"))
            with pytest.raises(MountBusy) as busy:  # an open file makes unstage refuse, naming the process
                stager.unstage(staging)
            assert f"pid {holder.proc.pid} (python" in busy.value.found
            holder.close()
            assert stager.unstage(staging).changed
        finally:
            if holder:
                holder.close()


# ------------------------------------------------------------------------------ block-mode publish
def test_publish_block_then_direct_io_through_the_published_node(volumes, stager, tmp_path) -> None:
    vol = volumes("nvme")
    target = str(tmp_path / "pods" / "p1" / "blockdev")
    with attached(vol, stager, target) as dev:
        pub = stager.publish_block(dev, target)
        assert pub.changed and not stager.publish_block(dev, target).changed
        data = os.urandom(2 * MiB)
        direct_write(target, data, offset=4 * MiB)
        assert direct_read(target, len(data), offset=4 * MiB) == data
        assert direct_read(dev.path, len(data), offset=4 * MiB) == data  # the same device underneath
        usage = stager.stats(target)
        assert usage.block and usage.bytes_total == 64 * MiB and usage.bytes_used is None
        health = stager.condition(target, dev)
        assert not health.abnormal and health.device == dev.path, health
        assert stager.unpublish(target).changed
        assert not os.path.exists(target)
        with open(vol.export.device_path, "rb") as f:  # the bytes reached the target's backing file
            f.seek(4 * MiB)
            assert f.read(len(data)) == data


# ------------------------------------------------------------------------------ busy and idempotency
def test_busy_unstage_and_unpublish_name_the_holder(volumes, stager, tmp_path) -> None:
    a, b = volumes("iscsi", vid="busy-a"), volumes("iscsi", vid="busy-b")
    staging, target = str(tmp_path / "staging"), str(tmp_path / "target")
    holder = None
    with attached(a, stager, target, staging) as dev_a, attached(b, stager) as dev_b:
        try:
            stager.stage(dev_a, staging, "ext4")
            with pytest.raises(MountConflict) as other:  # another device on the same staging path
                stager.stage(dev_b, staging, "ext4")
            assert other.value.device == dev_b.path and other.value.path == staging and "ext4" in other.value.found
            health = stager.condition(staging, dev_b)  # the mount is not volume b's
            assert health.abnormal and "no longer the volume" in health.reason and "wwn" in health.reason
            stager.publish(staging, target)
            holder = subprocess.Popen(["sleep", "600"], cwd=target)
            with pytest.raises(MountBusy) as busy:
                stager.unpublish(target)
            assert f"pid {holder.pid} (sleep)" in busy.value.found and busy.value.path == target
            assert MountTable.read(stager.paths).at(target) is not None  # refused: still mounted
            holder.kill()
            holder.wait()
            stager.unpublish(target)
            stager.unstage(staging)
        finally:
            if holder and holder.poll() is None:
                holder.kill()
                holder.wait()


# ------------------------------------------------------------------------------ health
@pytest.mark.parametrize("protocol", ["iscsi", "nvme"])
def test_device_removed_under_the_mount_is_abnormal_and_force_unstage_cleans_up(
        volumes, stager, tmp_path, protocol) -> None:
    vol = volumes(protocol)
    staging, target = str(tmp_path / "staging"), str(tmp_path / "target")
    with attached(vol, stager, target, staging) as dev:
        stager.stage(dev, staging, "ext4")
        stager.publish(staging, target)
        write_files(target, 1)
        assert not stager.condition(staging, dev).abnormal
        sysfs = f"/sys/dev/block/{os.major(os.stat(dev.path).st_rdev)}:{os.minor(os.stat(dev.path).st_rdev)}"
        vol.lose_device(dev)
        wait_for(lambda: True if not os.path.exists(sysfs) else None, timeout=60, watch=["/sys/dev/block"],
                 what=f"{dev.path} to go")
        for path in (staging, target):
            health = stager.condition(path)  # from the staging record alone
            assert health.abnormal and "is gone" in health.reason and dev.path in health.reason, health
        with pytest.raises(StillPublished):
            stager.unstage(staging)
        done = stager.unstage(staging, force=True)
        assert done.changed and done.device == dev.path
        assert MountTable.read(stager.paths).at(staging) is None and MountTable.read(stager.paths).at(target) is None


def set_state(path: str, state: str) -> None:
    with open(path, "w") as f:
        f.write(state + "\n")  # the SCSI state attribute wants the newline


def test_kernel_read_only_remount_after_io_errors_is_abnormal(volumes, stager, tmp_path) -> None:
    vol = volumes("iscsi")
    staging = str(tmp_path / "staging")
    with attached(vol, stager, staging) as dev:
        state = f"/sys/block/{os.path.basename(dev.path)}/device/state"
        try:
            stager.stage(dev, staging, "ext4", mount_options=("errors=remount-ro",))
            write_files(staging, 1)
            set_state(state, "offline")  # every I/O to the disk now fails
            errors = []
            for i in range(3):  # a failed journal commit aborts the journal; the next change sees it
                try:
                    write_files(os.path.join(staging, f"more{i}"), 1)
                except OSError as e:
                    errors.append(e.errno)
                if errno.EROFS in errors:
                    break
                os.sync()  # the journal commit fails too (a failed fsync of data alone does not commit)
            assert errno.EROFS in errors, errors  # the kernel stopped writes after the errors
            # Debian's 6.1 marks this "emergency read-only" inside ext4 only: mountinfo and statvfs still
            # say rw, so the error count is what tells
            health = stager.condition(staging, dev)
            assert health.abnormal and "error(s)" in health.reason and "offline" in health.reason, health
        finally:
            set_state(state, "running")
        assert stager.unstage(staging, force=True).changed
