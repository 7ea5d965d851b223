"""CLI: ``guard`` — watch the attached SCSI disks and take one offline when its WWN changes."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any, List

from blocklink.errors import InvalidOption


def register(sub: Any) -> None:
    p = sub.add_parser("guard", help="watch attached SCSI disks: one whose WWN changes (a LUN remapped to "
                       "another volume) is set offline; one JSON line per event on stdout")
    p.add_argument("--store", default="blocklink-attachments.db",
                   help="attachment store whose active records of this host are watched: a SQLite path or an "
                   "SQLAlchemy URL (default: %(default)s); 'none' to watch only --device")
    p.add_argument("--host", help="this host's name in the store (default: the hostname)")
    p.add_argument("--device", action="append", default=[], metavar="DEV=WWN",
                   help="also watch DEV (sdX, /dev/..., or a dm-N map's paths) for WWN (repeatable)")
    p.add_argument("--interval", type=float, default=0.25,
                   help="seconds between sweeps of every watched disk (uevents act at once; default %(default)s)")
    p.add_argument("--no-rescan", action="store_true",
                   help="do not rescan a disk the target reports changed inquiry/LUN/capacity data for")
    p.add_argument("--once", action="store_true",
                   help="check every watched disk once and exit (1 if a disk was taken offline)")
    p.set_defaults(func=_guard)


def _line(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _guard(args: argparse.Namespace) -> int:
    from blocklink.guard import GuardEvent, WrongVolumeGuard

    store = None
    if args.store != "none":
        from blocklink.attach.records import AttachmentStore

        store = AttachmentStore(args.store)
    events: List[GuardEvent] = []

    def report(ev: GuardEvent) -> None:
        events.append(ev)
        _line({"event": ev.to_dict()})

    g = WrongVolumeGuard(store, host=args.host, callback=report, interval=args.interval,
                         rescan_on_unit_attention=not args.no_rescan)
    for spec in args.device:
        dev, sep, wwn = spec.partition("=")
        if not sep or not dev or not wwn:
            raise InvalidOption("--device", f"expected DEV=WWN, not {spec!r}")
        g.watch(dev, wwn)
    if args.once:
        g.refresh()
        g.check(trigger="once")
        _line({"watched": g.watched()})
        return 1 if any(e.kind == "wwn_changed" for e in events) else 0
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    g.start()
    try:
        _line({"watching": g.watched()})
        while not done.wait(3600):
            pass
    finally:
        g.stop()
    return 1 if any(e.kind == "wwn_changed" for e in events) else 0
