"""``os_brick.encryptors.nop``: the encryptor of unencrypted and back-end encrypted volumes (does nothing)."""

from __future__ import annotations

from typing import Any, Optional

from blocklink.compat.os_brick.encryptors.base import VolumeEncryptor


class NoOpEncryptor(VolumeEncryptor):
    def attach_volume(self, context: Any, **kwargs: Any) -> None:
        pass

    def detach_volume(self, **kwargs: Any) -> None:
        pass

    def extend_volume(self, context: Any, **kwargs: Any) -> Optional[int]:
        return None
