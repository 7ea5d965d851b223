"""``os_brick.encryptors``: the names Nova and Cinder import; volume encryption itself is not provided.

Nova imports this module on every volume path (``nova.virt.block_device``) and calls
``get_encryption_metadata`` on attach, which only asks Cinder for a volume's encryption metadata
(an empty dict for unencrypted volumes). Attaching an encrypted volume needs an encryptor:
``get_volume_encryptor`` raises :class:`EncryptionNotProvided` (blocklink's host-side LUKS is
separate work), so such an attach fails loudly instead of exposing ciphertext to the guest.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

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


def get_volume_encryptor(root_helper: Optional[str], connection_info: Mapping[str, Any], keymgr: Any,
                         execute: Any = None, *args: Any, **kwargs: Any) -> Any:
    raise EncryptionNotProvided(what=f"provider {kwargs.get('provider')!r}")


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
