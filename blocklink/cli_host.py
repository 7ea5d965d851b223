"""CLI: host-side subcommands (connector-properties, connect, disconnect).

``connect --encryption ENC --key-file FILE`` also opens a front-end encrypted volume with dm-crypt and
prints the ``/dev/mapper/crypt-<volume id>`` device (its ``encryption`` key names the mapping and the
connected device below it); ``disconnect --encryption ENC`` closes that mapping before disconnecting.
The passphrase comes from an owner-only file or stdin, never from the command line.
"""

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
    _encryption_arguments(p)
    p.add_argument("--key-file", help="with --encryption: file with the passphrase, mode 0600 ('-': stdin)")
    p.add_argument("--new-volume", action="store_true",
                   help="with --encryption: the volume is new; format it if it is blank (never if it has a signature)")
    p.add_argument("--pbkdf-force-iterations", type=int,
                   help="with --encryption --new-volume: a fixed PBKDF cost instead of a benchmark (slow CPUs)")
    p.set_defaults(func=_connect)

    p = sub.add_parser("disconnect", help="disconnect a volume given its connection info")
    add_info_argument(p)
    p.add_argument("--device", help="the device path connect returned (checked against the volume)")
    p.add_argument("--force", action="store_true", help="continue past failures and report them")
    p.add_argument("--multipath", action="store_true", help="iSCSI/FC/NVMe: the volume was attached with --multipath")
    _encryption_arguments(p)
    p.set_defaults(func=_disconnect)


def _encryption_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encryption", help="the volume's Nova/Cinder encryption dict (JSON file, '-' or inline JSON): "
                   "a front-end LUKS volume is opened/closed on this host with dm-crypt")
    p.add_argument("--volume-id", help="with --encryption: names the mapping (default: the info's volume_id)")


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


def _usage(message: str) -> int:
    emit({"error": "UsageError", "message": message})
    return 2


def _encryption(args: argparse.Namespace, info: Any) -> Any:
    """(spec, volume id) of a volume this host must decrypt, or (None, None)."""
    if not args.encryption:
        return None, None  # before the import: a plain attach does not pay for the encryption package
    from blocklink.encryption import spec_from_dict

    opts = {"pbkdf_force_iterations": args.pbkdf_force_iterations} \
        if getattr(args, "pbkdf_force_iterations", None) is not None else {}
    spec = spec_from_dict(load_json_arg(args.encryption), **opts)
    if not spec.host_side:
        return None, None  # no-op provider, or the storage encrypts (back-end): nothing to open here
    vid = args.volume_id or getattr(info, "volume_id", None)
    if not vid:
        from blocklink.encryption import InvalidEncryption

        raise InvalidEncryption("volume_id", "the connection info names no volume: give --volume-id")
    return spec, vid


def _encryptor(spec: Any) -> Any:
    from blocklink.encryption import LuksEncryptor

    return LuksEncryptor(spec)


def _connect(args: argparse.Namespace) -> int:
    import blocklink

    if args.info == "-" and "-" in (args.encryption, args.key_file):
        return _usage("only one of the info, --encryption and --key-file can come from stdin")
    if args.encryption == "-" and args.key_file == "-":
        return _usage("only one of --encryption and --key-file can come from stdin")
    info = blocklink.parse_connection_info(load_json_arg(args.info))
    if info.driver_volume_type == "rbd" and not args.local:
        return _usage("rbd without --local returns an in-process handle; use --local")
    spec, vid = _encryption(args, info)
    key = None
    if spec is not None:
        if not args.key_file:
            return _usage("an encrypted volume needs --key-file (a 0600 file, or '-' for stdin)")
        from blocklink.cli_encryption import read_key_file

        key = read_key_file(args.key_file)  # before connecting: a bad key file leaves nothing to undo
    conn = _connector(info, args)
    dev = conn.connect_volume(info)
    if spec is not None:
        try:
            dev = _encryptor(spec).attach(dev, key, volume_id=vid, new_volume=args.new_volume)
        except BaseException:
            conn.disconnect_volume(info, dev, force=True)  # nothing half-attached is left
            raise
    emit(dev.to_dict())
    return 0


def _disconnect(args: argparse.Namespace) -> int:
    import blocklink

    if args.info == "-" and args.encryption == "-":
        return _usage("only one of the info and --encryption can come from stdin")
    info = blocklink.parse_connection_info(load_json_arg(args.info))
    if info.driver_volume_type == "rbd":
        args.local = True
    path = args.device
    spec, vid = _encryption(args, info)
    if spec is not None:
        enc = _encryptor(spec)
        m = enc.mapping(vid)
        if m is not None and path in (m.path, f"/dev/{m.node}") and len(m.lower) == 1:
            path = f"/dev/{m.lower[0]}"  # connect printed the mapping: the connector checks what is below it
        enc.detach(vid, force=args.force)  # closed first: never disconnect from under an open mapping
    elif path and path.startswith("/dev/mapper/crypt-"):
        return _usage(f"{path} is a dm-crypt mapping: give --encryption to close it before disconnecting")
    device = {"path": path, "type": "block"} if path else None
    _connector(info, args).disconnect_volume(info, device, force=args.force)
    emit({"disconnected": True})
    return 0
