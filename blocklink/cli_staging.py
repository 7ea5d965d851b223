"""CLI: volume staging (stage, publish, unpublish, unstage, expand, stats, condition), JSON output.

DEVICE is a /dev path or what ``blocklink connect`` printed (a JSON file, '-' or inline JSON), so the
volume's identity (WWN, NVMe UUID, RBD image) is checked before anything is formatted or mounted.
"""

from __future__ import annotations

import argparse
from typing import Any

from blocklink.cli import emit, load_json_arg


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default="/run/blocklink/staging", help="where staging records are kept")
    p.add_argument("--lock-path", default="/run/blocklink/locks")


def register(sub: Any) -> None:
    p = sub.add_parser("stage", help="mount a volume's filesystem on a staging path (format only if blank)")
    p.add_argument("device", help="a /dev path, or the JSON 'blocklink connect' printed (file, '-', inline)")
    p.add_argument("staging_path")
    p.add_argument("--fs-type", default="ext4", help="ext4 (default) or xfs")
    p.add_argument("-o", "--mount-option", action="append", default=[], dest="mount_options",
                   help="a filesystem mount option (repeat for several)")
    p.add_argument("--mkfs-option", action="append", default=[], dest="mkfs_options",
                   help="an mkfs argument, used only when the device is blank (repeat for several)")
    p.set_defaults(func=_stage)

    p = sub.add_parser("publish", help="bind-mount a staged filesystem (or, with --block, a device) on a target")
    p.add_argument("source", help="the staging path; with --block the device (as for stage)")
    p.add_argument("target_path")
    p.add_argument("--readonly", action="store_true")
    p.add_argument("--block", action="store_true", help="publish the block device node itself onto a file")
    p.set_defaults(func=_publish)

    for name, helptext, fn in (("unpublish", "unmount a publication and remove its mount point", _unpublish),
                               ("unstage", "unmount a staging path (refused while published or busy)", _unstage)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("path")
        p.add_argument("--force", action="store_true", help="detach lazily when busy (unstage: and publications)")
        p.set_defaults(func=fn)

    p = sub.add_parser("expand", help="grow a staged filesystem online after the volume was extended")
    p.add_argument("staging_path")
    p.set_defaults(func=_expand)

    p = sub.add_parser("stats", help="bytes and inodes (total, used, available) of a staged or published path")
    p.add_argument("path")
    p.set_defaults(func=_stats)

    p = sub.add_parser("condition", help="whether the volume at a path is healthy, with the reason")
    p.add_argument("path")
    p.add_argument("--device", help="the volume as for stage: also check the device is still that volume")
    p.set_defaults(func=_condition)

    for name in ("stage", "publish", "unpublish", "unstage", "expand", "stats", "condition"):
        _common(sub.choices[name])


def _stager(args: argparse.Namespace) -> Any:
    from blocklink.staging import Stager

    return Stager(state_dir=args.state_dir, lock_path=args.lock_path)


def _device(value: str) -> Any:
    from blocklink.models.host import AttachedDevice

    if value.startswith("/dev/"):
        return value
    return AttachedDevice.from_dict(load_json_arg(value))


def _stage(args: argparse.Namespace) -> int:
    vol = _stager(args).stage(_device(args.device), args.staging_path, args.fs_type, args.mount_options,
                              args.mkfs_options)
    emit(vol.to_dict())
    return 0


def _publish(args: argparse.Namespace) -> int:
    st = _stager(args)
    if args.block:
        pub = st.publish_block(_device(args.source), args.target_path)
    else:
        pub = st.publish(args.source, args.target_path, readonly=args.readonly)
    emit(pub.to_dict())
    return 0


def _unpublish(args: argparse.Namespace) -> int:
    emit(_stager(args).unpublish(args.path, force=args.force).to_dict())
    return 0


def _unstage(args: argparse.Namespace) -> int:
    emit(_stager(args).unstage(args.path, force=args.force).to_dict())
    return 0


def _expand(args: argparse.Namespace) -> int:
    emit({"staging_path": args.staging_path, "bytes_total": _stager(args).expand(args.staging_path)})
    return 0


def _stats(args: argparse.Namespace) -> int:
    emit(_stager(args).stats(args.path).to_dict())
    return 0


def _condition(args: argparse.Namespace) -> int:
    from blocklink.models.host import AttachedDevice

    dev = _device(args.device) if args.device else None
    if isinstance(dev, str):  # a bare path says nothing about identity
        dev = AttachedDevice("", path=dev)
    cond = _stager(args).condition(args.path, dev)
    emit(cond.to_dict())
    return 1 if cond.abnormal else 0
