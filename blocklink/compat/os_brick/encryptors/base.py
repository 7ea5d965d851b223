"""``os_brick.encryptors.base``: the encryptor constructor every provider shares, and where the key comes from.

An encryptor is built per call from ``(root_helper, connection_info, keymgr, execute, **encryption)``.
The key manager is the one the service passes (castellan's ``key_manager.API(CONF)`` in Nova and
Cinder, or Nova's ``ConfKeyManager``): ``keymgr.get(context, encryption_key_id)`` returns a managed
object, and its passphrase is derived as os-brick does (:func:`blocklink.encryption.passphrase_from_managed`:
the hex of the key's bytes, or the text of a ``passphrase``-type secret), so volumes opened by one
library open with the other. A blocklink :class:`~blocklink.encryption.KeyManager` (``get_key``) works too.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from blocklink.compat.os_brick.executor import Executor
from blocklink.encryption.errors import InvalidEncryption
from blocklink.encryption.keys import passphrase_from_managed
from blocklink.masking import Secret


class VolumeEncryptor(Executor):
    """The shared constructor; ``attach_volume`` / ``detach_volume`` / ``extend_volume`` are the providers'."""

    def __init__(self, root_helper: Optional[str], connection_info: Mapping[str, Any], keymgr: Any,
                 execute: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(root_helper, execute=execute)
        self.connection_info = connection_info
        self._key_manager = keymgr
        self.encryption_key_id = kwargs.get("encryption_key_id")

    def _get_key(self, context: Any) -> Any:
        """The key manager's object for this volume's key (os-brick's name; castellan's call shape)."""
        return self._key_manager.get(context, self.encryption_key_id)

    def _passphrase(self, context: Any) -> Secret:
        if not self.encryption_key_id:
            raise InvalidEncryption("encryption.encryption_key_id", "missing: the host cannot get the key")
        if self._key_manager is None:
            raise InvalidEncryption("keymgr", "a key manager is needed for a front-end encrypted volume")
        if not hasattr(self._key_manager, "get") and hasattr(self._key_manager, "get_key"):
            key = self._key_manager.get_key(self.encryption_key_id)  # a blocklink KeyManager
            if not isinstance(key, Secret):
                raise InvalidEncryption("keymgr", "get_key must return a blocklink.masking.Secret")
            return key
        return passphrase_from_managed(self._get_key(context))

    def attach_volume(self, context: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def detach_volume(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def extend_volume(self, context: Any, **kwargs: Any) -> Optional[int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} key_id={self.encryption_key_id!r}>"
