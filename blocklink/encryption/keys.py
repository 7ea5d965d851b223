"""The key-manager seam: where a volume's passphrase comes from.

:class:`KeyManager` is one method, ``get_key(key_id) -> Secret``. :class:`StaticKeyManager` holds keys
in memory (tests, single-host setups); :class:`CastellanKeyManager` asks OpenStack's key manager
(Barbican, Vault) through castellan, imported only when that class is used (``blocklink[keymanager]``).
:func:`load_encryption` turns Nova's/Cinder's ``encryption`` dict plus a key manager into what the
encryptor needs.

Key managers hold raw key bytes; Nova and os-brick unlock LUKS with their hex string as the passphrase,
so :func:`passphrase_from_key` does the same and volumes stay interchangeable with them.
"""

from __future__ import annotations

import binascii
import threading
from dataclasses import dataclass
from typing import Any, Dict, Optional, Protocol, runtime_checkable

from blocklink.encryption.errors import InvalidEncryption, KeyNotFound
from blocklink.encryption.spec import EncryptionSpec, spec_from_dict
from blocklink.errors import MissingDependency
from blocklink.masking import Secret


@runtime_checkable
class KeyManager(Protocol):
    def get_key(self, key_id: str) -> Secret:
        """The passphrase for ``key_id``; :class:`KeyNotFound` when there is none."""


def passphrase_from_key(raw: bytes) -> Secret:
    """The LUKS passphrase Nova/os-brick derive from a key manager's raw key: its lowercase hex."""
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        raise InvalidEncryption("encryption.encryption_key_id", "the key manager returned an empty key")
    return Secret(binascii.hexlify(bytes(raw)).decode("ascii"))


def passphrase_from_managed(managed: Any) -> Secret:
    """The passphrase of a castellan managed object as os-brick derives it: a secret whose
    ``managed_type()`` is ``"passphrase"`` is used as it is (UTF-8 text), any other (Cinder's
    ``symmetric`` volume keys, ``opaque``) as the hex of its bytes (:func:`passphrase_from_key`)."""
    raw = managed.get_encoded()
    kind = managed.managed_type() if callable(getattr(managed, "managed_type", None)) else None
    if kind == "passphrase":
        if not raw:
            raise InvalidEncryption("encryption.encryption_key_id", "the key manager returned an empty passphrase")
        return Secret(bytes(raw).decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw))
    return passphrase_from_key(raw)


class StaticKeyManager:
    """Keys held in memory, by id."""

    def __init__(self, keys: Optional[Dict[str, Secret]] = None) -> None:
        self._keys: Dict[str, Secret] = {}
        self._lock = threading.Lock()
        for key_id, key in (keys or {}).items():
            self.put(key_id, key)

    def put(self, key_id: str, key: "Secret | str") -> None:
        secret = key if isinstance(key, Secret) else Secret(key)
        if not secret:
            raise InvalidEncryption("key", f"the key for {key_id!r} is empty")
        with self._lock:
            self._keys[key_id] = secret

    def get_key(self, key_id: str) -> Secret:
        with self._lock:
            try:
                return self._keys[key_id]
            except KeyError:
                raise KeyNotFound(key_id) from None

    def __repr__(self) -> str:
        return f"StaticKeyManager({len(self._keys)} keys)"


class CastellanKeyManager:
    """Keys from castellan (``key_manager.API(conf).get(context, key_id)``), as hex passphrases."""

    def __init__(self, context: Any, conf: Any = None, api: Any = None) -> None:
        self.context = context
        if api is None:
            try:
                from castellan import key_manager  # lazy: optional dependency
            except ImportError:
                raise MissingDependency("castellan", "install blocklink[keymanager]") from None
            if conf is None:
                from oslo_config import cfg

                conf = cfg.CONF
            api = key_manager.API(conf)
        self.api = api

    def get_key(self, key_id: str) -> Secret:
        try:
            managed = self.api.get(self.context, key_id)
        except Exception as e:  # castellan raises its own ManagedObjectNotFoundError, or the backend's
            if type(e).__name__ == "ManagedObjectNotFoundError":
                raise KeyNotFound(key_id) from None
            raise
        return passphrase_from_managed(managed)


@dataclass(frozen=True)
class VolumeEncryption:
    """An encryption dict resolved: the spec, and the key when the host must open the volume."""

    spec: EncryptionSpec
    key: Optional[Secret] = None

    def __repr__(self) -> str:
        return f"VolumeEncryption(spec={self.spec!r}, key={'***' if self.key else None})"


def load_encryption(encryption: Any, keymgr: Optional[KeyManager], **options: Any) -> VolumeEncryption:
    """Parse Nova's/Cinder's ``encryption`` dict and fetch its key (only when the host encrypts)."""
    spec = spec_from_dict(encryption, **options)
    if not spec.host_side:
        return VolumeEncryption(spec)
    if keymgr is None:
        raise InvalidEncryption("keymgr", "a key manager is needed for a front-end encrypted volume")
    assert spec.key_id is not None  # spec_from_dict requires it for host-side encryption
    key = keymgr.get_key(spec.key_id)
    if not isinstance(key, Secret) or not key:
        raise InvalidEncryption("encryption.encryption_key_id", f"key {spec.key_id!r} is empty or not a Secret")
    return VolumeEncryption(spec, key)


__all__ = ["CastellanKeyManager", "KeyManager", "StaticKeyManager", "VolumeEncryption", "load_encryption",
           "passphrase_from_key", "passphrase_from_managed"]
