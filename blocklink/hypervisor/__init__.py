"""The libvirt adapter: ``<disk>`` XML for a volume, guest device names, libvirt secrets, live attach/detach.

::

    from blocklink.hypervisor import disk_xml, LibvirtHost

    xml = disk_xml(info, device, target_dev="vdb")            # host-attached -> type='block'
    xml = disk_xml(rbd_info, target_dev="sdb", bus="scsi")    # QEMU-native   -> type='network'

    with LibvirtHost("qemu:///system") as host:
        att = host.attach_volume("guest1", info, device, bus="scsi")   # name, secret and attach
        host.detach_volume("guest1", att)                            # waits for the guest to let go

Importing this package does not import ``libvirt``: only :mod:`~blocklink.hypervisor.live`,
:mod:`~blocklink.hypervisor.events` and :mod:`~blocklink.hypervisor.secrets` calls need it.
"""

from __future__ import annotations

from typing import Any

from blocklink.hypervisor.adapter import AUTO, disk_config, disk_xml
from blocklink.hypervisor.disk import (BlockSource, DiskAuth, DiskConfig, DiskDriver, DiskEncryption, DriveAddress,
                                       FileSource, InvalidDiskConfig, IoTune, NetworkHost, NetworkSource, PciAddress)
from blocklink.hypervisor.names import next_device_name, next_scsi_unit
from blocklink.hypervisor.qos import iotune_from_qos, resolve_per_gb
from blocklink.hypervisor.xml import format_disk

__all__ = [
    "AUTO", "disk_config", "disk_xml", "format_disk", "DiskConfig", "DiskDriver", "BlockSource", "FileSource",
    "NetworkSource", "NetworkHost", "DiskAuth", "IoTune", "DriveAddress", "PciAddress", "DiskEncryption",
    "InvalidDiskConfig", "next_device_name", "next_scsi_unit", "iotune_from_qos", "resolve_per_gb",
    "LibvirtHost", "DiskAttachment", "VolumeAttachment",
]


def __getattr__(name: str) -> Any:  # the libvirt-backed classes load on first use
    if name in ("LibvirtHost", "DiskAttachment", "VolumeAttachment"):
        from blocklink.hypervisor import live

        return getattr(live, name)
    raise AttributeError(name)
