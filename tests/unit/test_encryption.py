"""blocklink.encryption: the encryption dict, option validation, the key managers, signature probing."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from blocklink.encryption import (CastellanKeyManager, EncryptionSpec, InvalidEncryption, KeyNotFound,
                                  StaticKeyManager, load_encryption, passphrase_from_key, spec_from_dict)
from blocklink.encryption.errors import EncryptionError
from blocklink.encryption.probe import luks_version, parse_export, probe
from blocklink.errors import InvalidConnectionInfo, MissingDependency
from blocklink.masking import Secret
from blocklink.testing.fakes import FakeExecutor

# recorded with blkid from util-linux 2.38.1 (`blkid --probe --output export`)
BLKID_EXT4 = ("DEVNAME=/dev/sda\nLABEL=data\nUUID=e95f1adf-e6e7-45cc-ba13-a36a63f1720c\nVERSION=1.0\n"
              "BLOCK_SIZE=1024\nTYPE=ext4\nUSAGE=filesystem\n")
BLKID_DOS = "DEVNAME=/dev/sda\nPTUUID=78563412\nPTTYPE=dos\n"
BLKID_LUKS1 = "DEVNAME=/dev/sda\nVERSION=1\nUUID=292d84ad-9a2e-4bd8-9283-2347b9022b04\nTYPE=crypto_LUKS\nUSAGE=crypto\n"
BLKID_LUKS2 = "DEVNAME=/dev/sda\nVERSION=2\nUUID=e207ad1f-7508-493f-a72d-d7a815cd5698\nTYPE=crypto_LUKS\nUSAGE=crypto\n"
BLKID_LVM = "DEVNAME=/dev/sda\nUUID=Kq3Yfx-1Fz4-PqGX-3sKD-Hk1W-Zq9m-4fW2aB\nVERSION=LVM2 001\nTYPE=LVM2_member\nUSAGE=raid\n"

NOVA = {"provider": "luks", "cipher": "aes-xts-plain64", "key_size": 256, "control_location": "front-end",
        "encryption_key_id": "c3f7b2f4-5c1c-4bde-9a9a-2a0e6d5b1c11"}


# ------------------------------------------------------------------ options
def test_defaults_are_the_safe_ones() -> None:
    s = EncryptionSpec()
    assert (s.format, s.cipher, s.key_size, s.effective_pbkdf) == ("luks2", "aes-xts-plain64", 512, "argon2id")
    assert s.format_args() == ["--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512",
                               "--pbkdf", "argon2id", "--iter-time", "1000", "--pbkdf-memory", "131072"]
    assert s.host_side


def test_luks1_uses_pbkdf2_without_memory_cost() -> None:
    s = EncryptionSpec(format="luks1")
    assert s.effective_pbkdf == "pbkdf2"
    assert s.pbkdf_args() == ["--pbkdf", "pbkdf2", "--iter-time", "1000"]
    # a LUKS2 spec adding a keyslot to a LUKS1 header still asks for pbkdf2 (LUKS1 has nothing else)
    assert EncryptionSpec().pbkdf_args(luks_type="luks1") == ["--pbkdf", "pbkdf2", "--iter-time", "1000"]


def test_options_change_cost_and_sector_size() -> None:
    s = EncryptionSpec().with_options(iter_time_ms=200, pbkdf_memory_kib=65536, pbkdf_parallel=2, sector_size=4096)
    assert s.format_args()[-8:] == ["--iter-time", "200", "--pbkdf-memory", "65536", "--pbkdf-parallel", "2",
                                    "--sector-size", "4096"]


@pytest.mark.parametrize("fields,field", [
    ({"format": "luks3"}, "encryption.format"),
    ({"cipher": "aes"}, "encryption.cipher"),
    ({"cipher": "aes-ecb"}, "encryption.cipher"),
    ({"cipher": "cipher_null-ecb"}, "encryption.cipher"),
    ({"cipher": "aes-xts-plain64; rm -rf /"}, "encryption.cipher"),
    ({"key_size": 128}, "encryption.key_size"),           # XTS needs two keys
    ({"key_size": 100}, "encryption.key_size"),
    ({"key_size": True}, "encryption.key_size"),
    ({"pbkdf": "scrypt"}, "encryption.pbkdf"),
    ({"format": "luks1", "pbkdf": "argon2id"}, "encryption.pbkdf"),
    ({"format": "luks1", "pbkdf_memory_kib": 1024}, "encryption.pbkdf_memory_kib"),
    ({"iter_time_ms": 0}, "encryption.iter_time_ms"),
    ({"iter_time_ms": 60_000}, "encryption.iter_time_ms"),   # the cost stays bounded
    ({"pbkdf_memory_kib": 4 << 20}, "encryption.pbkdf_memory_kib"),
    ({"pbkdf_parallel": 64}, "encryption.pbkdf_parallel"),
    ({"format": "luks1", "sector_size": 4096}, "encryption.sector_size"),
    ({"sector_size": 3000}, "encryption.sector_size"),
    ({"control_location": "middle"}, "encryption.control_location"),
])
def test_bad_options_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(InvalidEncryption) as e:
        EncryptionSpec(**fields)
    assert e.value.field == field
    assert isinstance(e.value, InvalidConnectionInfo) and isinstance(e.value, ValueError)


def test_unknown_option_is_refused() -> None:
    with pytest.raises(InvalidEncryption) as e:
        EncryptionSpec().with_options(iterations=5)
    assert e.value.field == "encryption.iterations"


def test_other_ciphers_and_key_sizes_are_accepted() -> None:
    assert EncryptionSpec(cipher="aes-cbc-essiv:sha256", key_size=256).format_args()[3] == "aes-cbc-essiv:sha256"
    assert EncryptionSpec(cipher="serpent-xts-plain64", key_size=256).key_size == 256


# ------------------------------------------------------------------ the encryption dict
def test_nova_dict() -> None:
    s = spec_from_dict(NOVA)
    assert (s.format, s.cipher, s.key_size, s.key_id, s.host_side) == (
        "luks1", "aes-xts-plain64", 256, NOVA["encryption_key_id"], True)


@pytest.mark.parametrize("provider,fmt", [
    ("luks", "luks1"), ("luks2", "luks2"), ("nova.volume.encryptors.luks.LuksEncryptor", "luks1"),
    ("os_brick.encryptors.luks.Luks2Encryptor", "luks2"), ("LuksEncryptor", "luks1"),
])
def test_provider_spellings(provider: str, fmt: str) -> None:
    assert spec_from_dict(dict(NOVA, provider=provider)).format == fmt


def test_cinder_record_extras_and_string_sizes() -> None:
    d = dict(NOVA, key_size="512", cipher=None, created_at="2024-01-01", deleted=False, volume_type_id="vt",
             encryption_id="e1")
    s = spec_from_dict(d, iter_time_ms=250)
    assert (s.key_size, s.cipher, s.iter_time_ms) == (512, "aes-xts-plain64", 250)


def test_back_end_and_nop_need_nothing_on_the_host() -> None:
    assert not spec_from_dict(dict(NOVA, control_location="back-end")).host_side
    s = spec_from_dict({"provider": "nova.volume.encryptors.nop.NoOpEncryptor"})
    assert s.format is None and not s.host_side


@pytest.mark.parametrize("d,field", [
    ({k: v for k, v in NOVA.items() if k != "provider"}, "encryption.provider"),
    (dict(NOVA, provider="plain"), "encryption.provider"),        # plain dm-crypt: no header, refused
    (dict(NOVA, provider="CryptsetupEncryptor"), "encryption.provider"),
    (dict(NOVA, provider="bitlocker"), "encryption.provider"),
    (dict(NOVA, provider=5), "encryption.provider"),
    (dict(NOVA, cypher="aes-xts-plain64"), "encryption.cypher"),  # a typo must not fall back to a default
    (dict(NOVA, key_size="big"), "encryption.key_size"),
    (dict(NOVA, key_size=192), "encryption.key_size"),
    (dict(NOVA, cipher="aes-ecb-plain"), "encryption.cipher"),
    (dict(NOVA, control_location="elsewhere"), "encryption.control_location"),
    ({k: v for k, v in NOVA.items() if k != "encryption_key_id"}, "encryption.encryption_key_id"),
    (dict(NOVA, encryption_key_id=""), "encryption.encryption_key_id"),
    (["luks"], "encryption"),
])
def test_bad_dicts_name_the_field(d: Any, field: str) -> None:
    with pytest.raises(InvalidEncryption) as e:
        spec_from_dict(d)
    assert e.value.field == field


# ------------------------------------------------------------------ key managers
def test_static_key_manager() -> None:
    km = StaticKeyManager({"k1": Secret("passphrase-one")})
    km.put("k2", "passphrase-two")
    assert km.get_key("k1") == Secret("passphrase-one") and km.get_key("k2").reveal() == "passphrase-two"
    with pytest.raises(KeyNotFound) as e:
        km.get_key("k3")
    assert e.value.key_id == "k3"
    assert "passphrase" not in repr(km)
    with pytest.raises(InvalidEncryption):
        km.put("k4", "")


def test_passphrase_is_the_hex_of_the_raw_key_as_nova_does() -> None:
    assert passphrase_from_key(b"\x00\xff\x10").reveal() == "00ff10"
    assert repr(passphrase_from_key(b"\x01" * 32)) == "Secret('***')"
    with pytest.raises(InvalidEncryption):
        passphrase_from_key(b"")


def test_load_encryption_fetches_the_key_only_for_the_host() -> None:
    km = StaticKeyManager({NOVA["encryption_key_id"]: Secret("0123456789abcdef")})
    enc = load_encryption(NOVA, km)
    assert enc.spec.format == "luks1" and enc.key == Secret("0123456789abcdef")
    assert "0123456789abcdef" not in repr(enc)

    class Refuses:
        def get_key(self, key_id: str) -> Secret:
            raise AssertionError("no key is needed when the storage encrypts")

    assert load_encryption(dict(NOVA, control_location="back-end"), Refuses()).key is None
    with pytest.raises(KeyNotFound):
        load_encryption(dict(NOVA, encryption_key_id="other"), km)
    with pytest.raises(InvalidEncryption) as e:
        load_encryption(NOVA, None)
    assert e.value.field == "keymgr"


class _Managed:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def get_encoded(self) -> bytes:
        return self.raw


class ManagedObjectNotFoundError(Exception):
    pass


class _FakeCastellanAPI:
    def __init__(self) -> None:
        self.calls: list = []

    def get(self, context: Any, key_id: str) -> _Managed:
        self.calls.append((context, key_id))
        if key_id != "known":
            raise ManagedObjectNotFoundError(key_id)
        return _Managed(bytes(range(4)))


def test_castellan_adapter() -> None:
    api = _FakeCastellanAPI()
    km = CastellanKeyManager("ctx", api=api)
    assert km.get_key("known").reveal() == "00010203" and api.calls == [("ctx", "known")]
    with pytest.raises(KeyNotFound):
        km.get_key("gone")


def test_castellan_is_imported_only_when_used() -> None:
    code = ("import sys, blocklink.encryption as e; assert 'castellan' not in sys.modules\n"
            "try:\n    import castellan\nexcept ImportError:\n"
            "    try:\n        e.CastellanKeyManager('ctx')\n    except e.KeyNotFound:\n        raise\n"
            "    except Exception as x:\n        print(type(x).__name__)\nelse:\n    print('installed')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out in ("MissingDependency", "installed")
    assert issubclass(MissingDependency, ImportError)


# ------------------------------------------------------------------ probing
@pytest.mark.parametrize("text,expect", [
    (BLKID_EXT4, [("filesystem", "ext4", "a ext4 filesystem (UUID e95f1adf-e6e7-45cc-ba13-a36a63f1720c)")]),
    (BLKID_DOS, [("partition-table", "dos", "a dos partition table (UUID 78563412)")]),
    (BLKID_LUKS1, [("luks", "crypto_LUKS", "a LUKS1 header (UUID 292d84ad-9a2e-4bd8-9283-2347b9022b04)")]),
    (BLKID_LUKS2, [("luks", "crypto_LUKS", "a LUKS2 header (UUID e207ad1f-7508-493f-a72d-d7a815cd5698)")]),
    (BLKID_LVM, [("lvm", "LVM2_member", "an LVM physical volume (UUID Kq3Yfx-1Fz4-PqGX-3sKD-Hk1W-Zq9m-4fW2aB)")]),
])
def test_parse_recorded_blkid_output(text: str, expect: list) -> None:
    assert [(s.kind, s.type, s.describe()) for s in parse_export(text)] == expect


def test_luks_version_only_for_a_lone_luks_header() -> None:
    assert luks_version(parse_export(BLKID_LUKS1)) == "luks1"
    assert luks_version(parse_export(BLKID_LUKS2)) == "luks2"
    assert luks_version(parse_export(BLKID_EXT4)) is None
    assert luks_version(parse_export(BLKID_LUKS2) + parse_export(BLKID_DOS)) is None


def test_probe_exit_codes() -> None:
    ex = FakeExecutor().on(("blkid", "--probe", "--output", "export", "/dev/blank"), (2, "", ""))
    ex.on(("blkid", "--probe", "--output", "export", "/dev/both"), (8, "", ""))
    ex.on(("blkid", "--probe", "--output", "export", "/dev/fs"), BLKID_EXT4)
    ex.on(("blkid", "--probe", "--output", "export", "/dev/odd"), "DEVNAME=/dev/odd\n")
    ex.on(("blkid",), (4, "", "blkid: bad usage"))
    assert probe(ex, "/dev/blank") == ()
    assert [s.kind for s in probe(ex, "/dev/both")] == ["other"]  # ambivalent: certainly not blank
    assert [s.type for s in probe(ex, "/dev/fs")] == ["ext4"]
    assert [s.type for s in probe(ex, "/dev/odd")] == ["unrecognised"]
    with pytest.raises(EncryptionError) as e:
        probe(ex, "/dev/broken")
    assert e.value.device == "/dev/broken" and "exit 4" in str(e.value)


def test_forced_iterations_replace_the_benchmark() -> None:
    s = EncryptionSpec(pbkdf_memory_kib=32, pbkdf_force_iterations=4)
    assert s.pbkdf_args() == ["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32"]
    # adding a keyslot to a LUKS1 header needs pbkdf2, whose iterations are not argon2's passes
    assert s.pbkdf_args(luks_type="luks1") == ["--pbkdf", "pbkdf2", "--iter-time", "1000"]
    assert EncryptionSpec(format="luks1", pbkdf_force_iterations=1000).pbkdf_args()[2:] == [
        "--pbkdf-force-iterations", "1000"]
    for fields in ({"pbkdf_force_iterations": 2}, {"format": "luks1", "pbkdf_force_iterations": 4}):
        with pytest.raises(InvalidEncryption) as e:
            EncryptionSpec(**fields)  # type: ignore[arg-type]
        assert e.value.field == "encryption.pbkdf_force_iterations"
