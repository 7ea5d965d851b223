"""Protocol names: the one table of aliases that ``connector_for`` and ``parse_connection_info`` both read."""

from __future__ import annotations

from typing import Mapping, Tuple

# canonical driver_volume_type names of the built-in protocols
PROTOCOLS: Tuple[str, ...] = ("iscsi", "rbd", "fibre_channel", "nvmeof")

# other spellings (os-brick's and Cinder drivers') -> canonical name
PROTOCOL_ALIASES: Mapping[str, str] = {
    "fc": "fibre_channel",
    "ceph": "rbd",
    "nvme": "nvmeof",
    "nvme_tcp": "nvmeof",
}


def canonical_protocol(name: str) -> str:
    """``name`` lower-cased with its alias resolved (unknown names come back lower-cased, unchanged)."""
    low = name.lower()
    return PROTOCOL_ALIASES.get(low, low)


__all__ = ["PROTOCOLS", "PROTOCOL_ALIASES", "canonical_protocol"]
