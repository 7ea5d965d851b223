"""``os_brick.encryptors.luks``: imported by Nova's libvirt driver; LUKS is not provided by the facade."""

from __future__ import annotations

from typing import Any

from blocklink.compat.os_brick.exception import EncryptionNotProvided


def is_luks(root_helper: Any, device: str, execute: Any = None) -> bool:
    raise EncryptionNotProvided(what="is_luks")


class LuksEncryptor:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise EncryptionNotProvided(what="LuksEncryptor")


class Luks2Encryptor(LuksEncryptor):
    pass
