"""The connector interface every protocol implements (os-brick's, typed)."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Union

from blocklink.connection import AttachedDevice, ConnectionInfo, parse_connection_info
from blocklink.errors import InvalidConnectionInfo
from blocklink.executor import Executor, default_executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.properties import protocol_properties

InfoLike = Union[ConnectionInfo, Mapping[str, Any]]
DeviceLike = Union[AttachedDevice, Mapping[str, Any], None]


class Connector(abc.ABC):
    """Attach and detach one protocol's volumes on this host.

    Options are keyword arguments of the constructor (no global configuration). ``executor`` runs
    commands, ``paths`` locates /sys, /dev and /etc; both default to the real host.
    """

    protocol: ClassVar[str]
    info_type: ClassVar[type]

    def __init__(self, *, executor: Optional[Executor] = None, paths: Optional[HostPaths] = None) -> None:
        self.executor: Executor = executor or default_executor()
        self.paths = paths or HostPaths()

    def _info(self, info: InfoLike) -> Any:
        """Accept the typed info or an os-brick/Cinder dict (envelope or bare data)."""
        if isinstance(info, self.info_type):
            return info
        if isinstance(info, ConnectionInfo):
            raise InvalidConnectionInfo("driver_volume_type",
                                        f"{self.protocol} connector got {info.driver_volume_type} info")
        if isinstance(info, Mapping) and "driver_volume_type" in info:
            parsed = parse_connection_info(info)
            if not isinstance(parsed, self.info_type):
                raise InvalidConnectionInfo("driver_volume_type",
                                            f"{self.protocol} connector got {info['driver_volume_type']!r} info")
            return parsed
        return self.info_type.from_dict(info)  # type: ignore[attr-defined]

    def _device(self, device: DeviceLike) -> Optional[AttachedDevice]:
        if device is None or isinstance(device, AttachedDevice):
            return device
        return AttachedDevice.from_dict(device, self.protocol)

    def get_connector_properties(self, **kwargs: Any) -> Dict[str, Any]:
        """This protocol's keys of the host connector (see :func:`blocklink.get_connector_properties`),
        from the one reader of them, :func:`blocklink.initiator.properties.protocol_properties`."""
        return protocol_properties(self.protocol, self.paths)

    @abc.abstractmethod
    def connect_volume(self, info: InfoLike) -> AttachedDevice:
        """Attach the volume and return the device (idempotent for an already attached volume)."""

    @abc.abstractmethod
    def disconnect_volume(self, info: InfoLike, device: DeviceLike = None, force: bool = False) -> None:
        """Detach; harmless when already detached. ``force`` continues past failures and reports them."""

    @abc.abstractmethod
    def extend_volume(self, info: InfoLike) -> int:
        """Make the host see the volume's new size; returns it in bytes."""

    @abc.abstractmethod
    def get_volume_paths(self, info: InfoLike) -> List[str]:
        """Paths of the volume's devices present on this host now (empty if not attached)."""
