"""Errors of host-side volume encryption (all :class:`~blocklink.errors.BlocklinkError`).

None of them carries a passphrase: they name the device, the mapping or the field, never the key.
"""

from __future__ import annotations

from blocklink.errors import BlocklinkError, DeviceBusy, InvalidConnectionInfo


class EncryptionError(BlocklinkError):
    """cryptsetup failed in a way no narrower class describes; ``device`` names what it worked on."""

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        self.reason = reason
        super().__init__(f"encryption of {device}: {reason}")


class InvalidEncryption(InvalidConnectionInfo):
    """An encryption dict or option is malformed; ``field`` names it (``encryption.cipher``)."""


class WrongKey(EncryptionError):
    """No keyslot of the LUKS header opens with the given key."""

    def __init__(self, device: str) -> None:
        super().__init__(device, "no keyslot opens with this key")


class FormatRefused(EncryptionError):
    """The device was not formatted: ``found`` says what it carries (or why a blank one was not)."""

    def __init__(self, device: str, found: str) -> None:
        self.found = found
        EncryptionError.__init__(self, device, f"refusing to format: {found}")


class NotLuks(EncryptionError):
    """An operation that needs a LUKS header (key rotation) found none; ``found`` says what is there."""

    def __init__(self, device: str, found: str) -> None:
        self.found = found
        EncryptionError.__init__(self, device, f"not a LUKS volume: {found}")


class MappingConflict(EncryptionError):
    """The mapping name for this volume is already open on another device."""

    def __init__(self, mapping: str, expected: str, found: str) -> None:
        self.mapping = mapping
        self.expected = expected
        self.found = found
        EncryptionError.__init__(self, f"/dev/mapper/{mapping}", f"open on {found}, not on {expected}")


class EncryptionBusy(DeviceBusy):
    """The dm-crypt mapping is in use; ``reason`` names the holders (``pid N (comm)``, mounts, holders)."""


class KeyNotFound(BlocklinkError, LookupError):
    """The key manager has no key with this id."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(f"no key with id {key_id!r}")


__all__ = ["EncryptionBusy", "EncryptionError", "FormatRefused", "InvalidEncryption", "KeyNotFound",
           "MappingConflict", "NotLuks", "WrongKey"]
