"""Host-side volume encryption: LUKS1/LUKS2 over dm-crypt, the key-manager seam, signature probing."""

from blocklink.encryption.errors import (EncryptionBusy, EncryptionError, FormatRefused, InvalidEncryption,
                                         KeyNotFound, MappingConflict, NotLuks, WrongKey)
from blocklink.encryption.keys import (CastellanKeyManager, KeyManager, StaticKeyManager, VolumeEncryption,
                                       load_encryption, passphrase_from_key,
                                       passphrase_from_managed)
from blocklink.encryption.luks import LuksEncryptor, mapping_name
from blocklink.encryption.probe import Signature, probe
from blocklink.encryption.spec import EncryptionSpec, spec_from_dict

__all__ = ["CastellanKeyManager", "EncryptionBusy", "EncryptionError", "EncryptionSpec", "FormatRefused",
           "InvalidEncryption", "KeyManager", "KeyNotFound", "LuksEncryptor", "MappingConflict", "NotLuks",
           "Signature", "StaticKeyManager", "VolumeEncryption", "WrongKey", "load_encryption",
           "mapping_name", "passphrase_from_key", "passphrase_from_managed", "probe", "spec_from_dict"]
