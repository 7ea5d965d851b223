"""NVMe in-band authentication (DH-HMAC-CHAP) secrets in the NVMe spec's ``DHHC-1`` text form.

``DHHC-1:<t>:<base64 of key || CRC-32 of key, little-endian>:`` where ``<t>`` names how the key is
transformed before use: ``00`` none (a 32, 48 or 64-byte key), ``01`` SHA-256 (32 bytes), ``02``
SHA-384 (48), ``03`` SHA-512 (64) -- the form ``nvme gen-dhchap-key`` prints and both the Linux
host (``dhchap_secret=`` fabrics option) and nvmet (``hosts/<nqn>/dhchap_key``) take.

:class:`HostAuth` is what a target requires of one host: its key, optionally the controller's key
(bidirectional: the host also verifies the controller), the HMAC and the DH group.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from blocklink.errors import InvalidConnectionInfo, InvalidOption
from blocklink.masking import Secret, reveal

PREFIX = "DHHC-1"
KEY_BYTES = {0: (32, 48, 64), 1: (32,), 2: (48,), 3: (64,)}
HASHES = ("hmac(sha256)", "hmac(sha384)", "hmac(sha512)")
DHGROUPS = ("null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192")


def format_key(key: bytes, transform: int = 0) -> Secret:
    """``key`` in the DHHC-1 form (CRC-32 appended little-endian, base64)."""
    if transform not in KEY_BYTES or len(key) not in KEY_BYTES[transform]:
        raise InvalidOption("dhchap_key", f"a transform {transform:02d} key is {KEY_BYTES.get(transform)} bytes")
    crc = struct.pack("<I", zlib.crc32(key) & 0xFFFFFFFF)
    return Secret(f"{PREFIX}:{transform:02d}:{base64.b64encode(key + crc).decode()}:")


def generate_key(transform: int = 0, length: int = 32) -> Secret:
    """A fresh random key (``nvme gen-dhchap-key``'s job, without a child process)."""
    return format_key(os.urandom(length), transform)


def parse_key(secret: Union[str, Secret], field: str = "dhchap_secret") -> Tuple[int, bytes]:
    """``(transform, key)`` of a DHHC-1 secret; :class:`InvalidConnectionInfo` naming ``field`` (never
    quoting the secret) when it is malformed or its CRC does not match."""
    text = reveal(secret) or ""
    parts = text.split(":")
    if len(parts) != 4 or parts[0] != PREFIX or parts[3] != "" or len(parts[1]) != 2 or not parts[1].isdigit():
        raise InvalidConnectionInfo(field, "not a DHHC-1:<t>:<base64>: secret")
    transform = int(parts[1])
    try:
        raw = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidConnectionInfo(field, "the DHHC-1 secret is not valid base64") from None
    key, crc = raw[:-4], raw[-4:]
    if transform not in KEY_BYTES or len(key) not in KEY_BYTES[transform]:
        raise InvalidConnectionInfo(field, "the DHHC-1 secret has a wrong key length for its transform")
    if struct.pack("<I", zlib.crc32(key) & 0xFFFFFFFF) != crc:
        raise InvalidConnectionInfo(field, "the DHHC-1 secret's CRC-32 does not match (mistyped or truncated)")
    return transform, key


@dataclass(frozen=True)
class HostAuth:
    """What the target requires of one host: ``key`` (the host proves it), ``ctrl_key`` (bidirectional:
    the controller proves it too), ``hash`` and ``dhgroup`` (``null``: no Diffie-Hellman exchange)."""

    key: Secret
    ctrl_key: Optional[Secret] = None
    hash: str = "hmac(sha256)"
    dhgroup: str = "null"

    def __post_init__(self) -> None:
        parse_key(self.key, "dhchap_key")
        if self.ctrl_key is not None:
            parse_key(self.ctrl_key, "dhchap_ctrl_key")
        if self.hash not in HASHES:
            raise InvalidOption("dhchap_hash", f"expected one of {', '.join(HASHES)}")
        if self.dhgroup not in DHGROUPS:
            raise InvalidOption("dhchap_dhgroup", f"expected one of {', '.join(DHGROUPS)}")

    @classmethod
    def generate(cls, *, bidirectional: bool = False, hash: str = "hmac(sha256)", dhgroup: str = "null") -> "HostAuth":
        return cls(generate_key(), generate_key() if bidirectional else None, hash, dhgroup)


__all__ = ["DHGROUPS", "HASHES", "HostAuth", "format_key", "generate_key", "parse_key"]
