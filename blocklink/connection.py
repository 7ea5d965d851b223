"""Typed, validated connection models in the os-brick/Cinder dict format.

Each model parses the envelope ``{"driver_volume_type": ..., "data": {...}}`` or the bare ``data``
dict, validates every field it understands, keeps every key it does not (``extra``), and gives the
same dict back from :meth:`to_dict`. A value of ``None`` means "key absent", so a dict never grows
keys it did not have. Anything wrong raises :class:`~blocklink.errors.InvalidConnectionInfo` naming
the key path (``data.target_portals[1]``); secrets never appear in ``repr`` or in error text.

Descriptive fields (``volume_id``, ``auth_username``) accept any printable text, because real
drivers emit odd values; identifiers that end up in paths, command arguments or sysfs writes
(IQNs, portals, WWNs, pool and image names) are checked strictly here, at the boundary.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping

from blocklink.errors import InvalidConnectionInfo
from blocklink.models.fc import FcInfo, normalize_wwn
from blocklink.models.fields import ConnectionInfo, _describe, check_ceph_name, check_host, check_name
from blocklink.models.host import AttachedDevice, DeviceKind, HostConnector
from blocklink.models.iscsi import IscsiInfo, IscsiTarget, Portal
from blocklink.models.nvmeof import NvmeofInfo, NvmePortal
from blocklink.models.protocols import PROTOCOL_ALIASES, PROTOCOLS, canonical_protocol
from blocklink.models.rbd import RbdInfo

__all__ = [
    "Portal", "IscsiTarget", "IscsiInfo", "RbdInfo", "FcInfo", "NvmeofInfo", "NvmePortal",
    "HostConnector", "AttachedDevice", "DeviceKind", "ConnectionInfo", "parse_connection_info", "register_info_type",
    "check_name", "check_host", "check_ceph_name", "normalize_wwn", "PROTOCOLS", "PROTOCOL_ALIASES",
    "canonical_protocol",
]


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------

_INFO_TYPES: Dict[str, Callable[[Mapping[str, Any]], ConnectionInfo]] = {
    "iscsi": IscsiInfo.from_dict,
    "rbd": RbdInfo.from_dict,
    "fibre_channel": FcInfo.from_dict,
    "nvmeof": NvmeofInfo.from_dict,
}


def register_info_type(driver_volume_type: str, parser: Callable[[Mapping[str, Any]], ConnectionInfo]) -> None:
    _INFO_TYPES[driver_volume_type] = parser


def parse_connection_info(d: Any) -> ConnectionInfo:
    """Parse an os-brick/Cinder connection-info envelope into the protocol's typed info."""
    if isinstance(d, ConnectionInfo):
        return d
    if not isinstance(d, Mapping):
        raise InvalidConnectionInfo("connection_info", f"expected a dict, got {_describe(d)}")
    dvt = d.get("driver_volume_type")
    if not isinstance(dvt, str):
        raise InvalidConnectionInfo("driver_volume_type", "missing" if dvt is None else f"not a string: {_describe(dvt)}")
    parser = _INFO_TYPES.get(canonical_protocol(dvt))
    if parser is None:
        raise InvalidConnectionInfo("driver_volume_type", f"unknown type {dvt[:40]!r}; known: {', '.join(sorted(_INFO_TYPES))}")
    return parser(d)

