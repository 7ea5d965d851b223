"""The facade's ``os_brick.encryptors`` on blocklink.encryption, against the fake cryptsetup/blkid of
test_encryption_luks: the encryptor Nova's and Cinder's encryption dicts select, the passphrase derived
from a castellan-style key manager as os-brick derives it, ``device_path`` pointed at the mapping and
given back, LUKS2 resize with the key, and the formats refused."""

from __future__ import annotations

import binascii
import os
from typing import Any, Dict, List, Tuple

import pytest

from blocklink.compat.os_brick import encryptors, exception
from blocklink.compat.os_brick.encryptors import luks
from blocklink.encryption import FormatRefused
from tests.unit.test_encryption_luks import EXT4, FakeCrypt

RAW = bytes(range(0, 64, 2)) + b"\x00\x01"  # leading zero bytes: hex must keep them (two digits per byte)
HEX = binascii.hexlify(RAW).decode()


class Key:
    """castellan's managed object: ``get_encoded()`` bytes and ``managed_type()``."""

    def __init__(self, raw: bytes, kind: str = "symmetric") -> None:
        self.raw, self.kind = raw, kind

    def get_encoded(self) -> bytes:
        return self.raw

    def managed_type(self) -> str:
        return self.kind


class KeyManager:
    def __init__(self, key: Key) -> None:
        self.key = key
        self.calls: List[Tuple[Any, str]] = []

    def get(self, context: Any, key_id: str) -> Key:
        self.calls.append((context, key_id))
        return self.key


ENC = {"provider": "luks", "control_location": "front-end", "cipher": "aes-xts-plain64", "key_size": 256,
       "encryption_key_id": "key-1", "created_at": "2026-01-01", "deleted": False}


@pytest.fixture
def fake(tmp_path: Any, monkeypatch: Any) -> FakeCrypt:
    f = FakeCrypt(str(tmp_path / "host"))
    monkeypatch.setattr(luks, "ENGINE_OPTIONS", {"executor": f.ex, "paths": f.paths, "timeout": 5,
                                                 "lock_path": str(tmp_path / "locks")})
    made: Dict[str, Tuple[int, int]] = {}

    def make_node(path: str, major: int, minor: int) -> None:
        open(path, "w").close()
        made[path] = (major, minor)

    monkeypatch.setattr(luks.LuksEncryptor, "_make_node", staticmethod(make_node))
    f.made = made  # type: ignore[attr-defined]
    return f


def _encryptor(ci: Dict[str, Any], keymgr: Any, **enc: Any) -> Any:
    """As Nova and Cinder call it (the facade types the result as the base class; os-brick does not)."""
    return encryptors.get_volume_encryptor(root_helper="sudo", connection_info=ci, keymgr=keymgr, **enc)


def _ci(path: str = "/dev/sda", **data: Any) -> Dict[str, Any]:
    return {"driver_volume_type": "iscsi", "serial": "vol-1", "data": dict(data, device_path=path)}


def test_the_encryption_dict_selects_the_encryptor_as_os_brick_does(fake: FakeCrypt) -> None:
    fake.add_disk("sda")
    km = KeyManager(Key(RAW))

    def get(**enc: Any) -> Any:
        return _encryptor(_ci(), km, **enc)

    assert type(get(**ENC)) is luks.LuksEncryptor
    assert type(get(**dict(ENC, provider="luks2"))) is luks.Luks2Encryptor
    assert type(get(**dict(ENC, provider="nova.volume.encryptors.luks.LuksEncryptor"))) is luks.LuksEncryptor
    assert type(get(**dict(ENC, provider="os_brick.encryptors.luks.Luks2Encryptor"))) is luks.Luks2Encryptor
    assert type(get(**dict(ENC, control_location="FRONT-END"))) is luks.LuksEncryptor
    for enc in (dict(ENC, control_location="back-end"), {}, dict(ENC, provider=None),
                dict(ENC, provider="NoOpEncryptor")):
        assert type(get(**enc)).__name__ == "NoOpEncryptor"
        assert get(**enc).extend_volume(None, **enc) is None
    for provider in ("plain", "CryptsetupEncryptor", "my.own.Encryptor"):
        with pytest.raises(exception.EncryptionNotProvided):
            get(**dict(ENC, provider=provider))
    with pytest.raises(exception.VolumeEncryptionNotSupported, match="vol-1"):
        _encryptor(_ci(path=""), km, **ENC)
    assert fake.ex.calls == [] and km.calls == []  # choosing runs nothing and fetches no key


def test_attach_formats_a_blank_volume_and_points_device_path_at_the_mapping(fake: FakeCrypt) -> None:
    fake.add_disk("sda")
    os.makedirs(fake.paths.sys("class", "block", "sda"))
    with open(fake.paths.sys("class", "block", "sda", "dev"), "w") as f:
        f.write("8:0\n")
    km = KeyManager(Key(RAW))
    enc = _encryptor(_ci(), km, **ENC)
    assert enc.dev_name == "crypt-sda" and enc.dev_path == "/dev/sda"
    enc.attach_volume("ctx", **ENC)
    assert km.calls == [("ctx", "key-1")]
    header = fake.disks["/dev/sda"].header
    assert header is not None and header.version == 1 and header.slots[0] == HEX.encode()  # os-brick's passphrase
    fmt = next(c.argv for c in fake.ex.calls if "luksFormat" in c.argv)
    assert fmt[fmt.index("--cipher") + 1] == "aes-xts-plain64" and fmt[fmt.index("--key-size") + 1] == "256"
    local = fake.paths.devpath("sda")
    assert os.readlink(local) == "/dev/mapper/crypt-sda"

    again = _encryptor(_ci(), km, **ENC)
    assert again.dev_name == "crypt-sda"
    n = len(fake.ex.calls)
    again.attach_volume("ctx", **ENC)  # attached already: nothing runs
    assert len(fake.ex.calls) == n

    again.detach_volume(**ENC)
    assert fake.node("crypt-sda") is None
    assert os.path.isfile(local) and fake.made == {}  # type: ignore[attr-defined]  # the node itself, back
    assert sorted(os.listdir(os.path.dirname(local))) == ["mapper", "sda"]
    again.detach_volume(**ENC)  # nothing open: nothing to do


def test_a_volume_formatted_elsewhere_opens_with_the_hex_passphrase(fake: FakeCrypt) -> None:
    from tests.unit.test_encryption_luks import Header

    fake.add_disk("sdb", header=Header(2, {3: HEX.encode()}, 16 << 20))
    enc = _encryptor(_ci("/dev/sdb"), KeyManager(Key(RAW)), **dict(ENC, provider="luks2"))
    enc.attach_volume(None, **ENC)
    assert "luksFormat" not in fake.actions() and fake.node("crypt-sdb")
    disk = fake.disks["/dev/sdb"]
    disk.size += 32 << 20
    seen, resize = [], fake._resize

    def watched(*a: Any) -> Any:  # what cryptsetup would find at the disk's name during the resize
        seen.append(os.path.islink(fake.paths.devpath("sdb")))
        return resize(*a)

    fake._resize = watched  # type: ignore[method-assign]
    size = enc.extend_volume(None, **ENC)
    assert seen == [False]  # the disk's own node, not the link to the mapping
    assert size == disk.size - (16 << 20)
    resize = next(c for c in fake.ex.calls if "resize" in c.argv)
    assert resize.input == HEX.encode() and HEX not in " ".join(resize.argv)
    assert os.readlink(fake.paths.devpath("sdb")) == "/dev/mapper/crypt-sdb"  # the link again after the resize
    enc.detach_volume()
    assert os.path.isfile(fake.paths.devpath("sdb"))


def test_passphrase_secrets_are_used_as_they_are(fake: FakeCrypt) -> None:
    fake.add_disk("sdc")
    enc = encryptors.get_volume_encryptor(root_helper=None, connection_info=_ci("/dev/sdc"),
                                          keymgr=KeyManager(Key(b"correct horse", "passphrase")), **ENC)
    enc.attach_volume(None, **ENC)
    header = fake.disks["/dev/sdc"].header
    assert header is not None and header.slots[0] == b"correct horse"
    enc.detach_volume()


def test_a_mapping_opened_under_the_old_name_is_reused(fake: FakeCrypt) -> None:
    from tests.unit.test_encryption_luks import Header

    fake.add_disk("sdd", header=Header(1, {0: HEX.encode()}, 2 << 20))
    fake._open(("cryptsetup", "open"), ["/dev/sdd", "sdd"], HEX.encode())  # what an old os-brick opened
    enc = _encryptor(_ci("/dev/sdd"), KeyManager(Key(RAW)), **ENC)
    assert enc.dev_name == "sdd"
    local = fake.paths.devpath("sdd")
    os.unlink(local)
    os.symlink("/dev/mapper/sdd", local)  # and the old os-brick replaced the node by a link (ln -sf)
    enc.detach_volume()
    assert fake.node("sdd") is None
    assert not os.path.lexists(local)  # the disk is not in (fake) sysfs: no node to make, no stale link
    os.makedirs(fake.paths.sys("class", "block", "sdd"))
    with open(fake.paths.sys("class", "block", "sdd", "dev"), "w") as f:
        f.write("8:48\n")
    fake._open(("cryptsetup", "open"), ["/dev/sdd", "sdd"], HEX.encode())
    os.symlink("/dev/mapper/sdd", local)
    enc.detach_volume()
    assert os.path.isfile(local) and list(fake.made.values()) == [(8, 48)]  # type: ignore[attr-defined]


def test_nova_native_luks_preparation_formats_only_blank_volumes(fake: FakeCrypt) -> None:
    fake.add_disk("sde")
    fake.add_disk("sdf", blkid=EXT4)
    km = KeyManager(Key(RAW))
    assert luks.is_luks("sudo", "/dev/sde") is False
    enc = _encryptor(_ci("/dev/sde"), km, **ENC)
    enc._format_volume(HEX, **ENC)
    assert luks.is_luks("sudo", "/dev/sde") is True
    enc._format_volume(HEX, **ENC)  # LUKS already: left as it is
    assert fake.actions().count("luksFormat") == 1
    ext4 = _encryptor(_ci("/dev/sdf"), km, **ENC)
    with pytest.raises(FormatRefused):
        ext4._format_volume(HEX, **ENC)
    with pytest.raises(FormatRefused):
        ext4.attach_volume(None, **ENC)
    assert fake.disks["/dev/sdf"].header is None and fake.node("crypt-sdf") is None
    assert not os.path.islink(fake.paths.devpath("sdf"))
