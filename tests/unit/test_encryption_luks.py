"""LuksEncryptor against a fake cryptsetup/blkid that keeps LUKS headers, keyslots and dm-crypt mappings
(a fake sysfs under tmp_path): what is formatted, opened, refused, resized and re-keyed, and that no
passphrase is ever on an argv and every key reaches cryptsetup on stdin."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pytest

from blocklink.connection import AttachedDevice
from blocklink.encryption import (EncryptionBusy, EncryptionSpec, FormatRefused, InvalidEncryption, LuksEncryptor,
                                  MappingConflict, NotLuks, WrongKey, mapping_name)
from blocklink.errors import DetachIncomplete, DeviceNotFound
from blocklink.executor import Input
from blocklink.hostpaths import HostPaths
from blocklink.masking import Secret
from blocklink.testing.fakes import FakeExecutor

MiB = 1 << 20
KEY = Secret("first-passphrase-0123")
NEW = Secret("second-passphrase-4567")
OTHER = Secret("not-the-passphrase-89")

# recorded with cryptsetup 2.6.1
OPEN_OK = "No usable token is available.\nKey slot {slot} unlocked.\nCommand successful.\n"
NO_KEY = "No key available with this passphrase.\n"
STATUS = ("/dev/mapper/{name} is active.\n  type:    {type}\n  cipher:  aes-xts-plain64\n  keysize: 512 bits\n"
          "  key location: keyring\n  device:  /dev/sda\n  sector size:  512\n  offset:  32768 sectors\n"
          "  size:    65536 sectors\n  mode:    read/write\n")
EXT4 = "DEVNAME=/dev/sda\nUUID=e95f1adf-e6e7-45cc-ba13-a36a63f1720c\nTYPE=ext4\nUSAGE=filesystem\n"
_VALUED = {"--type", "--cipher", "--key-size", "--pbkdf", "--iter-time", "--pbkdf-memory", "--pbkdf-parallel",
           "--sector-size"}
DOS = "DEVNAME=/dev/sda\nPTUUID=78563412\nPTTYPE=dos\n"


@dataclass
class Header:
    version: int
    slots: Dict[int, bytes]
    offset: int  # bytes before the payload


@dataclass
class Disk:
    size: int
    blkid: Optional[str] = None  # a non-LUKS signature (blkid export text)
    header: Optional[Header] = None


@dataclass
class FakeCrypt:
    """cryptsetup + blkid on a fake host. Checks after every command that no header ever has zero keyslots."""

    root: str
    disks: Dict[str, Disk] = field(default_factory=dict)
    busy: Dict[str, int] = field(default_factory=dict)  # mapping -> pid holding it
    deferred: List[str] = field(default_factory=list)
    fail_after: Optional[str] = None  # raise KeyboardInterrupt after this cryptsetup action ("luksAddKey")

    def __post_init__(self) -> None:
        self.paths = HostPaths.under(self.root)
        self.ex = FakeExecutor().on(("blkid",), self.blkid).on(("cryptsetup",), self.cryptsetup)
        for d in ("sys/block", "dev/mapper", "proc"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)

    def add_disk(self, name: str, size: int = 64 * MiB, **kw: object) -> AttachedDevice:
        self.disks[f"/dev/{name}"] = Disk(size, **kw)  # type: ignore[arg-type]
        open(self.paths.devpath(name), "w").close()
        return AttachedDevice(protocol="iscsi", path=f"/dev/{name}", wwn=f"wwn-{name}")

    # -------------------------------------------------------------- blkid
    def blkid(self, argv: Tuple[str, ...], _input: Input) -> Tuple[int, str, str]:
        disk = self.disks[argv[-1]]
        if disk.header:
            return 0, f"DEVNAME={argv[-1]}\nVERSION={disk.header.version}\nUUID=u-1\nTYPE=crypto_LUKS\nUSAGE=crypto\n", ""
        return (0, disk.blkid, "") if disk.blkid else (2, "", "")

    # -------------------------------------------------------------- cryptsetup
    def cryptsetup(self, argv: Tuple[str, ...], data: Input) -> Tuple[int, str, str]:
        assert isinstance(data, (bytes, type(None)))
        words, skip = [], False
        for a in argv[1:]:
            if not skip and not a.startswith("-"):
                words.append(a)
            skip = a in _VALUED
        action, pos = words[0], words[1:]
        rc = getattr(self, "_" + action.replace("-", "_"))(argv, pos, data)
        for disk in self.disks.values():
            assert disk.header is None or disk.header.slots, "a header was left without any keyslot"
        if action == self.fail_after:
            raise KeyboardInterrupt(action)
        return rc

    def _unlocks(self, path: str, key: Optional[bytes], but: Optional[int] = None) -> Optional[int]:
        header = self.disks[path].header
        assert header is not None
        return next((s for s, k in sorted(header.slots.items()) if k == key and s != but), None)

    def _luksFormat(self, argv: Tuple[str, ...], pos: List[str], data: Input) -> Tuple[int, str, str]:
        version = 2 if argv[argv.index("--type") + 1] == "luks2" else 1
        assert isinstance(data, bytes)
        self.disks[pos[0]].header = Header(version, {0: data}, 16 * MiB if version == 2 else 2 * MiB)
        return 0, "", ""

    def _open(self, argv: Tuple[str, ...], pos: List[str], data: Input) -> Tuple[int, str, str]:
        if self.disks[pos[0]].header is None:
            return 1, "", f"Device {pos[0]} is not a valid LUKS device.\n"
        slot = self._unlocks(pos[0], data if isinstance(data, bytes) else None)
        if slot is None:
            return 2, "", NO_KEY
        if "--test-passphrase" in argv:
            return 0, "", OPEN_OK.format(slot=slot)
        node = f"dm-{len(os.listdir(self.paths.sys('block')))}"
        base = self.paths.sys("block", node)
        os.makedirs(os.path.join(base, "dm"))
        os.makedirs(os.path.join(base, "slaves", os.path.basename(pos[0])))
        with open(os.path.join(base, "dm", "name"), "w") as f:
            f.write(pos[1] + "\n")
        self._set_size(node, pos[0])
        open(self.paths.devpath("mapper", pos[1]), "w").close()
        return 0, "", ""

    def _set_size(self, node: str, lower: str) -> None:
        disk = self.disks[lower]
        assert disk.header is not None
        with open(self.paths.sys("block", node, "size"), "w") as f:
            f.write(f"{(disk.size - disk.header.offset) // 512}\n")

    def node(self, name: str) -> Optional[str]:
        for n in os.listdir(self.paths.sys("block")):
            with open(self.paths.sys("block", n, "dm", "name")) as f:
                if f.read().strip() == name:
                    return n
        return None

    def lower(self, node: str) -> str:
        return "/dev/" + os.listdir(self.paths.sys("block", node, "slaves"))[0]

    def _close(self, argv: Tuple[str, ...], pos: List[str], data: Input) -> Tuple[int, str, str]:
        node = self.node(pos[0])
        if node is None:
            return 4, "", f"Device {pos[0]} is not active.\n"
        if pos[0] in self.busy:
            if "--deferred" in argv:
                self.deferred.append(pos[0])
                return 0, "", ""
            return 5, "", f"Device {pos[0]} is still in use.\n"
        for root, dirs, files in os.walk(self.paths.sys("block", node), topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for d in dirs:
                os.rmdir(os.path.join(root, d))
        os.rmdir(self.paths.sys("block", node))
        os.unlink(self.paths.devpath("mapper", pos[0]))
        return 0, "", ""

    def _status(self, argv: Tuple[str, ...], pos: List[str], data: Input) -> Tuple[int, str, str]:
        node = self.node(pos[0])
        if node is None:
            return 4, f"/dev/mapper/{pos[0]} is inactive.\n", ""
        header = self.disks[self.lower(node)].header
        assert header is not None
        return 0, STATUS.format(name=pos[0], type=f"LUKS{header.version}"), ""

    def _resize(self, argv: Tuple[str, ...], pos: List[str], data: Input) -> Tuple[int, str, str]:
        node = self.node(pos[0])
        assert node is not None
        lower = self.lower(node)
        header = self.disks[lower].header
        assert header is not None
        if header.version == 2 and self._unlocks(lower, data if isinstance(data, bytes) else None) is None:
            return 2, "", NO_KEY  # the volume key is in the kernel keyring: resize needs a passphrase
        self._set_size(node, lower)
        return 0, "", ""

    def _luksAddKey(self, argv: Tuple[str, ...], pos: List[str], data: Input) -> Tuple[int, str, str]:
        assert isinstance(data, bytes)
        size = {a.split("=")[0]: int(a.split("=")[1]) for a in argv if a.endswith(tuple("0123456789"))
                and a.startswith(("--keyfile-size=", "--new-keyfile-size="))}
        old, new = data[:size["--keyfile-size"]], data[size["--keyfile-size"]:]
        assert len(new) == size["--new-keyfile-size"]
        if self._unlocks(pos[0], old) is None:
            return 2, "", NO_KEY
        header = self.disks[pos[0]].header
        assert header is not None
        header.slots[min(set(range(8)) - set(header.slots))] = new
        return 0, "", ""

    def _luksKillSlot(self, argv: Tuple[str, ...], pos: List[str], data: Input) -> Tuple[int, str, str]:
        slot = int(pos[1])
        if self._unlocks(pos[0], data if isinstance(data, bytes) else None, but=slot) is None:
            return 2, "", NO_KEY  # cryptsetup wants a passphrase of another keyslot
        header = self.disks[pos[0]].header
        assert header is not None
        del header.slots[slot]
        return 0, "", ""

    def hold(self, name: str, pid: int = 4242) -> None:
        """A process with the mapping open (as /proc/PID/fd shows it)."""
        node = self.node(name)
        self.busy[name] = pid
        os.makedirs(self.paths.procpath(str(pid), "fd"))
        os.symlink(f"/dev/{node}", self.paths.procpath(str(pid), "fd", "3"))
        with open(self.paths.procpath(str(pid), "comm"), "w") as f:
            f.write("qemu-system-x86\n")

    def actions(self) -> List[str]:
        return [c.argv[1] if c.argv[0] == "cryptsetup" else c.argv[0] for c in self.ex.calls]


@pytest.fixture
def fake(tmp_path) -> FakeCrypt:
    return FakeCrypt(str(tmp_path / "host"))


@pytest.fixture
def enc(fake: FakeCrypt, tmp_path) -> LuksEncryptor:
    return LuksEncryptor(executor=fake.ex, paths=fake.paths, lock_path=str(tmp_path / "locks"), timeout=5)


@pytest.fixture(autouse=True)
def no_secret_on_argv(fake: FakeCrypt):
    yield
    for call in fake.ex.calls:
        for s in (KEY, NEW, OTHER):
            assert not any(s.reveal() in a for a in call.argv), call.argv
        if "--key-file=-" not in call.argv:
            assert call.input is None


def test_mapping_names() -> None:
    assert mapping_name("vol-1") == "crypt-vol-1"
    hashed = mapping_name("a/b c")
    assert re.fullmatch(r"crypt-[0-9a-f]{40}", hashed) and hashed == mapping_name("a/b c") != mapping_name("a/b d")
    with pytest.raises(InvalidEncryption):
        mapping_name("")


def test_attach_new_blank_volume_formats_then_opens(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    dev = fake.add_disk("sda")
    crypt = enc.attach(dev, KEY, volume_id="v1", new_volume=True)
    assert crypt.path == "/dev/mapper/crypt-v1" and crypt.wwn == "wwn-sda" and crypt.protocol == "iscsi"
    assert crypt.extra["encryption"] == {"mapping": "crypt-v1", "lower_path": "/dev/sda"}
    header = fake.disks["/dev/sda"].header
    assert header is not None and header.version == 2 and header.slots == {0: KEY.reveal().encode()}
    assert enc.size("v1") == 48 * MiB and enc.mapping("v1") is not None
    fmt = next(c for c in fake.ex.calls if "luksFormat" in c.argv)
    assert fmt.argv[:2] == ("cryptsetup", "luksFormat") and fmt.input == KEY.reveal().encode()
    for opt, val in (("--type", "luks2"), ("--cipher", "aes-xts-plain64"), ("--key-size", "512"),
                     ("--pbkdf", "argon2id"), ("--pbkdf-memory", "131072"), ("--iter-time", "1000")):
        assert fmt.argv[fmt.argv.index(opt) + 1] == val
    assert fake.actions() == ["blkid", "luksFormat", "open"]
    assert enc.attach(dev, KEY, volume_id="v1", new_volume=True) == crypt  # idempotent: nothing run again
    assert fake.actions() == ["blkid", "luksFormat", "open"]


def test_attach_existing_header_opens_without_format(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    dev = fake.add_disk("sdb", header=Header(1, {3: KEY.reveal().encode()}, 2 * MiB))
    crypt = enc.attach(dev, KEY, volume_id="v2", new_volume=True)
    assert enc.size("v2") == 62 * MiB and crypt.path == "/dev/mapper/crypt-v2"
    assert fake.actions() == ["blkid", "open"]
    opened = fake.ex.calls[-1].argv
    assert opened[opened.index("--type") + 1] == "luks1"  # the header's version, whatever the spec says


@pytest.mark.parametrize("blkid,found", [
    (EXT4, "it carries a ext4 filesystem (UUID e95f1adf-e6e7-45cc-ba13-a36a63f1720c)"),
    (DOS, "it carries a dos partition table (UUID 78563412)"),
])
def test_signatures_are_never_formatted(fake: FakeCrypt, enc: LuksEncryptor, blkid: str, found: str) -> None:
    dev = fake.add_disk("sda", blkid=blkid)
    with pytest.raises(FormatRefused) as e:
        enc.attach(dev, KEY, volume_id="v1", new_volume=True)
    assert e.value.found == found and e.value.device == "/dev/sda"
    assert fake.actions() == ["blkid"] and fake.disks["/dev/sda"].header is None and enc.mapping("v1") is None


def test_blank_volume_not_declared_new_is_refused(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    dev = fake.add_disk("sda")
    with pytest.raises(FormatRefused) as e:
        enc.attach(dev, KEY, volume_id="v1")
    assert "did not say it is a new volume" in e.value.found
    assert fake.disks["/dev/sda"].header is None


def test_wrong_key_is_typed_and_opens_nothing(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    dev = fake.add_disk("sda", header=Header(2, {0: KEY.reveal().encode()}, 16 * MiB))
    with pytest.raises(WrongKey) as e:
        enc.attach(dev, OTHER, volume_id="v1", new_volume=True)
    assert e.value.device == "/dev/sda" and OTHER.reveal() not in str(e.value) + repr(e.value)
    assert enc.mapping("v1") is None and fake.actions() == ["blkid", "open"]


def test_bad_keys_and_devices_are_refused_before_anything_runs(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    dev = fake.add_disk("sda")
    for key, fld in ((Secret(""), "key"), ("plain-str-key", "key")):
        with pytest.raises(InvalidEncryption) as e:
            enc.attach(dev, key, volume_id="v1", new_volume=True)  # type: ignore[arg-type]
        assert e.value.field == fld
    with pytest.raises(InvalidEncryption) as e:
        enc.attach(AttachedDevice(protocol="rbd", handle=object(), type="handle"), KEY, volume_id="v1")
    assert e.value.field == "device"
    assert fake.ex.calls == []
    with pytest.raises(InvalidEncryption):
        LuksEncryptor(EncryptionSpec(control_location="back-end"), executor=fake.ex)


def test_mapping_open_on_another_device_is_a_conflict(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    enc.attach(fake.add_disk("sda"), KEY, volume_id="v1", new_volume=True)
    with pytest.raises(MappingConflict) as e:
        enc.attach(fake.add_disk("sdb"), KEY, volume_id="v1", new_volume=True)
    assert (e.value.expected, e.value.found) == ("sdb", "sda")
    assert fake.disks["/dev/sdb"].header is None


def test_detach_is_idempotent(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    enc.attach(fake.add_disk("sda"), KEY, volume_id="v1", new_volume=True)
    enc.detach("v1")
    assert enc.mapping("v1") is None and not os.path.exists(fake.paths.devpath("mapper", "crypt-v1"))
    n = len(fake.ex.calls)
    enc.detach("v1")
    assert len(fake.ex.calls) == n


def test_detach_of_a_held_mapping_names_the_holder(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    enc.attach(fake.add_disk("sda"), KEY, volume_id="v1", new_volume=True)
    fake.hold("crypt-v1", pid=4242)
    with pytest.raises(EncryptionBusy) as e:
        enc.detach("v1", timeout=0.2)
    assert e.value.device == "/dev/mapper/crypt-v1" and "pid 4242 (qemu-system-x86)" in e.value.reason
    assert "close" not in fake.actions() and enc.mapping("v1") is not None
    with pytest.raises(DetachIncomplete) as e2:
        enc.detach("v1", force=True)
    assert e2.value.failures == ("open by pid 4242 (qemu-system-x86); removal deferred until it closes",)
    assert fake.deferred == ["crypt-v1"] and fake.ex.calls[-1].argv == ("cryptsetup", "close", "--deferred",
                                                                         "crypt-v1")


def test_extend_luks2_passes_the_key_on_stdin(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    enc.attach(fake.add_disk("sda"), KEY, volume_id="v1", new_volume=True)
    fake.disks["/dev/sda"].size = 96 * MiB  # the target grew the volume
    with pytest.raises(InvalidEncryption) as e:
        enc.extend("v1")
    assert e.value.field == "key"
    with pytest.raises(WrongKey):
        enc.extend("v1", OTHER)
    assert enc.extend("v1", KEY) == 80 * MiB == enc.size("v1")
    resize = fake.ex.calls[-1]
    assert resize.argv == ("cryptsetup", "resize", "--key-file=-", "crypt-v1") and resize.input == KEY.reveal().encode()
    with pytest.raises(DeviceNotFound):
        enc.extend("other", KEY)


def test_extend_luks1_needs_no_key(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    dev = fake.add_disk("sda", header=Header(1, {0: KEY.reveal().encode()}, 2 * MiB))
    enc.attach(dev, KEY, volume_id="v1")
    fake.disks["/dev/sda"].size = 128 * MiB
    assert enc.extend("v1") == 126 * MiB
    assert fake.ex.calls[-1].argv == ("cryptsetup", "resize", "crypt-v1") and fake.ex.calls[-1].input is None


@pytest.mark.parametrize("version", [1, 2])
def test_rotate_key_adds_verifies_then_removes(fake: FakeCrypt, enc: LuksEncryptor, version: int) -> None:
    dev = fake.add_disk("sda", header=Header(version, {0: KEY.reveal().encode()}, 2 * MiB))
    steps: List[str] = []
    assert enc.rotate_key(dev, KEY, NEW, on_step=steps.append) == 1
    assert steps == ["added", "verified", "removed"]
    header = fake.disks["/dev/sda"].header
    assert header is not None and header.slots == {1: NEW.reveal().encode()}
    assert fake.actions() == ["blkid", "open", "open", "luksAddKey", "open", "luksKillSlot"]
    add = next(c for c in fake.ex.calls if "luksAddKey" in c.argv)
    old_b, new_b = KEY.reveal().encode(), NEW.reveal().encode()
    assert add.input == old_b + new_b
    assert f"--keyfile-size={len(old_b)}" in add.argv and f"--new-keyfile-size={len(new_b)}" in add.argv
    assert add.argv[add.argv.index("--pbkdf") + 1] == ("argon2id" if version == 2 else "pbkdf2")
    kill = fake.ex.calls[-1]
    assert kill.argv[-2:] == ("/dev/sda", "0") and kill.input == new_b  # authorised by the new key


def test_rotation_interrupted_after_add_keeps_both_keys_and_a_rerun_finishes(fake: FakeCrypt,
                                                                             enc: LuksEncryptor) -> None:
    dev = fake.add_disk("sda", header=Header(2, {0: KEY.reveal().encode()}, 16 * MiB))
    fake.fail_after = "luksAddKey"
    with pytest.raises(KeyboardInterrupt):
        enc.rotate_key(dev, KEY, NEW)
    header = fake.disks["/dev/sda"].header
    assert header is not None and sorted(header.slots) == [0, 1]  # both keys open it
    fake.fail_after = None
    steps: List[str] = []
    assert enc.rotate_key(dev, KEY, NEW, on_step=steps.append) == 1
    assert steps == ["verified", "removed"] and header.slots == {1: NEW.reveal().encode()}
    assert [a for a in fake.actions() if a == "luksAddKey"] == ["luksAddKey"]  # never added twice
    steps.clear()
    assert enc.rotate_key(dev, KEY, NEW, on_step=steps.append) == 1 and steps == []  # already done


def test_rotation_refusals(fake: FakeCrypt, enc: LuksEncryptor) -> None:
    dev = fake.add_disk("sda", header=Header(2, {0: KEY.reveal().encode()}, 16 * MiB))
    with pytest.raises(InvalidEncryption) as e:
        enc.rotate_key(dev, KEY, Secret(KEY.reveal()))
    assert e.value.field == "new"
    with pytest.raises(WrongKey):
        enc.rotate_key(dev, OTHER, NEW)
    header = fake.disks["/dev/sda"].header
    assert header is not None and header.slots == {0: KEY.reveal().encode()}
    with pytest.raises(NotLuks) as e2:
        enc.rotate_key(fake.add_disk("sdb", blkid=EXT4), KEY, NEW)
    assert "ext4 filesystem" in e2.value.found
