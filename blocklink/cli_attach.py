"""CLI: the attach flow (attach, detach, list, reconcile) over an attachment store and libvirt.

Targets are configured with options: ``--ceph-conf``/``--ceph-user``/``--pool`` for RBD,
``--tgt-control-port``/``--portal``/``--backing-dir`` for iSCSI on tgtd.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict

from blocklink.cli import emit


def _common(p: argparse.ArgumentParser, libvirt: bool = True, targets: bool = True) -> None:
    p.add_argument("--store", default="blocklink-attachments.db",
                   help="attachment store: a SQLite file path or an SQLAlchemy URL (default: %(default)s)")
    if libvirt:
        p.add_argument("--libvirt", default="qemu:///system", help="libvirt URI (default: %(default)s)")
    if targets:
        g = p.add_argument_group("targets")
        g.add_argument("--ceph-conf", help="RBD: ceph.conf of the cluster")
        g.add_argument("--ceph-keyring", help="RBD: keyring of --ceph-user")
        g.add_argument("--ceph-user", default="admin", help="RBD: cephx user (default: %(default)s)")
        g.add_argument("--pool", default="volumes", help="RBD: pool (default: %(default)s)")
        g.add_argument("--tgt-control-port", type=int, help="iSCSI: control port of the tgtd to export from")
        g.add_argument("--portal", action="append", default=[], help="iSCSI: portal ip:port (repeatable)")
        g.add_argument("--backing-dir", help="iSCSI: directory for volumes' backing files")
        g.add_argument("--config-dir", help="iSCSI: where tgt export records are kept")


def register(sub: Any) -> None:
    p = sub.add_parser("attach", help="attach a volume to a libvirt domain (the whole seed sequence)")
    _common(p)
    p.add_argument("--domain", required=True, help="libvirt domain name or UUID")
    p.add_argument("--protocol", required=True, choices=["rbd", "iscsi"])
    p.add_argument("--bus", default="virtio", choices=["virtio", "scsi", "sata", "usb"])
    p.add_argument("--device-path", help="iSCSI: backing device/file to export (created if --size is given)")
    p.add_argument("--size", type=int, help="size in bytes (for a new backing file)")
    p.add_argument("--host-attach", action="store_true",
                   help="connect on this host and give the VM the device (iSCSI: userspace attach)")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--multiattach", action="store_true")
    p.add_argument("volume_id")
    p.set_defaults(func=_attach)

    p = sub.add_parser("detach", help="detach an attachment (by its id)")
    _common(p)
    p.add_argument("attachment_id")
    p.set_defaults(func=_detach)

    p = sub.add_parser("list", help="list attachment records")
    _common(p, libvirt=False, targets=False)
    p.add_argument("--volume")
    p.add_argument("--instance")
    p.add_argument("--status", action="append")
    p.set_defaults(func=_list)

    p = sub.add_parser("reconcile", help="finish or roll back attaches/detaches whose process died")
    _common(p)
    p.set_defaults(func=_reconcile)


def _targets(args: argparse.Namespace) -> Dict[str, Any]:
    targets: Dict[str, Any] = {}
    if args.ceph_conf:
        from blocklink.target.rbd import RbdTarget

        targets["rbd"] = RbdTarget(conffile=args.ceph_conf, keyring=args.ceph_keyring, user=args.ceph_user,
                                   pool=args.pool, include_keyring=True)
    if args.tgt_control_port is not None:
        from blocklink.target.tgt import TgtTarget

        opts: Dict[str, Any] = {}
        if args.config_dir:
            opts["config_dir"] = args.config_dir
        targets["iscsi"] = TgtTarget(portals=args.portal or ["127.0.0.1:3260"], control_port=args.tgt_control_port,
                                     backing_dir=args.backing_dir, **opts)
    return targets


def _flow(args: argparse.Namespace) -> Any:
    from blocklink.attach.flow import AttachFlow
    from blocklink.attach.records import AttachmentStore
    from blocklink.hypervisor.live import LibvirtHost
    from blocklink.registry import connector_for

    def connectors(protocol: str) -> Any:
        return connector_for(protocol, attach="userspace")

    return AttachFlow(store=AttachmentStore(args.store), targets=_targets(args), hypervisor=LibvirtHost(args.libvirt),
                      connector_factory=connectors)


def _attach(args: argparse.Namespace) -> int:
    from blocklink.attach.flow import VolumeSpec

    spec = VolumeSpec(volume_id=args.volume_id, protocol=args.protocol, device_path=args.device_path,
                      size=args.size, multiattach=args.multiattach, attach_mode="ro" if args.read_only else "rw",
                      host_attach=args.host_attach, bus=args.bus)
    emit(_flow(args).attach_volume(spec, args.domain).to_dict())
    return 0


def _detach(args: argparse.Namespace) -> int:
    emit(_flow(args).detach_volume(args.attachment_id).to_dict())
    return 0


def _list(args: argparse.Namespace) -> int:
    from blocklink.attach.records import AttachmentStore

    store = AttachmentStore(args.store)
    emit([a.to_dict() for a in store.list(volume_id=args.volume, instance=args.instance, statuses=args.status)])
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    emit(_flow(args).reconcile())
    return 0
