"""CLI: host-side subcommands (connector-properties, connect, disconnect)."""

from __future__ import annotations

import argparse
from typing import Any, Dict

from blocklink.cli import add_info_argument, emit, load_json_arg


def register(sub: Any) -> None:
    p = sub.add_parser("connector-properties", help="print this host's connector dict (os-brick format)")
    p.add_argument("--ip", help="address the storage should see (default: source of the default route)")
    p.add_argument("--multipath", action="store_true", help="ask for multipath (true only if multipathd runs)")
    p.set_defaults(func=_props)

    p = sub.add_parser("connect", help="connect a volume from its connection info; print the device")
    add_info_argument(p)
    p.add_argument("--local", action="store_true", help="RBD: map a local block device instead of a handle")
    p.add_argument("--multipath", action="store_true", help="iSCSI/FC/NVMe: attach every path (use_multipath)")
    p.set_defaults(func=_connect)

    p = sub.add_parser("disconnect", help="disconnect a volume given its connection info")
    add_info_argument(p)
    p.add_argument("--device", help="the device path connect returned (checked against the volume)")
    p.add_argument("--force", action="store_true", help="continue past failures and report them")
    p.add_argument("--multipath", action="store_true", help="iSCSI/FC/NVMe: the volume was attached with --multipath")
    p.set_defaults(func=_disconnect)


def _props(args: argparse.Namespace) -> int:
    import blocklink

    emit(blocklink.get_connector_properties(ip=args.ip, multipath=args.multipath))
    return 0


def _connector(info: Any, args: argparse.Namespace) -> Any:
    import blocklink

    opts: Dict[str, Any] = {"do_local_attach": True} \
        if getattr(args, "local", False) and info.driver_volume_type == "rbd" else {}
    if getattr(args, "multipath", False) and info.driver_volume_type != "rbd":
        opts["use_multipath"] = True
    from blocklink.trace import span

    with span("load_connector", protocol=info.driver_volume_type):  # imports and probes: --trace shows their cost
        return blocklink.connector_for(info.driver_volume_type, **opts)


def _connect(args: argparse.Namespace) -> int:
    import blocklink

    info = blocklink.parse_connection_info(load_json_arg(args.info))
    if info.driver_volume_type == "rbd" and not args.local:
        emit({"error": "UsageError", "message": "rbd without --local returns an in-process handle; use --local"})
        return 2
    dev = _connector(info, args).connect_volume(info)
    emit(dev.to_dict())
    return 0


def _disconnect(args: argparse.Namespace) -> int:
    import blocklink

    info = blocklink.parse_connection_info(load_json_arg(args.info))
    if info.driver_volume_type == "rbd":
        args.local = True
    device = {"path": args.device, "type": "block"} if args.device else None
    _connector(info, args).disconnect_volume(info, device, force=args.force)
    emit({"disconnected": True})
    return 0
