"""CLI: ``doctor`` (what will make attaches fail here) and ``audit`` (kernel state vs attachment records)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from blocklink.cli import emit


def _store(args: argparse.Namespace) -> Any:
    if not args.store:
        return None
    from blocklink.attach.records import AttachmentStore

    return AttachmentStore(args.store)


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check this host's initiator setup; exit 0 clear, 1 warning, 2 critical")
    p.add_argument("--store", help="attachment store (SQLite path or SQLAlchemy URL): fleet-wide identity "
                   "uniqueness and reachability of the portals its records name")
    p.add_argument("--protocol", action="append", choices=["iscsi", "fibre_channel", "nvmeof", "rbd"],
                   help="protocols this host uses (repeatable; default: all)")
    p.add_argument("--host", help="this host's name in the store (default: the hostname)")
    p.add_argument("--json", action="store_true", help="JSON instead of one line per finding")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("audit", help="compare kernel state with the attachment records: orphans, ghosts, "
                       "mismatches (JSON); exit 0 when all agree, 1 otherwise")
    p.add_argument("--store", default="blocklink-attachments.db",
                   help="attachment store: a SQLite file path or an SQLAlchemy URL (default: %(default)s)")
    p.add_argument("--host", help="this host's name in the store (default: the hostname)")
    p.add_argument("--clean", action="store_true",
                   help="remove the orphans that are provably safe to remove; report the others with the reason")
    p.add_argument("--libvirt", metavar="URI",
                   help="also audit the libvirt secrets blocklink defined there (e.g. qemu:///system)")
    p.set_defaults(func=_audit)


def _doctor(args: argparse.Namespace) -> int:
    from blocklink.doctor import PROTOCOLS, Doctor

    report = Doctor(store=_store(args), protocols=args.protocol or PROTOCOLS, host=args.host).run()
    if args.json:
        emit(report.to_dict())
    else:
        sys.stdout.write(report.human() + "\n")
    return report.exit_status


def _audit(args: argparse.Namespace) -> int:
    from blocklink.audit import Auditor

    conn = None
    if args.libvirt:
        from blocklink.hypervisor.secrets import _libvirt

        conn = _libvirt().open(args.libvirt)
    auditor = Auditor(_store(args), host=args.host, libvirt=conn)
    report = auditor.audit()
    if args.clean:
        report = auditor.clean(report)
    emit(report.to_dict())
    if args.clean:
        return 0 if not report.refused and not report.ghosts and not report.mismatches else 1
    return 0 if report.clean else 1
