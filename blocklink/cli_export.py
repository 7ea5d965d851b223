"""CLI: ``blocklink export ...``, the storage-host side (what ``cinder-rtstool`` offers, for LIO and tgtd).

::

    blocklink export --helper tgt --control-port 5001 --portal 10.0.0.5:3260 --config-dir /etc/blocklink/tgt \\
        create 3f2a... /dev/vg/volume-3f2a...
    blocklink export ... add-initiator 3f2a... iqn.1994-05.com.redhat:compute1   # prints connection info
    blocklink export ... delete-initiator 3f2a... iqn.1994-05.com.redhat:compute1
    blocklink export ... get-targets | delete 3f2a... | ensure 3f2a... | restore | verify | save

Output is JSON. CHAP secrets are printed only where they are the point: ``add-initiator`` prints
Cinder's connection info (which carries ``auth_password``); ``create`` masks them unless
``--show-secrets``. Supplied CHAP passwords are read from a file or stdin, never from argv.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

from blocklink.cli import emit


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="storage host: iSCSI exports on LIO or tgtd (cinder-rtstool equivalents)")
    p.add_argument("--helper", choices=("tgt", "lio"), default="tgt", help="target implementation (default tgt)")
    p.add_argument("--portal", action="append", default=None, metavar="IP:PORT",
                   help="portal initiators use (repeat for several; default 127.0.0.1:3260)")
    p.add_argument("--iqn-prefix", default="iqn.2010-10.org.openstack:")
    p.add_argument("--name-template", default="volume-{}")
    p.add_argument("--lock-path", default="/run/blocklink/locks")
    p.add_argument("--backing-dir", help="where volumes without a device path live")
    p.add_argument("--control-port", type=int, default=0, help="tgt: tgtd's control port (tgtd -C)")
    p.add_argument("--config-dir", help="tgt: directory of export records (tgt-admin syntax, 0600)")
    p.add_argument("--save-file", help="lio: configuration file (rtslib JSON, 0600), a *.json file directly in /etc/rtslib-fb-target")
    p.add_argument("--iser", action="store_true", help="lio: enable iSER on the portals")
    ex = p.add_subparsers(dest="export_command", metavar="ACTION")
    ex.required = True

    c = ex.add_parser("create", help="export a device or file as a new target")
    c.add_argument("volume_id")
    c.add_argument("device", nargs="?", help="block device or file (default: <backing-dir>/volume-<id>)")
    c.add_argument("--size", type=int, help="create a missing backing file of this many bytes")
    c.add_argument("--no-chap", action="store_true", help="no CHAP (ACLs by initiator name only)")
    c.add_argument("--mutual-chap", action="store_true", help="also generate the target's CHAP credentials")
    c.add_argument("--chap-user", help="use this CHAP user name instead of a generated one")
    c.add_argument("--chap-password-file", help="file holding the CHAP password ('-' for stdin)")
    c.add_argument("--show-secrets", action="store_true", help="print the CHAP passwords")
    c.set_defaults(func=_create)

    e = ex.add_parser("ensure", help="make an export exist as recorded (re-creates what the target lost)")
    e.add_argument("volume_id")
    e.add_argument("device", nargs="?")
    e.add_argument("--show-secrets", action="store_true")
    e.set_defaults(func=_ensure)

    a = ex.add_parser("add-initiator", help="allow an initiator; prints the connection info (with CHAP secret)")
    a.add_argument("volume_id")
    a.add_argument("initiator")
    a.add_argument("--multipath", action="store_true", help="list every portal (target_portals)")
    a.set_defaults(func=_add_initiator)

    d = ex.add_parser("delete-initiator", help="remove an initiator's access and sessions")
    d.add_argument("volume_id")
    d.add_argument("initiator")
    d.set_defaults(func=_delete_initiator)

    g = ex.add_parser("get-targets", help="list the exports")
    g.set_defaults(func=_get_targets)

    r = ex.add_parser("delete", help="remove an export (the device's data stays)")
    r.add_argument("volume_id")
    r.set_defaults(func=_delete)

    v = ex.add_parser("verify", help="check that the target implementation is usable here")
    v.set_defaults(func=_verify)

    s = ex.add_parser("save", help="persist the configuration (lio: save file; tgt: records are always current)")
    s.set_defaults(func=_save)

    rs = ex.add_parser("restore", help="ensure every recorded export exists (after a target restart)")
    rs.set_defaults(func=_restore)


def build_helper(args: argparse.Namespace) -> Any:
    portals = args.portal or ["127.0.0.1:3260"]
    common: Dict[str, Any] = dict(portals=portals, iqn_prefix=args.iqn_prefix, name_template=args.name_template,
                                  lock_path=args.lock_path, backing_dir=args.backing_dir)
    if args.helper == "lio":
        from blocklink.target.lio import LioTarget

        return LioTarget(save_file=args.save_file, iser=args.iser, **common)
    from blocklink.target.tgt import TgtTarget

    return TgtTarget(control_port=args.control_port, config_dir=args.config_dir, **common)


def _read_secret(path: str) -> str:
    if path == "-":
        return sys.stdin.readline().rstrip("\n")
    with open(path) as f:
        return f.readline().rstrip("\n")


def _chap(args: argparse.Namespace) -> Any:
    if args.no_chap:
        return False
    if args.chap_user or args.chap_password_file:
        if not (args.chap_user and args.chap_password_file):
            from blocklink.errors import InvalidConnectionInfo

            raise InvalidConnectionInfo("chap", "--chap-user and --chap-password-file go together")
        return (args.chap_user, _read_secret(args.chap_password_file))
    return True


def _create(args: argparse.Namespace) -> int:
    helper = build_helper(args)
    export = helper.create_export(args.volume_id, args.device, size=args.size, chap=_chap(args),
                                  mutual_chap=args.mutual_chap)
    emit(export.to_dict(reveal=args.show_secrets))
    return 0


def _ensure(args: argparse.Namespace) -> int:
    export = build_helper(args).ensure_export(args.volume_id, args.device)
    emit(export.to_dict(reveal=args.show_secrets))
    return 0


def _add_initiator(args: argparse.Namespace) -> int:
    info = build_helper(args).initialize_connection(
        args.volume_id, {"host": os.uname().nodename, "initiator": args.initiator, "multipath": args.multipath})
    emit(info.to_dict())
    return 0


def _delete_initiator(args: argparse.Namespace) -> int:
    build_helper(args).terminate_connection(args.volume_id, {"host": os.uname().nodename,
                                                             "initiator": args.initiator})
    emit({"volume_id": args.volume_id, "initiator": args.initiator, "removed": True})
    return 0


def _get_targets(args: argparse.Namespace) -> int:
    helper = build_helper(args)
    emit([{"volume_id": v, "target_iqn": helper.target_iqn(v)} for v in helper.list_exports()])
    return 0


def _delete(args: argparse.Namespace) -> int:
    build_helper(args).remove_export(args.volume_id)
    emit({"volume_id": args.volume_id, "removed": True})
    return 0


def _verify(args: argparse.Namespace) -> int:
    out: Dict[str, Any] = {"helper": args.helper}
    problems: List[str] = []
    if args.helper == "lio":
        try:
            import rtslib_fb
        except ImportError:
            problems.append("rtslib_fb is not installed")
        else:
            missing = [m for m in ("BlockStorageObject", "FileIOStorageObject", "FabricModule", "LUN", "MappedLUN",
                                   "NetworkPortal", "NodeACL", "RTSRoot", "Target", "TPG") if not hasattr(rtslib_fb, m)]
            if missing:
                problems.append(f"rtslib_fb lacks {', '.join(missing)}")
            else:
                from blocklink.errors import TargetError
                from blocklink.target.lio import lio_list

                try:
                    out["targets"] = len(lio_list(""))
                except TargetError as e:
                    problems.append(str(e))
    else:
        helper = build_helper(args)
        out["socket"] = helper.admin.socket_path
        if not helper.admin.ready():
            problems.append(f"tgtd is not answering on {helper.admin.socket_path}")
        else:
            out["targets"] = len(helper.admin.show_targets())
    out["ok"] = not problems
    out["problems"] = problems
    emit(out)
    return 0 if not problems else 1


def _save(args: argparse.Namespace) -> int:
    helper = build_helper(args)
    if args.helper == "lio":
        helper.save()
        emit({"saved": helper.save_file})
    else:
        emit({"saved": helper.config_file, "note": "tgt records are written on every change"})
    return 0


def _restore(args: argparse.Namespace) -> int:
    restored: Optional[List[str]] = build_helper(args).restore_all()
    emit({"restored": restored})
    return 0
