"""``os_brick.encryptors``: the encryptor factory Nova and Cinder call, on :mod:`blocklink.encryption`.

``get_volume_encryptor(root_helper=, connection_info=, keymgr=, execute=None, **encryption)`` picks
the encryptor as os-brick does: ``control_location`` ``front-end`` (any case) and a ``provider`` of
``luks``/``luks2`` (or a legacy class name meaning one) give the host-side LUKS encryptors of
:mod:`.luks`; no provider, a no-op provider or back-end encryption give :class:`.nop.NoOpEncryptor`.
``plain`` dm-crypt and out-of-tree encryptor classes raise :class:`EncryptionNotProvided` (a plain
mapping opens with any key and shows garbage instead of failing). ``get_encryption_metadata`` asks
Cinder for a volume's encryption metadata (``{}`` for unencrypted volumes).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

from blocklink.compat.os_brick.encryptors.base import VolumeEncryptor
from blocklink.compat.os_brick.encryptors.luks import Luks2Encryptor, LuksEncryptor
from blocklink.compat.os_brick.encryptors.nop import NoOpEncryptor
from blocklink.compat.os_brick.exception import EncryptionNotProvided
from blocklink.masking import get_logger

LOG = get_logger(__name__)

LUKS = "luks"
LUKS2 = "luks2"
PLAIN = "plain"

FORMAT_TO_FRONTEND_ENCRYPTOR_MAP = {
    LUKS: "os_brick.encryptors.luks.LuksEncryptor",
    LUKS2: "os_brick.encryptors.luks.Luks2Encryptor",
    PLAIN: "os_brick.encryptors.cryptsetup.CryptsetupEncryptor",
}

# provider class names older Nova/Cinder releases stored -> the format they mean
LEGACY_PROVIDER_CLASS_TO_FORMAT_MAP: Dict[str, Optional[str]] = {
    "nova.volume.encryptors.luks.LuksEncryptor": LUKS,
    "nova.volume.encryptors.cryptsetup.CryptsetupEncryptor": PLAIN,
    "nova.volume.encryptors.nop.NoopEncryptor": None,
    "os_brick.encryptors.luks.LuksEncryptor": LUKS,
    "os_brick.encryptors.cryptsetup.CryptsetupEncryptor": PLAIN,
    "os_brick.encryptors.nop.NoopEncryptor": None,
    "LuksEncryptor": LUKS,
    "CryptsetupEncryptor": PLAIN,
    "NoOpEncryptor": None,
}
_NOOP_CLASSES = ("os_brick.encryptors.nop.NoOpEncryptor", "os_brick.encryptors.nop.NoopEncryptor")


def get_volume_encryptor(root_helper: Optional[str], connection_info: Mapping[str, Any], keymgr: Any,
                         execute: Any = None, *args: Any, **kwargs: Any) -> VolumeEncryptor:
    """The encryptor for a volume's ``encryption`` dict (passed as keywords, as os-brick takes it)."""
    location = kwargs.get("control_location")
    if not (isinstance(location, str) and location.lower() == "front-end"):
        return NoOpEncryptor(root_helper, connection_info, keymgr, execute, *args, **kwargs)
    provider = kwargs.get("provider")
    if provider in LEGACY_PROVIDER_CLASS_TO_FORMAT_MAP:
        provider = LEGACY_PROVIDER_CLASS_TO_FORMAT_MAP[provider]
    if provider is None or provider in _NOOP_CLASSES:
        cls: Type[VolumeEncryptor] = NoOpEncryptor
    elif provider in (LUKS, FORMAT_TO_FRONTEND_ENCRYPTOR_MAP[LUKS]):
        cls = LuksEncryptor
    elif provider in (LUKS2, FORMAT_TO_FRONTEND_ENCRYPTOR_MAP[LUKS2]):
        cls = Luks2Encryptor
    else:
        raise EncryptionNotProvided(what=f"provider {provider!r} (provided: {LUKS}, {LUKS2})")
    encryptor = cls(root_helper, connection_info, keymgr, execute, *args, **kwargs)
    LOG.debug("using volume encryptor %r", encryptor)
    return encryptor


def get_encryption_metadata(context: Any, volume_api: Any, volume_id: str,
                            connection_info: Mapping[str, Any]) -> Dict[str, Any]:
    """Cinder's encryption metadata of an encrypted volume (``data.encrypted``), else ``{}``."""
    data = connection_info.get("data") or {}
    if not data.get("encrypted", False):
        return {}
    metadata = volume_api.get_volume_encryption_metadata(context, volume_id)
    if not metadata:
        LOG.warning("volume %s should be encrypted but Cinder has no encryption metadata for it", volume_id)
    return dict(metadata or {})


__all__ = ["FORMAT_TO_FRONTEND_ENCRYPTOR_MAP", "LEGACY_PROVIDER_CLASS_TO_FORMAT_MAP", "LUKS", "LUKS2", "PLAIN",
           "get_encryption_metadata", "get_volume_encryptor"]
