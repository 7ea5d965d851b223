"""CLI: ``disk-xml`` prints the libvirt ``<disk>`` for a volume as JSON ``{"xml": ...}``."""

from __future__ import annotations

import argparse
from typing import Any, Dict

from blocklink.cli import add_info_argument, emit, load_json_arg


def register(sub: Any) -> None:
    p = sub.add_parser("disk-xml", help="print the libvirt <disk> XML for a volume's connection info")
    add_info_argument(p)
    p.add_argument("--device", help="host device or file the volume is connected at (omit: QEMU-native rbd/iscsi)")
    p.add_argument("--device-type", choices=("block", "file"), default="block", help="what --device is")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-dev", help="guest device name (vdb, sdc, ...)")
    g.add_argument("--domain-xml", help="a domain XML file: take the next free name for --bus from it")
    p.add_argument("--bus", default="virtio", help="virtio (default), scsi, sata, ide, usb")
    p.add_argument("--disk-device", default="disk", choices=("disk", "lun", "cdrom"), help="<disk device=...>")
    p.add_argument("--cache", default="none", help="driver cache mode (default none)")
    p.add_argument("--io", help="driver io mode (default: native for host block devices of iSCSI/FC/NVMe/RBD)")
    p.add_argument("--serial", help="disk serial (default: the connection's serial or volume id)")
    p.add_argument("--secret-uuid", help="libvirt secret for cephx or CHAP")
    p.add_argument("--encryption-secret-uuid", help="libvirt 'volume' secret holding the LUKS passphrase")
    p.add_argument("--size-gb", type=int, help="volume size, to resolve *_per_gb QoS specs")
    p.add_argument("--unit", type=int, help="SCSI unit on controller 0")
    p.add_argument("--initiator-iqn", help="iSCSI name QEMU logs in with (QEMU-native iscsi)")
    p.set_defaults(func=_disk_xml)


def _disk_xml(args: argparse.Namespace) -> int:
    from blocklink.connection import AttachedDevice
    from blocklink.hypervisor import disk_xml, next_device_name

    info = load_json_arg(args.info)
    device = AttachedDevice(protocol=str(info.get("driver_volume_type", "")) if isinstance(info, dict) else "",
                            path=args.device, type=args.device_type) if args.device else None
    if args.domain_xml:
        with open(args.domain_xml) as f:
            target = next_device_name(f.read(), args.bus)
    elif args.target_dev:
        target = args.target_dev
    else:
        emit({"error": "UsageError", "message": "give --target-dev or --domain-xml"})
        return 2
    opts: Dict[str, Any] = {"device_type": args.disk_device, "cache": args.cache}
    for key, value in (("io", args.io), ("serial", args.serial), ("secret_uuid", args.secret_uuid),
                       ("encryption_secret_uuid", args.encryption_secret_uuid), ("volume_size_gb", args.size_gb),
                       ("unit", args.unit), ("initiator_iqn", args.initiator_iqn)):
        if value is not None:
            opts[key] = value
    emit({"xml": disk_xml(info, device, target_dev=target, bus=args.bus, **opts)})
    return 0
