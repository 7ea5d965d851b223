"""What to encrypt with: :class:`EncryptionSpec` (format, cipher, key size, PBKDF cost) and the parser of
the ``encryption`` dict Nova and Cinder pass around (``provider``, ``cipher``, ``key_size``,
``control_location``, ``encryption_key_id``).

Defaults are the safe ones: aes-xts-plain64 with a 512-bit key (two AES-256 keys), argon2id for LUKS2
(pbkdf2 for LUKS1, the only one it has). The PBKDF cost is bounded (``iter_time_ms`` at most 10 s,
``pbkdf_memory_kib`` at most 1 GiB, default 1 s and 128 MiB): cryptsetup benchmarks the machine and
spends about ``iter_time_ms`` per unlock. On an emulated CPU (qemu TCG) that benchmark is itself slow and
unreliable (argon2id at its minimum of 4 passes over 64 MiB took 16-35 s per unlock there), so
``pbkdf_force_iterations`` fixes the cost instead (with a small ``pbkdf_memory_kib`` for argon2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, List, Mapping, Optional

from blocklink.encryption.errors import InvalidEncryption

FORMATS = ("luks1", "luks2")
PBKDFS = ("argon2id", "argon2i", "pbkdf2")
CONTROL_LOCATIONS = ("front-end", "back-end")

# Every spelling of a provider that Nova, Cinder and os-brick use (short names and class paths).
_PROVIDERS = {
    "luks": "luks1", "luks1": "luks1", "luks2": "luks2",
    "LuksEncryptor": "luks1", "Luks2Encryptor": "luks2",
    "nova.volume.encryptors.luks.LuksEncryptor": "luks1",
    "os_brick.encryptors.luks.LuksEncryptor": "luks1",
    "os_brick.encryptors.luks.Luks2Encryptor": "luks2",
}
_NO_ENCRYPTION = {"nop", "NoOpEncryptor", "nova.volume.encryptors.nop.NoOpEncryptor",
                  "os_brick.encryptors.nop.NoOpEncryptor"}
_PLAIN = {"plain", "cryptsetup", "CryptsetupEncryptor", "nova.volume.encryptors.cryptsetup.CryptsetupEncryptor",
          "os_brick.encryptors.cryptsetup.CryptsetupEncryptor"}
# keys of Cinder's encryption record that say nothing about how to encrypt
_IGNORED_KEYS = {"created_at", "updated_at", "deleted_at", "deleted", "volume_type_id", "encryption_id"}
_KNOWN_KEYS = {"provider", "cipher", "key_size", "control_location", "encryption_key_id"}

_CIPHER_RE = re.compile(r"[a-z][a-z0-9_]*(-[a-z0-9_]+){1,2}(:[a-z0-9_]+)?")
_KEY_SIZES = (128, 192, 256, 384, 512)
_SECTOR_SIZES = (512, 1024, 2048, 4096)
MAX_ITER_TIME_MS = 10_000
MAX_PBKDF_MEMORY_KIB = 1 << 20


@dataclass(frozen=True)
class EncryptionSpec:
    """How a volume is (to be) encrypted. ``format`` None: nothing to do on the host (no-op provider or
    ``control_location='back-end'``, where the storage encrypts)."""

    format: Optional[str] = "luks2"
    cipher: str = "aes-xts-plain64"
    key_size: int = 512
    pbkdf: Optional[str] = None          # None: argon2id for LUKS2, pbkdf2 for LUKS1
    iter_time_ms: int = 1000
    pbkdf_memory_kib: Optional[int] = None  # argon2 only; None: 128 MiB
    pbkdf_parallel: Optional[int] = None    # argon2 only; None: cryptsetup's choice (CPUs, at most 4)
    pbkdf_force_iterations: Optional[int] = None  # a fixed cost instead of benchmarking for iter_time_ms
    sector_size: Optional[int] = None       # LUKS2 only; None: cryptsetup's choice
    control_location: str = "front-end"
    key_id: Optional[str] = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def host_side(self) -> bool:
        """True when the host opens the volume with dm-crypt."""
        return self.format is not None and self.control_location == "front-end"

    @property
    def effective_pbkdf(self) -> str:
        return self.pbkdf or ("argon2id" if self.format == "luks2" else "pbkdf2")

    def with_options(self, **options: Any) -> "EncryptionSpec":
        """A copy with some fields changed (validated; an unknown name is an :class:`InvalidEncryption`)."""
        unknown = sorted(set(options) - set(self.__dataclass_fields__))
        if unknown:
            raise InvalidEncryption(f"encryption.{unknown[0]}", "unknown option")
        return replace(self, **options)

    def pbkdf_args(self, *, luks_type: Optional[str] = None) -> List[str]:
        """cryptsetup options for a new keyslot (luksFormat, luksAddKey) of a ``luks_type`` header."""
        kdf = self.effective_pbkdf if (luks_type or self.format) == "luks2" else "pbkdf2"
        args = ["--pbkdf", kdf]
        if self.pbkdf_force_iterations and kdf == self.effective_pbkdf:  # no benchmark: the same cost on any CPU (an emulated one too)
            args += ["--pbkdf-force-iterations", str(self.pbkdf_force_iterations)]
        else:
            args += ["--iter-time", str(self.iter_time_ms)]
        if kdf.startswith("argon2"):
            args += ["--pbkdf-memory", str(self.pbkdf_memory_kib or 131072)]
            if self.pbkdf_parallel:
                args += ["--pbkdf-parallel", str(self.pbkdf_parallel)]
        return args

    def format_args(self) -> List[str]:
        """cryptsetup luksFormat options (without the key source and the device)."""
        args = ["--type", str(self.format), "--cipher", self.cipher, "--key-size", str(self.key_size)]
        args += self.pbkdf_args()
        if self.sector_size:
            args += ["--sector-size", str(self.sector_size)]
        return args


def _field(name: str) -> str:
    return f"encryption.{name}"


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEncryption(_field(name), f"expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidEncryption(_field(name), f"{value} is outside {lo}..{hi}")


def _validate(s: EncryptionSpec) -> None:
    if s.format is not None and s.format not in FORMATS:
        raise InvalidEncryption(_field("format"), f"{s.format!r} is not one of {', '.join(FORMATS)}")
    if s.control_location not in CONTROL_LOCATIONS:
        raise InvalidEncryption(_field("control_location"),
                                f"{s.control_location!r} is not one of {', '.join(CONTROL_LOCATIONS)}")
    if not isinstance(s.cipher, str) or not _CIPHER_RE.fullmatch(s.cipher):
        raise InvalidEncryption(_field("cipher"), f"{s.cipher!r} is not a cipher-mode[-iv] spec (aes-xts-plain64)")
    parts = s.cipher.split("-")
    if parts[0] in ("null", "cipher_null") or "ecb" in parts[1:]:
        raise InvalidEncryption(_field("cipher"), f"{s.cipher!r} does not hide the data (null cipher or ECB mode)")
    if isinstance(s.key_size, bool) or not isinstance(s.key_size, int) or s.key_size not in _KEY_SIZES:
        raise InvalidEncryption(_field("key_size"), f"{s.key_size!r} is not one of {_KEY_SIZES} (bits)")
    if parts[1] == "xts" and s.key_size not in (256, 512):
        raise InvalidEncryption(_field("key_size"), f"XTS needs 256 or 512 bits (two keys), not {s.key_size}")
    if s.pbkdf is not None and s.pbkdf not in PBKDFS:
        raise InvalidEncryption(_field("pbkdf"), f"{s.pbkdf!r} is not one of {', '.join(PBKDFS)}")
    if s.format == "luks1" and s.pbkdf not in (None, "pbkdf2"):
        raise InvalidEncryption(_field("pbkdf"), "LUKS1 keyslots support pbkdf2 only")
    _int_in("iter_time_ms", s.iter_time_ms, 1, MAX_ITER_TIME_MS)
    argon = s.effective_pbkdf.startswith("argon2")
    for name in ("pbkdf_memory_kib", "pbkdf_parallel"):
        if getattr(s, name) is not None and not argon:
            raise InvalidEncryption(_field(name), "only argon2 keyslots have a memory cost and threads")
    if s.pbkdf_memory_kib is not None:
        _int_in("pbkdf_memory_kib", s.pbkdf_memory_kib, 32, MAX_PBKDF_MEMORY_KIB)
    if s.pbkdf_parallel is not None:
        _int_in("pbkdf_parallel", s.pbkdf_parallel, 1, 4)
    if s.pbkdf_force_iterations is not None:
        lo, hi = (4, 1000) if argon else (1000, 100_000_000)  # argon2: passes; pbkdf2: rounds
        _int_in("pbkdf_force_iterations", s.pbkdf_force_iterations, lo, hi)
    if s.sector_size is not None:
        if s.format != "luks2":
            raise InvalidEncryption(_field("sector_size"), "only LUKS2 has a sector size")
        if s.sector_size not in _SECTOR_SIZES:
            raise InvalidEncryption(_field("sector_size"), f"{s.sector_size!r} is not one of {_SECTOR_SIZES}")
    if s.key_id is not None and (not isinstance(s.key_id, str) or not s.key_id.strip()):
        raise InvalidEncryption(_field("encryption_key_id"), "must be a non-empty string")


def _text(d: Mapping[str, Any], key: str) -> Optional[str]:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise InvalidEncryption(_field(key), f"expected a string, got {type(v).__name__}")
    return v.strip() or None


def spec_from_dict(d: Any, **options: Any) -> EncryptionSpec:
    """Parse Nova's/Cinder's ``encryption`` dict; ``options`` (PBKDF cost, sector size) are added to it.

    An unknown key is refused (a typo such as ``cypher`` must not fall back to a default silently);
    the bookkeeping keys of Cinder's encryption record are ignored.
    """
    if not isinstance(d, Mapping):
        raise InvalidEncryption("encryption", f"expected a dict, got {type(d).__name__}")
    unknown = sorted(k for k in d if k not in _KNOWN_KEYS | _IGNORED_KEYS)
    if unknown:
        raise InvalidEncryption(_field(str(unknown[0])), "unknown key")
    provider = _text(d, "provider")
    if provider is None:
        raise InvalidEncryption(_field("provider"), "missing")
    if provider in _PLAIN:
        raise InvalidEncryption(_field("provider"), f"{provider!r} (plain dm-crypt) has no header: a wrong key "
                                "would read as garbage instead of failing; use luks or luks2")
    if provider not in _PROVIDERS and provider not in _NO_ENCRYPTION:
        raise InvalidEncryption(_field("provider"), f"unknown provider {provider!r}")
    fmt = _PROVIDERS.get(provider)
    fields: dict = {"format": fmt, "control_location": _text(d, "control_location") or "front-end",
                    "key_id": _text(d, "encryption_key_id")}
    cipher = _text(d, "cipher")
    if cipher is not None:
        fields["cipher"] = cipher
    size = d.get("key_size")
    if size is not None:
        if isinstance(size, str) and size.strip().isdigit():
            size = int(size)
        if isinstance(size, bool) or not isinstance(size, int):
            raise InvalidEncryption(_field("key_size"), f"expected an integer number of bits, got {size!r}")
        fields["key_size"] = size
    spec = EncryptionSpec(**fields).with_options(**options)
    if spec.host_side and spec.key_id is None:
        raise InvalidEncryption(_field("encryption_key_id"), "missing: the host cannot get the key")
    return spec


__all__ = ["CONTROL_LOCATIONS", "EncryptionSpec", "FORMATS", "PBKDFS", "spec_from_dict"]
