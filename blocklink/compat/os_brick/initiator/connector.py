"""``os_brick.initiator.connector``: ``get_connector_properties`` and ``InitiatorConnector.factory``."""

from __future__ import annotations

import platform
from typing import Any, Dict, Optional, Type

from blocklink.compat.os_brick import exception, initiator
from blocklink.compat.os_brick.hostprops import connector_properties
from blocklink.compat.os_brick.initiator.connectors.base import BrickConnector
from blocklink.compat.os_brick.initiator.connectors.fibre_channel import FibreChannelConnector
from blocklink.compat.os_brick.initiator.connectors.iscsi import ISCSIConnector
from blocklink.compat.os_brick.initiator.connectors.nvmeof import NVMeOFConnector
from blocklink.compat.os_brick.initiator.connectors.rbd import RBDConnector

# os-brick protocol name -> the facade class; any other name os-brick knows is refused by name
_CONNECTORS: Dict[str, Type[BrickConnector]] = {
    initiator.ISCSI: ISCSIConnector,
    initiator.FIBRE_CHANNEL: FibreChannelConnector,
    initiator.RBD: RBDConnector,
    initiator.NVME: NVMeOFConnector,
    initiator.NVMEOF: NVMeOFConnector,
}


def supported_protocols() -> list:
    return sorted(_CONNECTORS)


def get_connector_properties(root_helper: Optional[str], my_ip: Optional[str], multipath: bool,
                             enforce_multipath: bool, host: Optional[str] = None,
                             execute: Any = None) -> Dict[str, Any]:
    """This host's connector dict, keys with os-brick's meanings (see :mod:`..hostprops`)."""
    return connector_properties(my_ip, multipath, enforce_multipath, host)


def get_connector_mapping(arch: Optional[str] = None) -> Dict[str, str]:
    """Protocol -> connector class path, as os-brick's (one mapping: blocklink is not per-architecture)."""
    return {name: f"{cls.__module__}.{cls.__name__}" for name, cls in _CONNECTORS.items()}


class InitiatorConnector:
    @staticmethod
    def factory(protocol: str, root_helper: Optional[str], driver: Any = None, use_multipath: bool = False,
                device_scan_attempts: int = initiator.DEVICE_SCAN_ATTEMPTS_DEFAULT, arch: Optional[str] = None,
                *args: Any, **kwargs: Any) -> BrickConnector:
        """The connector for ``protocol`` (os-brick's names, any case). Protocols blocklink does not
        implement (ISER, LightOS, ScaleIO, StorPool, NFS, VZStorage, ...) raise
        :class:`InvalidConnectorProtocol` naming the supported ones."""
        cls = _CONNECTORS.get(str(protocol).upper())
        if cls is None:
            raise exception.InvalidConnectorProtocol(str(protocol), supported_protocols())
        return cls(root_helper, driver, None, use_multipath, device_scan_attempts, *args,
                   arch=arch or platform.machine(), **kwargs)


__all__ = ["InitiatorConnector", "get_connector_properties", "get_connector_mapping", "ISCSIConnector",
           "FibreChannelConnector", "RBDConnector", "NVMeOFConnector"]
