"""The example CLI: a thin layer over the public API with JSON output.

Subcommands live in small modules that each offer ``register(subparsers)``; this file only wires
them together, so a module can be added without touching the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any, List, Optional, Sequence

# modules providing subcommands (absent ones are skipped so partial installs still work)
SUBCOMMAND_MODULES = (
    "blocklink.cli_host",
    "blocklink.cli_export",
    "blocklink.cli_hypervisor",
    "blocklink.cli_attach",
    "blocklink.cli_staging",
    "blocklink.cli_encryption",
    "blocklink.cli_diagnose",
    "blocklink.cli_guard",
)
# the demo is an example in the source tree, not part of the installed package
DEMO_MODULE = "examples.demo"


def emit(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (the CLI's only output format)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blocklink", description="Attach block storage to hosts and VMs.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)")
    parser.add_argument("--trace", action="store_true",
                        help="print every attach/connect step with its duration to stderr when done")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)
    # every argument (--help too) goes to the example's own parser: no option prefix can occur in argv ("\0")
    demo = sub.add_parser("demo", add_help=False, prefix_chars="\0",
                          help="walk the attach sequence on throwaway local backends (checkout: examples/demo.py)")
    demo.add_argument("demo_args", nargs="*", help=argparse.SUPPRESS)
    demo.set_defaults(func=_demo)
    return parser


def _checkout() -> str:
    """The source tree this blocklink was imported from (holds ``examples/`` in a checkout)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo(args: argparse.Namespace) -> int:
    top = _checkout()
    if not os.path.isfile(os.path.join(top, *DEMO_MODULE.split(".")) + ".py"):
        sys.stderr.write("blocklink demo: the demo is not part of the installed package; run it from a source "
                         "checkout: ./scripts/demo (or python -m examples.demo)\n")
        return 2
    if top not in sys.path:
        sys.path.insert(0, top)
    return int(importlib.import_module(DEMO_MODULE).main(args.demo_args, prog="blocklink demo"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    from blocklink.errors import BlocklinkError

    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        rc = _traced(args) if args.trace else args.func(args)
    except BlocklinkError as e:
        emit({"error": type(e).__name__, "message": str(e)})
        return 1
    return int(rc or 0)


def _traced(args: argparse.Namespace) -> Any:
    """Run the command collecting its trace; print the steps, and how much of the wall time the
    top-level steps account for, to stderr (also when the command fails)."""
    import time

    from blocklink.trace import collect, format_events, top_level_seconds

    with collect() as events:
        t0 = time.monotonic()
        try:
            return args.func(args)
        finally:
            wall = time.monotonic() - t0
            lines = format_events(events)
            traced = top_level_seconds(events)
            lines.append(f"{traced:9.3f}s  in top-level steps of {wall:.3f}s wall"
                         f" ({100.0 * traced / wall if wall > 0 else 100.0:.1f}%)")
            sys.stderr.write("trace:\n" + "\n".join(lines) + "\n")


def add_info_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("info", help="connection info: a JSON file, '-' for stdin, or inline JSON")


def load_json_arg(value: str) -> Any:
    if value == "-":
        return json.load(sys.stdin)
    if value.lstrip().startswith("{"):
        return json.loads(value)
    with open(value) as f:
        return json.load(f)


__all__: List[str] = ["main", "emit", "build_parser", "add_info_argument", "load_json_arg"]

if __name__ == "__main__":
    sys.exit(main())
