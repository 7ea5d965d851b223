"""The one command: ``.venv/bin/python -m benchmarks [--quick] [--only NAME ...]``.

Creates benchmarks/.venv-osbrick if needed (os-brick 7.1.1 + matplotlib, outside blocklink's
venv), runs every benchmark with blocklink and os-brick interleaved, writes
benchmarks/results/<timestamp>/{report.md,results.json,ratios.png} and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import shlex
import subprocess
import sys
import time
import traceback
from typing import List, Optional

from benchmarks import goals, machine, report, venv
from benchmarks.context import REPO, Context
from benchmarks.model import Outcome

HERE = os.path.dirname(os.path.abspath(__file__))

# module name -> title; each module has run(ctx) -> Outcome
BENCHMARKS = [
    ("import_time", "cold import"),
    ("connector_properties", "get_connector_properties"),
    ("rbd_handle", "RBD handle I/O"),
    ("target_exports", "target side: 100 exports"),
    ("iscsi_guest", "iSCSI attach/detach in the real-kernel guest"),
    ("dmcrypt_guest", "dm-crypt vs raw device in the real-kernel guest"),
    ("nova_guest", "Nova's iSCSI volume driver on the facade vs os-brick (guest)"),
    ("nvme_guest", "NVMe/TCP connect/disconnect in the real-kernel guest"),
    ("userspace", "userspace attach throughput"),
    ("attach_flow", "attach flow end to end: AttachFlow vs the bare libvirt/tgtadm sequence"),
]


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few repetitions and small sizes: a smoke run")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=[b for b, _ in BENCHMARKS],
                   help="run only these benchmarks")
    p.add_argument("--skip", nargs="+", metavar="NAME", default=[], choices=[b for b, _ in BENCHMARKS],
                   help="leave these out (reported as not run)")
    p.add_argument("--out", help="results directory (default benchmarks/results/<timestamp>)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return p.parse_args(argv)


def run_one(name: str, title: str, ctx: Context) -> Outcome:
    print(f"== {title}", file=sys.stderr, flush=True)
    before = machine.load()
    t0 = time.monotonic()
    try:
        mod = importlib.import_module(f"benchmarks.{name}")
        outcome: Outcome = mod.run(ctx)
    except Exception as e:  # one broken benchmark must not hide the others' numbers
        traceback.print_exc()
        outcome = Outcome(name, title)
        outcome.skip(f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    outcome.seconds = time.monotonic() - t0
    outcome.load_before, outcome.load_after = before, machine.load()
    return outcome


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    if args.list:
        for name, title in BENCHMARKS:
            print(f"{name:22} {title}")
        return 0
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = os.path.abspath(args.out or os.path.join(HERE, "results", stamp))
    os.makedirs(out_dir, exist_ok=True)
    osbrick_python = venv.ensure()
    blocklink_python = os.path.join(REPO, ".venv", "bin", "python")
    if not os.path.exists(blocklink_python):
        blocklink_python = sys.executable
    ctx = Context(blocklink_python=blocklink_python, osbrick_python=osbrick_python, results_dir=out_dir,
                  quick=args.quick)
    started = datetime.datetime.now()
    described = machine.describe(), machine.versions(osbrick_python)  # the tree as it was when the run began
    outcomes = []
    for name, title in BENCHMARKS:
        if (args.only and name not in args.only) or name in args.skip:
            o = Outcome(name, title)
            o.skip("left out of this run (--only/--skip)")
            outcomes.append(o)
            continue
        outcomes.append(run_one(name, title, ctx))
    finished = datetime.datetime.now()
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M:%S"),
        "finished": finished.strftime("%H:%M:%S"),
        "seconds": (finished - started).total_seconds(),
        "quick": args.quick,
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, REPO), "-m", "benchmarks",
                                                     *(argv if argv is not None else sys.argv[1:])]),
        "machine": described[0],
        "versions": described[1],
    }
    targets = goals.section(outcomes)
    report.write(out_dir, meta, outcomes, None, targets)
    chart = "ratios.png"
    p = subprocess.run([osbrick_python, "-m", "benchmarks.chart", os.path.join(out_dir, "results.json"),
                        os.path.join(out_dir, chart)], cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"chart not drawn: {p.stderr.strip()[-800:]}", file=sys.stderr)
        chart_ref = None
    else:
        chart_ref = chart
    path = report.write(out_dir, meta, outcomes, chart_ref, targets)
    print(report.results_table(outcomes))
    print("\n".join(targets[-1:]))
    for line in report.not_run_lines(outcomes):
        print(line)
    print(f"\nreport: {path}" + (f"\nchart:  {os.path.join(out_dir, chart)}" if chart_ref else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
