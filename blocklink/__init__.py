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

from typing import Any, Dict

from blocklink.connection import (AttachedDevice, ConnectionInfo, DeviceKind, FcInfo, HostConnector, IscsiInfo,
                                  NvmeofInfo, Portal, RbdInfo, parse_connection_info)
from blocklink.errors import (EncryptionBusy, EncryptionError, FormatRefused, InvalidEncryption, KeyNotFound,
                              MappingConflict, NotLuks, WrongKey)
from blocklink.errors import (DeviceInUse, FilesystemCheckFailed, ForeignSignature, MountBusy, MountConflict,
                              NotStaged, ProbeFailed, StagingCommandFailed, StagingError, StillPublished)
from blocklink.errors import (AttachFailed, AuthenticationFailed, AuthenticationUnsupported, BlocklinkError, CommandFailed, CommandTimeout,
                              ConnectionFailed, DaemonDied, DetachFailed, DetachIncomplete, DeviceBusy,
                              DeviceMismatch, DeviceNotFound, ExportNotFound, HypervisorError, InvalidConnectionInfo,
                              InvalidConnector, InvalidDiskConfig, InvalidOption, MissingCredentials, MissingDependency,
                              MultipathdNotRunning, PathRefused, QmpError, RbdIOError, SchemaError, SecretError, StaleRecord,
                              TargetError, TgtAdmError, TooManyDevices, UnknownProtocol, VolumeBusy,
                              VolumeNotFound)
from blocklink.initiator.base import Connector
from blocklink.masking import Secret
from blocklink.registry import connector_for

__version__ = "0.1.0"

__all__ = [
    "AttachedDevice", "ConnectionInfo", "Connector", "DeviceKind", "FcInfo", "HostConnector", "IscsiInfo",
    "NvmeofInfo", "Portal", "RbdInfo", "parse_connection_info", "Secret", "connector_for",
    "get_connector_properties", "__version__",
    # errors (all defined in blocklink.errors)
    "BlocklinkError", "InvalidConnectionInfo", "InvalidConnector", "InvalidOption", "InvalidDiskConfig",
    "SchemaError", "UnknownProtocol", "CommandFailed", "CommandTimeout", "ConnectionFailed",
    "AuthenticationFailed", "AuthenticationUnsupported", "MissingCredentials", "VolumeNotFound", "RbdIOError", "DaemonDied", "QmpError", "DeviceNotFound",
    "DeviceMismatch", "DeviceBusy", "DetachIncomplete", "MultipathdNotRunning", "PathRefused", "TargetError", "ExportNotFound",
    "TgtAdmError", "HypervisorError", "SecretError", "MissingDependency", "VolumeBusy", "StaleRecord",
    "AttachFailed", "DetachFailed", "TooManyDevices",
    "StagingError", "ForeignSignature", "ProbeFailed", "DeviceInUse", "MountConflict", "NotStaged", "MountBusy",
    "StillPublished", "FilesystemCheckFailed", "StagingCommandFailed",
    "EncryptionError", "InvalidEncryption", "WrongKey", "FormatRefused", "NotLuks", "MappingConflict", "EncryptionBusy", "KeyNotFound",
]


def get_connector_properties(**kwargs: Any) -> Dict[str, Any]:
    from blocklink.initiator.properties import get_connector_properties as _props

    return _props(**kwargs)


get_connector_properties.__doc__ = "See :func:`blocklink.initiator.properties.get_connector_properties`."
