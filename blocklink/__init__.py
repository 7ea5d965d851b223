"""blocklink: attach block storage (iSCSI, RBD, FC, NVMe/TCP) to hosts and virtual machines.

The public surface::

    import blocklink
    props = blocklink.get_connector_properties()          # this host, os-brick's connector dict
    info = blocklink.parse_connection_info(cinder_dict)    # typed IscsiInfo / RbdInfo / FcInfo / ...
    conn = blocklink.connector_for("iscsi")                # or "rbd", "fibre_channel", "nvmeof"
    dev = conn.connect_volume(info)                        # AttachedDevice
    conn.disconnect_volume(info, dev)

``import blocklink`` loads no optional binding (rados, rbd, libvirt, rtslib_fb) and not oslo.privsep.
"""

from __future__ import annotations

from typing import Any

from blocklink.connection import (AttachedDevice, ConnectionInfo, FcInfo, HostConnector, IscsiInfo,
                                  NvmeofInfo, Portal, RbdInfo, parse_connection_info)
from blocklink.errors import BlocklinkError, InvalidConnectionInfo, InvalidConnector, UnknownProtocol
from blocklink.masking import Secret

__version__ = "0.1.0"

__all__ = [
    "AttachedDevice", "ConnectionInfo", "FcInfo", "HostConnector", "IscsiInfo", "NvmeofInfo", "Portal",
    "RbdInfo", "parse_connection_info", "BlocklinkError", "InvalidConnectionInfo", "InvalidConnector",
    "UnknownProtocol", "Secret", "connector_for", "get_connector_properties", "__version__",
]


def connector_for(protocol: str, **options: Any) -> Any:
    from blocklink.registry import connector_for as _connector_for

    return _connector_for(protocol, **options)


def get_connector_properties(**kwargs: Any) -> dict[str, Any]:
    from blocklink.initiator.properties import get_connector_properties as _props

    return _props(**kwargs)


get_connector_properties.__doc__ = "See :func:`blocklink.initiator.properties.get_connector_properties`."
