"""Stager over a fake host: a real block device node (mknod) and a fake /sys, /proc/self/mountinfo that
the fake mount/umount commands change, as the kernel would. Asserts what the host is left with."""

from __future__ import annotations

import json
import os
import stat
from typing import Dict, List, Optional, Tuple

import pytest

from blocklink.errors import DeviceMismatch, InvalidOption
from blocklink.hostpaths import HostPaths
from blocklink.models.host import AttachedDevice
from blocklink.staging import (FilesystemCheckFailed, ForeignSignature, MountBusy, MountConflict, NotStaged,
                               StagingCommandFailed, Stager, StillPublished)
from blocklink.staging.mountinfo import MountTable
from blocklink.testing.fakes import FakeExecutor

WWN = "36001405aaaabbbbccccdddd00000001"
BLKID = {"ext4": "DEVNAME=/dev/sdb\nUUID=11111111-2222-3333-4444-555555555555\nTYPE=ext4\nUSAGE=filesystem\n",
         "xfs": "DEVNAME=/dev/sdb\nUUID=99999999-2222-3333-4444-555555555555\nTYPE=xfs\nUSAGE=filesystem\n"}


def esc(p: str) -> str:
    return p.replace("\\", "\\134").replace(" ", "\\040")


class FakeNode:
    """One SCSI disk ``sdb`` (its node's device number is ``rdev``) and the mount table."""

    def __init__(self, root: str, rdev: Tuple[int, int] = (8, 16)) -> None:
        self.paths = HostPaths.under(root)
        self.major, self.minor = rdev
        self.fs: Optional[str] = None  # what is on the disk
        self.fsck_rc = 0
        self.busy: List[str] = []
        self.mounts: List[Dict[str, str]] = []
        self.next_id = 100
        os.makedirs(self.paths.devpath())
        os.mknod(self.paths.devpath("sdb"), stat.S_IFBLK | 0o600, os.makedev(*rdev))
        os.makedirs(self.paths.sys("block", "sdb", "device"))
        os.makedirs(self.paths.sys("block", "sdb", "holders"))
        self.set_wwid("naa." + WWN[1:])
        self.write_sys("block/sdb/device/state", "running")
        os.makedirs(self.paths.sys("dev", "block"))
        os.symlink("../../block/sdb", self.paths.sys("dev", "block", f"{rdev[0]}:{rdev[1]}"))
        os.makedirs(self.paths.procpath("self"))
        self.ex = FakeExecutor()
        self.ex.on(("blkid",), lambda argv, inp: (0, BLKID[self.fs], "") if self.fs else (2, "", ""))
        self.ex.on(("wipefs",), lambda argv, inp: json.dumps({"signatures": [{"type": self.fs, "offset": "0x438"}]
                                                              if self.fs else []}))
        self.ex.on(("mkfs.ext4",), lambda argv, inp: self._mkfs("ext4"))
        self.ex.on(("mkfs.xfs",), lambda argv, inp: self._mkfs("xfs"))
        self.ex.on(("e2fsck",), lambda argv, inp: (self.fsck_rc, "", "sdb: UNEXPECTED INCONSISTENCY" if self.fsck_rc else ""))
        self.ex.on(("umount", "-l"), lambda argv, inp: self._umount(argv[-1], lazy=True))
        self.ex.on(("umount",), lambda argv, inp: self._umount(argv[-1]))
        self.ex.on(("mount", "--bind"), lambda argv, inp: self._bind(argv[2], argv[3]))
        self.ex.on(("mount", "-o", "remount,bind,ro"), lambda argv, inp: self._remount_ro(argv[-1]))
        self.ex.on(("mount", "-t"), lambda argv, inp: self._mount(argv))
        self.ex.on(("resize2fs",), "")
        self.write_mountinfo()

    def write_sys(self, rel: str, text: str) -> None:
        with open(self.paths.sys(*rel.split("/")), "w") as f:
            f.write(text + "\n")

    def set_wwid(self, wwid: str) -> None:
        self.write_sys("block/sdb/device/wwid", wwid)

    def _mkfs(self, fs: str) -> str:
        self.fs = fs
        return ""

    def write_mountinfo(self) -> None:
        lines = ["22 1 0:21 / / rw - 9p root ro"]
        for m in self.mounts:
            lines.append(f"{m['id']} 22 {m['majmin']} {esc(m['root'])} {esc(m['point'])} {m['opts']} - "
                         f"{m['fs']} {m['source']} {m['super']}")
        with open(self.paths.procpath("self", "mountinfo"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def add(self, point: str, **kw: str) -> None:
        self.next_id += 1
        m = dict(id=str(self.next_id), majmin=f"{self.major}:{self.minor}", root="/", point=point,
                 opts="rw,relatime", fs=self.fs or "?", source="/dev/sdb", super="rw")
        m.update(kw)
        self.mounts.append(m)
        self.write_mountinfo()

    def _mount(self, argv: Tuple[str, ...]) -> Tuple[int, str, str]:
        fs, point = argv[2], argv[-1]
        if fs != self.fs:
            return 32, "", f"mount: {point}: wrong fs type, bad option, bad superblock on /dev/sdb.\nmore text"
        opts = argv[4].split(",") if argv[3] == "-o" else []
        self.add(point, opts=",".join(["ro" if "ro" in opts else "rw"] + [o for o in opts if o not in ("ro", "rw")]))
        return 0, "", ""

    def _bind(self, src: str, target: str) -> str:
        m = next(m for m in reversed(self.mounts) if m["point"] == src)
        self.add(target, **{k: v for k, v in m.items() if k not in ("id", "point")})
        return ""

    def _remount_ro(self, target: str) -> str:
        m = next(m for m in reversed(self.mounts) if m["point"] == target)
        m["opts"] = m["opts"].replace("rw", "ro", 1)
        self.write_mountinfo()
        return ""

    def _umount(self, point: str, lazy: bool = False) -> Tuple[int, str, str]:
        hits = [m for m in self.mounts if m["point"] == point]
        if not hits:
            return 32, "", f"umount: {point}: not mounted."
        if point in self.busy and not lazy:
            return 32, "", f"umount: {point}: target is busy."
        self.mounts.remove(hits[-1])
        self.write_mountinfo()
        return 0, "", ""

    def table(self) -> MountTable:
        return MountTable.read(self.paths)

    def commands(self) -> List[str]:
        return [c.argv[0] + (" " + c.argv[1] if c.argv[0] in ("mount", "umount") else "") for c in self.ex.calls]


@pytest.fixture
def node(tmp_path) -> FakeNode:
    return FakeNode(str(tmp_path / "host"))


@pytest.fixture
def stager(node: FakeNode, tmp_path) -> Stager:
    return Stager(executor=node.ex, paths=node.paths, state_dir=str(tmp_path / "state"),
                  lock_path=str(tmp_path / "locks"))


def dev(wwn: str = WWN) -> AttachedDevice:
    return AttachedDevice("iscsi", path="/dev/sdb", wwn=wwn)


# --------------------------------------------------------------------------- stage
def test_blank_device_is_formatted_once_and_staging_is_idempotent(node, stager, tmp_path) -> None:
    s = str(tmp_path / "mnt" / "stage 1")
    vol = stager.stage(dev(), s, "ext4", mount_options=["noatime"])
    assert vol.formatted and vol.changed and vol.fs_uuid == "11111111-2222-3333-4444-555555555555"
    e = node.table().at(s)
    assert e is not None and e.fs_type == "ext4" and (e.major, e.minor) == (8, 16) and "noatime" in e.mount_options
    assert node.commands() == ["blkid", "wipefs", "mkfs.ext4", "blkid", "wipefs", "mount -t"]
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    (rec,) = list(state.iterdir())
    assert stat.S_IMODE(rec.stat().st_mode) == 0o600
    saved = json.loads(rec.read_text())
    assert saved["staging_path"] == s and saved["identity"]["wwn"] == WWN and saved["created_dir"] is True

    n = len(node.ex.calls)
    again = stager.stage(dev(), s, "ext4", mount_options=["noatime"])
    assert not again.changed and not again.formatted and len(node.ex.calls) == n  # nothing ran
    assert len(node.table().all_at(s)) == 1


def test_existing_filesystem_is_checked_then_mounted_never_formatted(node, stager, tmp_path) -> None:
    node.fs = "ext4"
    vol = stager.stage(dev(), str(tmp_path / "s"), "ext4")
    assert not vol.formatted and node.commands() == ["blkid", "wipefs", "e2fsck", "mount -t"]


def test_xfs_is_mounted_without_fsck(tmp_path) -> None:
    node = FakeNode(str(tmp_path / "h2"), rdev=(8, 32))
    node.fs = "xfs"
    st = Stager(executor=node.ex, paths=node.paths, state_dir=str(tmp_path / "st"), lock_path=str(tmp_path / "l"))
    st.stage(dev(), str(tmp_path / "x"), "xfs")
    assert node.commands() == ["blkid", "wipefs", "mount -t"]


def test_foreign_filesystem_is_refused_and_nothing_is_left(node, stager, tmp_path) -> None:
    node.fs = "xfs"
    s = str(tmp_path / "new" / "s")
    with pytest.raises(ForeignSignature) as e:
        stager.stage(dev(), s, "ext4")
    assert e.value.device == "/dev/sdb" and e.value.path == s and "xfs" in e.value.found
    assert node.commands() == ["blkid", "wipefs"]  # no mkfs, no fsck, no mount
    assert not os.path.exists(s) and node.table().at(s) is None and not os.listdir(tmp_path / "new")


def test_failed_fsck_does_not_mount(node, stager, tmp_path) -> None:
    node.fs, node.fsck_rc = "ext4", 4
    with pytest.raises(FilesystemCheckFailed) as e:
        stager.stage(dev(), str(tmp_path / "s"), "ext4")
    assert "exit 4" in e.value.found and "UNEXPECTED INCONSISTENCY" in e.value.found
    assert "mount -t" not in node.commands() and not os.path.exists(tmp_path / "s")


def test_mount_failure_names_the_first_line_and_leaves_nothing(node, stager, tmp_path) -> None:
    node.fs = "ext4"
    node.ex.rules.insert(0, (("mount", "-t"), (32, "", "mount: /s: wrong fs type, bad option.\nusage text")))
    with pytest.raises(StagingCommandFailed) as e:
        stager.stage(dev(), str(tmp_path / "s"), "ext4")
    assert e.value.found == "exit 32: mount: /s: wrong fs type, bad option." and e.value.action == "mount"
    assert not os.path.exists(tmp_path / "s") and not list((tmp_path / "state").glob("*.json"))


def test_wrong_volume_is_refused_before_anything_runs(node, stager, tmp_path) -> None:
    with pytest.raises(DeviceMismatch) as e:
        stager.stage(dev("36001405ffffffffffffffff00000009"), str(tmp_path / "s"))
    assert e.value.device == "/dev/sdb" and node.ex.calls == []


def test_conflicting_stage_requests(node, stager, tmp_path) -> None:
    s = str(tmp_path / "s")
    stager.stage(dev(), s, "ext4")
    with pytest.raises(MountConflict):
        stager.stage(dev(), s, "ext4", mount_options=["ro"])  # same device, other options
    with pytest.raises(MountConflict):
        stager.stage(dev(), s, "xfs")
    from blocklink.staging import DeviceInUse

    with pytest.raises(DeviceInUse) as e:  # the same filesystem on a second staging path
        stager.stage(dev(), str(tmp_path / "s2"), "ext4")
    assert s in e.value.found


@pytest.mark.parametrize("kw,field", [
    (dict(device=AttachedDevice("rbd", handle=object(), type="handle")), "device"),
    (dict(device="sdb"), "device"),
    (dict(staging_path="relative/path"), "staging_path"),
    (dict(staging_path="/"), "staging_path"),
    (dict(fs_type="btrfs"), "fs_type"),
    (dict(mount_options=["bind"]), "mount_options"),
    (dict(mkfs_options=["-F"]), "mkfs_options"),
])
def test_bad_input_is_a_typed_error_and_runs_nothing(node, stager, tmp_path, kw, field) -> None:
    args = dict(device=dev(), staging_path=str(tmp_path / "s"), fs_type="ext4")
    args.update(kw)
    with pytest.raises(InvalidOption) as e:
        stager.stage(**args)
    assert e.value.option == field and node.ex.calls == [] and not os.path.exists(tmp_path / "s")


# --------------------------------------------------------------------------- publish / unpublish / unstage
def test_publish_read_only_is_bind_then_remount(node, stager, tmp_path) -> None:
    s, t = str(tmp_path / "s"), str(tmp_path / "pods" / "t")
    stager.stage(dev(), s)
    n = len(node.ex.calls)
    pub = stager.publish(s, t, readonly=True)
    assert pub.changed and pub.readonly
    assert [c.argv for c in node.ex.calls[n:]] == [("mount", "--bind", s, t), ("mount", "-o", "remount,bind,ro", t)]
    e = node.table().at(t)
    assert "ro" in e.mount_options and not e.super_readonly
    assert not stager.publish(s, t, readonly=True).changed
    with pytest.raises(MountConflict):
        stager.publish(s, t, readonly=False)
    with pytest.raises(NotStaged):
        stager.publish(str(tmp_path / "nothing"), str(tmp_path / "t2"))


def test_read_only_remount_failure_undoes_the_bind(node, stager, tmp_path) -> None:
    s, t = str(tmp_path / "s"), str(tmp_path / "t")
    stager.stage(dev(), s)
    node.ex.rules.insert(0, (("mount", "-o", "remount,bind,ro"), (1, "", "mount: permission denied")))
    with pytest.raises(StagingCommandFailed):
        stager.publish(s, t, readonly=True)
    assert node.table().at(t) is None and not os.path.exists(t)  # never left writable


def test_unstage_refuses_while_published_then_cleans_up(node, stager, tmp_path) -> None:
    s, t = str(tmp_path / "s"), str(tmp_path / "t")
    stager.stage(dev(), s)
    stager.publish(s, t)
    with pytest.raises(StillPublished) as e:
        stager.unstage(s)
    assert e.value.targets == (t,) and e.value.device == "/dev/sdb"
    assert stager.unpublish(t).changed and not os.path.exists(t)
    done = stager.unstage(s)
    assert done.changed and not done.lazy and done.device == "/dev/sdb"
    assert node.table().of_device(8, 16) == [] and not os.path.exists(s)
    assert not list((tmp_path / "state").glob("*.json"))
    assert not stager.unstage(s).changed and not stager.unpublish(t).changed  # twice is harmless


def test_force_unstage_takes_publications_down(node, stager, tmp_path) -> None:
    s, t = str(tmp_path / "s"), str(tmp_path / "t")
    stager.stage(dev(), s)
    stager.publish(s, t)
    done = stager.unstage(s, force=True)
    assert done.changed and node.table().of_device(8, 16) == []


def test_busy_unstage_names_holders_and_force_detaches_lazily(tmp_path) -> None:
    """The fake disk's number is the st_dev of tmp_path's filesystem, so a (fake) process with a file
    open there is a holder of the 'mounted' filesystem."""
    st_dev = os.stat(tmp_path).st_dev
    node = FakeNode(str(tmp_path / "host"), rdev=(os.major(st_dev), os.minor(st_dev)))
    stager = Stager(executor=node.ex, paths=node.paths, state_dir=str(tmp_path / "state"),
                    lock_path=str(tmp_path / "locks"))
    s = str(tmp_path / "s")
    stager.stage(dev(), s)
    held = tmp_path / "s" / "data.db"
    held.write_text("x")
    os.makedirs(node.paths.procpath("4242", "fd"))
    os.symlink(str(held), node.paths.procpath("4242", "fd", "7"))
    with open(node.paths.procpath("4242", "comm"), "w") as f:
        f.write("postgres\n")
    node.busy.append(s)
    with pytest.raises(MountBusy) as e:
        stager.unstage(s)
    assert e.value.holders == (f"pid 4242 (postgres): open {held}",) and e.value.path == s
    assert node.table().at(s) is not None  # refused: still mounted
    done = stager.unstage(s, force=True)
    assert done.lazy and done.holders == e.value.holders and node.table().at(s) is None
    assert [c.argv[:2] for c in node.ex.calls[-2:]] == [("umount", s), ("umount", "-l")]


def test_publish_block_binds_the_node_onto_a_file(node, stager, tmp_path) -> None:
    t = str(tmp_path / "pods" / "blk")

    def bind_node(argv, inp):  # the kernel makes the file show the device node
        os.unlink(argv[3])
        os.mknod(argv[3], stat.S_IFBLK | 0o600, os.makedev(8, 16))
        node.add(argv[3], majmin="0:5", root="/sdb", fs="devtmpfs", source="udev")
        return ""

    node.ex.rules.insert(0, (("mount", "--bind", "/dev/sdb"), bind_node))
    pub = stager.publish_block(dev(), t)
    assert pub.changed and stat.S_ISBLK(os.stat(t).st_mode)
    assert not stager.publish_block(dev(), t).changed
    assert not stager.condition(t, dev()).abnormal

    def unbind(argv, inp):
        node._umount(argv[-1])
        os.unlink(argv[-1])
        open(argv[-1], "w").close()  # the empty file under the bind mount shows again
        return ""

    node.ex.rules.insert(0, (("umount",), unbind))
    assert stager.unpublish(t).changed and not os.path.exists(t)


# --------------------------------------------------------------------------- expand, condition
def test_expand_runs_the_filesystems_grow_tool(node, stager, tmp_path) -> None:
    s = str(tmp_path / "s")
    stager.stage(dev(), s, "ext4")
    size = stager.expand(s)
    assert node.ex.calls[-1].argv == ("resize2fs", "/dev/sdb")
    assert size == os.statvfs(s).f_blocks * os.statvfs(s).f_frsize
    with pytest.raises(NotStaged):
        stager.expand(str(tmp_path / "nothing"))


def test_condition_reports_gone_replaced_and_read_only(node, stager, tmp_path) -> None:
    s = str(tmp_path / "s")
    stager.stage(dev(), s)
    assert stager.condition(s).reason == "healthy"
    c = stager.condition(s, dev("36001405ffffffffffffffff00000009"))  # asked about another volume
    assert c.abnormal and "wwn: wanted 36001405ffffffffffffffff00000009" in c.reason
    node.set_wwid("naa.6001405ffffffffffffffff00000009")  # the node now answers for another LU
    c = stager.condition(s)
    assert c.abnormal and "no longer the volume" in c.reason and "6001405ffff" in c.reason
    node.set_wwid("naa." + WWN[1:])
    node.mounts[-1]["super"] = "ro,errors=remount-ro"
    node.write_mountinfo()
    node.write_sys("block/sdb/device/state", "offline")
    c = stager.condition(s)
    assert c.abnormal and "read-only after errors" in c.reason and "/dev/sdb is offline" in c.reason
    os.unlink(node.paths.sys("dev", "block", "8:16"))
    c = stager.condition(s)
    assert c.abnormal and c.reason.startswith("device /dev/sdb (8:16) is gone") and c.device == "/dev/sdb"
    assert stager.condition(str(tmp_path / "other")).reason.startswith("nothing is mounted")
