"""CLI: host-side LUKS on a connected volume (``blocklink encryption open|close|extend|rotate-key|probe``).

Keys come from a file only readable by its owner, or from stdin (``-``); never from the command line.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any, Dict

from blocklink.cli import emit, load_json_arg


def register(sub: Any) -> None:
    p = sub.add_parser("encryption", help="open/close/extend/re-key a LUKS volume on a connected host device")
    esub = p.add_subparsers(dest="encryption_command", metavar="ACTION")
    esub.required = True

    o = esub.add_parser("open", help="open (a new blank volume: format) DEVICE; print the dm-crypt device")
    o.add_argument("device", help="the connected volume's block device (what 'connect' printed)")
    _volume_and_key(o)
    o.add_argument("--new-volume", action="store_true", help="the volume is new: format it if it is blank")
    o.add_argument("--encryption", help="Nova/Cinder encryption dict (JSON file, '-' or inline JSON)")
    o.add_argument("--format", choices=("luks1", "luks2"), help="header format for a new volume (default luks2)")
    o.add_argument("--cipher", help="cipher for a new volume (default aes-xts-plain64)")
    o.add_argument("--key-size", type=int, help="key size in bits for a new volume (default 512)")
    o.add_argument("--iter-time", type=int, help="milliseconds of PBKDF per unlock (default 1000)")
    o.set_defaults(func=_open)

    c = esub.add_parser("close", help="close the volume's dm-crypt mapping")
    c.add_argument("--volume-id", required=True)
    c.add_argument("--force", action="store_true", help="do not wait for users: defer removal, name them")
    c.set_defaults(func=_close)

    x = esub.add_parser("extend", help="grow the open mapping after its device grew; print the new size")
    _volume_and_key(x)
    x.set_defaults(func=_extend)

    r = esub.add_parser("rotate-key", help="replace the keyslot of the old key by one for the new key")
    r.add_argument("device")
    r.add_argument("--old-key-file", required=True, help="file with the current passphrase ('-': stdin)")
    r.add_argument("--new-key-file", required=True, help="file with the new passphrase ('-': stdin)")
    r.set_defaults(func=_rotate)

    b = esub.add_parser("probe", help="list the signatures (filesystem, LUKS, partition table) on DEVICE")
    b.add_argument("device")
    b.set_defaults(func=_probe)


def _volume_and_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--volume-id", required=True, help="names the mapping: /dev/mapper/crypt-<volume id>")
    p.add_argument("--key-file", required=True, help="file with the passphrase, mode 0600 ('-': stdin)")


def read_key_file(path: str, what: str = "key_file") -> Any:
    """The passphrase in ``path`` (all of its bytes, as cryptsetup's ``--key-file`` reads them) or stdin."""
    from blocklink.encryption import InvalidEncryption
    from blocklink.masking import Secret

    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise InvalidEncryption(what, f"cannot open {path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
                raise InvalidEncryption(what, f"{path} must be a regular file only its owner can read "
                                              f"(mode {stat.S_IMODE(st.st_mode):04o})")
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise InvalidEncryption(what, "the passphrase is not UTF-8 text") from None
    if not text:
        raise InvalidEncryption(what, "the passphrase is empty")
    return Secret(text)


def _encryptor(spec: Any = None) -> Any:
    from blocklink.encryption import LuksEncryptor

    return LuksEncryptor(spec)


def _spec(args: argparse.Namespace) -> Any:
    from blocklink.encryption import EncryptionSpec, spec_from_dict

    opts: Dict[str, Any] = {k: v for k, v in (("format", args.format), ("cipher", args.cipher),
                                               ("key_size", args.key_size), ("iter_time_ms", args.iter_time))
                            if v is not None}
    if args.encryption:
        return spec_from_dict(load_json_arg(args.encryption), **opts)
    return EncryptionSpec().with_options(**opts)


def _open(args: argparse.Namespace) -> int:
    from blocklink.connection import AttachedDevice

    if args.encryption == "-" and args.key_file == "-":
        emit({"error": "UsageError", "message": "--encryption and --key-file cannot both be stdin"})
        return 2
    spec = _spec(args)
    key = read_key_file(args.key_file)
    dev = AttachedDevice(protocol="", path=args.device)
    out = _encryptor(spec).attach(dev, key, volume_id=args.volume_id, new_volume=args.new_volume)
    emit(out.to_dict())
    return 0


def _close(args: argparse.Namespace) -> int:
    _encryptor().detach(args.volume_id, force=args.force)
    emit({"closed": True})
    return 0


def _extend(args: argparse.Namespace) -> int:
    emit({"size": _encryptor().extend(args.volume_id, read_key_file(args.key_file))})
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from blocklink.connection import AttachedDevice

    if args.old_key_file == "-" and args.new_key_file == "-":
        emit({"error": "UsageError", "message": "only one of the keys can come from stdin"})
        return 2
    old = read_key_file(args.old_key_file, "old_key_file")
    new = read_key_file(args.new_key_file, "new_key_file")
    slot = _encryptor().rotate_key(AttachedDevice(protocol="", path=args.device), old, new)
    emit({"keyslot": slot})
    return 0


def _probe(args: argparse.Namespace) -> int:
    from blocklink.encryption import probe
    from blocklink.executor import default_executor

    emit([{"kind": s.kind, "type": s.type, "version": s.version, "uuid": s.uuid, "label": s.label}
          for s in probe(default_executor(), args.device)])
    return 0
