"""blocklink.staging's pure parts: mountinfo parsing, signature decisions from recorded blkid/wipefs
outputs, option validation, idempotency decisions, health assessment, holder detection."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from blocklink.errors import InvalidOption
from blocklink.hostpaths import HostPaths
from blocklink.staging import filesystems
from blocklink.staging.errors import DeviceInUse, ForeignSignature, MountConflict, ProbeFailed
from blocklink.staging.health import Facts, assess
from blocklink.staging.holders import holders, maps_devices
from blocklink.staging.idempotency import already_published, already_staged
from blocklink.staging.identity import VolumeIdentity, differences, expected, merged
from blocklink.staging.mountinfo import MountTable, parse, parse_line, unescape
from blocklink.staging.records import StagingRecord
from blocklink.staging.signatures import (Action, Probe, Signature, decide, parse_blkid_export,
                                          parse_wipefs_json)
from blocklink.models.host import AttachedDevice

# --------------------------------------------------------------------------- mountinfo
MOUNTINFO = r"""22 1 0:21 / / rw,relatime shared:1 - 9p root ro,trans=virtio
35 22 0:30 / /tmp rw,relatime shared:5 - overlay ovl-tmp rw,lowerdir=/newroot/tmp
58 35 8:16 / /tmp/pods/p\0401/vol\011x rw,noatime shared:30 - ext4 /dev/sdb rw,errors=remount-ro
59 35 8:16 / /tmp/st\134back ro,noatime shared:30 master:2 - ext4 /dev/sdb rw,errors=remount-ro
60 35 8:16 /dir /tmp/sub rw,relatime - ext4 /dev/sdb ro
61 58 8:32 / /tmp/pods/p\0401/vol\011x rw - xfs /dev/sdc rw
62 35 0:5 /sdd /tmp/blockdev rw,nosuid - devtmpfs udev rw,size=1000k
this line is not mountinfo
63 35 8:48 / /tmp/broken rw
"""


def test_unescape_octal_sequences() -> None:
    assert unescape(r"/a\040b\011c\012d\134e") == "/a b\tc\nd\\e"
    assert unescape("/plain") == "/plain"


def test_parse_fields_optional_tags_and_escaped_paths() -> None:
    entries = parse(MOUNTINFO)
    assert [e.mount_id for e in entries] == [22, 35, 58, 59, 60, 61, 62]  # malformed lines dropped
    e = entries[2]
    assert (e.major, e.minor, e.majmin) == (8, 16, "8:16")
    assert e.mount_point == "/tmp/pods/p 1/vol\tx" and e.root == "/"
    assert e.fs_type == "ext4" and e.source == "/dev/sdb"
    assert e.mount_options == ("rw", "noatime") and e.super_options == ("rw", "errors=remount-ro")
    back = entries[3]
    assert back.mount_point == "/tmp/st\\back" and back.readonly and not back.super_readonly
    sub = entries[4]
    assert sub.root == "/dir" and sub.super_readonly and sub.readonly  # kernel-side read-only


def test_parse_line_without_separator_is_none() -> None:
    assert parse_line("63 35 8:48 / /tmp/broken rw") is None
    assert parse_line("x 35 8:48 / /m rw - ext4 /dev/x rw") is None


def test_mount_table_lookups() -> None:
    t = MountTable(parse(MOUNTINFO))
    top = t.at("/tmp/pods/p 1/vol\tx/")  # normalised; the stacked xfs mount hides the ext4 one
    assert top is not None and top.fs_type == "xfs" and top.mount_id == 61
    assert [e.mount_id for e in t.all_at("/tmp/pods/p 1/vol\tx")] == [58, 61]
    assert {e.mount_point for e in t.of_device(8, 16)} == {"/tmp/pods/p 1/vol\tx", "/tmp/st\\back", "/tmp/sub"}
    assert t.at("/tmp/nothing") is None
    assert {e.mount_id for e in t.below("/tmp")} == {58, 59, 60, 61, 62}


def test_read_from_host_paths(tmp_path) -> None:
    paths = HostPaths.under(str(tmp_path))
    os.makedirs(paths.procpath("self"))
    with open(paths.procpath("self", "mountinfo"), "w") as f:
        f.write(MOUNTINFO)
    assert MountTable.read(paths).at("/tmp/sub").root == "/dir"
    assert MountTable.read(HostPaths.under(str(tmp_path / "none"))).entries == []


# --------------------------------------------------------------------------- signatures (recorded outputs)
BLKID_EXT4 = "DEVNAME=/dev/sdb\nUUID=14d3074c-5cfd-4af1-bf4b-aac9c3eebae5\nVERSION=1.0\nBLOCK_SIZE=1024\nTYPE=ext4\nUSAGE=filesystem\n"
BLKID_XFS = "DEVNAME=/dev/sdb\nUUID=0b7c3b84-3a2d-4b8e-9a3e-2f1a6c3f1d11\nBLOCK_SIZE=512\nTYPE=xfs\nUSAGE=filesystem\n"
BLKID_LUKS = "DEVNAME=/dev/loop1\nVERSION=2\nUUID=6301719a-fb56-4521-94ed-38ea6973da8f\nTYPE=crypto_LUKS\nUSAGE=crypto\n"
BLKID_LVM = "DEVNAME=/dev/sdb\nUUID=Xc1pRz-1111-2222-3333-4444-5555-666666\nVERSION=LVM2 001\nTYPE=LVM2_member\nUSAGE=raid\n"
BLKID_DOS = "DEVNAME=/dev/sdb\nPTUUID=6a4bd1a2\nPTTYPE=dos\n"
WIPEFS_EXT4 = '{"signatures": [{"device": "sdb", "offset": "0x438", "type": "ext4", "uuid": "14d3", "label": null}]}'
WIPEFS_LUKS = ('{"signatures": [{"device": "loop1", "offset": "0x0", "type": "crypto_LUKS", "uuid": "6301"},'
               '{"device": "loop1", "offset": "0x4000", "type": "crypto_LUKS", "uuid": "6301"}]}')
WIPEFS_NONE = '{\n   "signatures": [\n\n   ]\n}'


def probe(rc: int, blkid: str, wipefs: str = WIPEFS_NONE, **kw) -> Probe:
    return Probe(parse_blkid_export(rc, blkid), parse_wipefs_json(wipefs), **kw)


def test_blank_device_is_formatted() -> None:
    assert decide("/dev/sdb", "/s", "ext4", probe(2, "")) is Action.FORMAT
    assert decide("/dev/sdb", "/s", "xfs", probe(2, "", "")) is Action.FORMAT  # older wipefs: no output


def test_matching_filesystem_is_mounted_never_formatted() -> None:
    assert decide("/dev/sdb", "/s", "ext4", probe(0, BLKID_EXT4, WIPEFS_EXT4)) is Action.MOUNT
    assert decide("/dev/sdb", "/s", "xfs", probe(0, BLKID_XFS)) is Action.MOUNT


@pytest.mark.parametrize("rc,blkid,wipefs,wanted,found", [
    (0, BLKID_XFS, WIPEFS_NONE, "ext4", "xfs (filesystem) UUID 0b7c3b84"),
    (0, BLKID_EXT4, WIPEFS_EXT4, "xfs", "ext4 (filesystem)"),
    (0, BLKID_LUKS, WIPEFS_LUKS, "ext4", "crypto_LUKS (crypto)"),
    (0, BLKID_LVM, WIPEFS_NONE, "ext4", "LVM2_member (raid)"),
    (0, BLKID_DOS, WIPEFS_NONE, "ext4", "a dos partition table"),
    # blkid sees ext4 but a stray signature is there too: not only ours, so not ours to mount
    (0, BLKID_EXT4, '{"signatures":[{"offset":"0x438","type":"ext4"},{"offset":"0x1fe","type":"dos"}]}', "ext4",
     "signatures dos"),
    # blkid found nothing but wipefs did
    (2, "", '{"signatures":[{"offset":"0x0","type":"VMFS_volume_member"}]}', "ext4", "VMFS_volume_member"),
])
def test_any_other_signature_is_refused(rc, blkid, wipefs, wanted, found) -> None:
    with pytest.raises(ForeignSignature) as e:
        decide("/dev/sdb", "/stage/v", wanted, probe(rc, blkid, wipefs))
    err = e.value
    assert found in err.found and err.device == "/dev/sdb" and err.path == "/stage/v" and err.wanted == wanted
    assert "/dev/sdb" in str(err) and "/stage/v" in str(err) and "never formatted" in str(err)


def test_ambivalent_probe_is_refused() -> None:
    with pytest.raises(ForeignSignature) as e:
        decide("/dev/sdb", "/s", "ext4", probe(8, "", '{"signatures":[{"type":"xfs"},{"type":"ext4"}]}'))
    assert "ambivalent" in e.value.found and "ext4, xfs" in e.value.found


@pytest.mark.parametrize("rc,blkid", [(4, ""), (1, ""), (2, "TYPE=ext4\n")])
def test_unreadable_probe_never_formats(rc, blkid) -> None:
    with pytest.raises(ProbeFailed):
        decide("/dev/sdb", "/s", "ext4", probe(rc, blkid))


def test_partitions_and_holders_are_refused_even_when_blank() -> None:
    with pytest.raises(ForeignSignature) as e:
        decide("/dev/sdb", "/s", "ext4", probe(2, "", partitions=("sdb1",)))
    assert "sdb1" in e.value.found
    with pytest.raises(DeviceInUse) as e2:
        decide("/dev/sdb", "/s", "ext4", probe(0, BLKID_LUKS, WIPEFS_LUKS, holders=("dm-3",)))
    assert "dm-3" in e2.value.found


def test_wipefs_json_errors() -> None:
    assert parse_wipefs_json(WIPEFS_LUKS)[1] == Signature("crypto_LUKS", "0x4000", "6301")
    with pytest.raises(ValueError):
        parse_wipefs_json("not json")
    with pytest.raises(ValueError):
        parse_wipefs_json('{"nothing": 1}')


# --------------------------------------------------------------------------- options
def test_fs_types() -> None:
    assert filesystems.filesystem("xfs").fsck_argv("/dev/sdb") is None  # xfs: never fsck before mount
    assert filesystems.filesystem("ext4").fsck_argv("/dev/sdb") == ["e2fsck", "-p", "/dev/sdb"]
    assert filesystems.EXT4.grow_argv("/dev/sdb", "/m") == ["resize2fs", "/dev/sdb"]
    assert filesystems.XFS.grow_argv("/dev/sdb", "/m") == ["xfs_growfs", "/m"]
    for bad in ("btrfs", "", None, 4):
        with pytest.raises(InvalidOption) as e:
            filesystems.filesystem(bad)
        assert e.value.option == "fs_type"


def test_mount_options_validation() -> None:
    assert filesystems.mount_options(["noatime", "data=ordered", "noatime"]) == ("noatime", "data=ordered")
    assert filesystems.mount_options(()) == ()
    for bad in ("noatime", ["a,b"], ["bind"], ["remount"], ["ro", "rw"], [""], ["x y"], [3], ["a\x00"]):
        with pytest.raises(InvalidOption) as e:
            filesystems.mount_options(bad)
        assert e.value.option == "mount_options"


def test_mkfs_force_flags_are_refused() -> None:
    assert filesystems.mkfs_options(filesystems.EXT4, ["-L", "data", "-m", "0"]) == ("-L", "data", "-m", "0")
    assert filesystems.EXT4.mkfs_argv("/dev/sdb", ("-L", "x"))[-3:] == ["-L", "x", "/dev/sdb"]
    for fs, bad in ((filesystems.EXT4, ["-F"]), (filesystems.EXT4, ["-qF"]), (filesystems.XFS, ["-f"]),
                    (filesystems.XFS, ["-L", "a", "-qf"]), (filesystems.EXT4, ["/dev/sdc"]), (filesystems.XFS, "-f")):
        with pytest.raises(InvalidOption) as e:
            filesystems.mkfs_options(fs, bad)
        assert e.value.option == "mkfs_options"
    assert filesystems.mkfs_options(filesystems.XFS, ["-F"]) == ("-F",)  # not xfs's force flag


# --------------------------------------------------------------------------- idempotency
def entries(*lines: str) -> MountTable:
    return MountTable(parse("\n".join(lines)))


STAGED = "58 35 8:16 / /s rw,noatime - ext4 /dev/sdb rw"


def record(**kw) -> StagingRecord:
    base = dict(staging_path="/s", device="/dev/sdb", major=8, minor=16, fs_type="ext4", mount_options=("noatime",))
    base.update(kw)
    return StagingRecord(**base)


def test_not_mounted_means_go_ahead() -> None:
    assert already_staged(None, "/dev/sdb", 8, 16, "ext4", (), None) is False


def test_same_device_and_options_is_a_noop() -> None:
    e = entries(STAGED).at("/s")
    assert already_staged(e, "/dev/sdb", 8, 16, "ext4", ("noatime",), record()) is True
    # no record (mounted by hand): the kernel's view must show every option asked for
    assert already_staged(e, "/dev/sdb", 8, 16, "ext4", ("noatime",), None) is True


@pytest.mark.parametrize("line,args,rec,found", [
    ("58 35 8:32 / /s rw - ext4 /dev/sdc rw", (8, 16, "ext4", ()), None, "/dev/sdc"),  # another device
    (STAGED, (8, 16, "xfs", ("noatime",)), None, "not xfs"),  # another filesystem type
    ("58 35 8:16 /sub /s rw - ext4 /dev/sdb rw", (8, 16, "ext4", ()), None, "subtree /sub"),
    (STAGED, (8, 16, "ext4", ("noatime", "nodev")), record(), "staged with options noatime"),
    (STAGED, (8, 16, "ext4", ("ro",)), None, "not ro"),  # hand-mounted rw, asked ro
])
def test_something_else_staged_is_a_conflict(line, args, rec, found) -> None:
    with pytest.raises(MountConflict) as e:
        already_staged(entries(line).at("/s"), "/dev/sdb", *args, rec)
    assert found in str(e.value) and e.value.path == "/s" and e.value.device == "/dev/sdb"


def test_publish_decisions() -> None:
    t = entries(STAGED, "70 35 8:16 / /t rw - ext4 /dev/sdb rw", "71 35 8:16 / /r ro - ext4 /dev/sdb rw",
                "72 35 8:32 / /o rw - ext4 /dev/sdc rw")
    src = t.at("/s")
    assert already_published(None, src, "/t", False) is False
    assert already_published(t.at("/t"), src, "/t", False) is True
    assert already_published(t.at("/r"), src, "/r", True) is True
    with pytest.raises(MountConflict):
        already_published(t.at("/t"), src, "/t", True)  # published rw, asked ro
    with pytest.raises(MountConflict) as e:
        already_published(t.at("/o"), src, "/o", False)
    assert "/dev/sdc" in e.value.found


# --------------------------------------------------------------------------- identity and health
def test_identity_from_attached_device_and_differences() -> None:
    iscsi = AttachedDevice("iscsi", path="/dev/sdb", wwn="36001405aaaa")
    assert expected(iscsi) == VolumeIdentity(wwn="36001405aaaa")
    nvme = AttachedDevice("nvmeof", path="/dev/nvme0n1", wwn="uuid.1234", uuid="1234")
    assert expected(nvme) == VolumeIdentity(wwn="uuid.1234", uuid="1234")
    rbd = AttachedDevice("rbd", path="/dev/rbd0", volume="volumes/img")
    assert expected(rbd) == VolumeIdentity(rbd="volumes/img")
    assert differences(VolumeIdentity(wwn="36001405aaaa"), VolumeIdentity(wwn="naa.6001405aaaa")) == []
    assert differences(VolumeIdentity(wwn="36001405aaaa"), VolumeIdentity(wwn="36001405bbbb")) == [
        "wwn: wanted 36001405aaaa, found 36001405bbbb"]
    assert differences(VolumeIdentity(wwn="3600"), VolumeIdentity(dm_uuid="CRYPT-LUKS2-x")) == []  # not comparable
    m = merged(VolumeIdentity(wwn="3600"), VolumeIdentity(wwn="naa.600", serial="S1"))
    assert m == VolumeIdentity(wwn="3600", serial="S1")
    assert VolumeIdentity.from_dict(m.to_dict()) == m and not VolumeIdentity()


def test_health_reasons() -> None:
    ok = Facts("/s", True, "8:16", "/dev/sdb", expected=VolumeIdentity(wwn="3a"), current=VolumeIdentity(wwn="3a"),
               scsi_state="running")
    assert assess(ok).abnormal is False and assess(ok).reason == "healthy"
    gone = assess(Facts("/s", True, "8:16", "/dev/sdb", device_present=False))
    assert gone.abnormal and gone.reason == "device /dev/sdb (8:16) is gone"
    other = assess(Facts("/s", True, "8:16", "/dev/sdb", expected=VolumeIdentity(wwn="3a", serial="X"),
                         current=VolumeIdentity(wwn="3b", serial="X")))
    assert other.abnormal and "no longer the volume" in other.reason and "wwn" in other.reason
    ro = assess(Facts("/s", True, "8:16", "/dev/sdb", super_readonly=True, fs_errors=2, scsi_state="offline"))
    assert ro.abnormal and "offline" in ro.reason and "read-only after errors (2 error(s)" in ro.reason
    asked = assess(Facts("/s", True, "8:16", "/dev/sdb", super_readonly=True, asked_readonly=True))
    assert not asked.abnormal  # staged read-only on purpose
    io = assess(Facts("/s", True, "8:16", "/dev/sdb", io_error="Input/output error (EIO)"))
    assert io.abnormal and "EIO" in io.reason
    assert assess(Facts("/s", False)).reason == "nothing is mounted at /s"


# --------------------------------------------------------------------------- holders
def test_maps_devices_parses_hex_majmin() -> None:
    text = ("7f00-7f01 r-xp 00000000 08:10 1234 /mnt/lib.so\n"
            "7f01-7f02 rw-p 00000000 00:00 0 \n"
            "7f02-7f03 r--p 00001000 103:0a 99 /data/x\n")
    assert maps_devices(text) == {(8, 16), (259, 10)}


def test_holders_finds_open_files_and_cwd_by_device(tmp_path) -> None:
    """A real child with a file open and its cwd in a directory: found by st_dev, named by pid and comm."""
    d = tmp_path / "fs"
    d.mkdir()
    code = "import sys,time; f=open('held','w'); print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=str(d), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        st = os.stat(str(d))
        found = [h for h in holders(HostPaths(), os.major(st.st_dev), os.minor(st.st_dev))
                 if h.startswith(f"pid {child.pid} ")]
        assert len(found) == 1 and f"open {d}/held" in found[0] and f"cwd {d}" in found[0]
        assert not [h for h in holders(HostPaths(), 4095, 4095) if h.startswith(f"pid {child.pid} ")]
    finally:
        child.stdin.close()
        child.wait(timeout=30)
