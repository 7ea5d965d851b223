"""Errors of host-side volume encryption (all :class:`~blocklink.errors.BlocklinkError`).

Defined in :mod:`blocklink.errors` with every other error; re-exported here.
None of them carries a passphrase: they name the device, the mapping or the field, never the key.
"""

from blocklink.errors import (EncryptionBusy, EncryptionError, FormatRefused, InvalidEncryption, KeyNotFound, MappingConflict, NotLuks, WrongKey)

__all__ = ['EncryptionError', 'InvalidEncryption', 'WrongKey', 'FormatRefused', 'NotLuks', 'MappingConflict', 'EncryptionBusy', 'KeyNotFound']
