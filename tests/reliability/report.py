"""Print the figures of the last reliability run: ``python -m tests.reliability.report [results.json ...]``.

Without arguments it reads ``$BLOCKLINK_RELIABILITY_RESULTS`` or /tmp/blocklink-reliability/results.json
(what tests/reliability writes at the end of every pytest session). Several files (runs split in parts)
are added up. Exit status 1 when the figures show a leak, a secret exposure or a failed test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from typing import Any, Dict, List

from tests.reliability.results import results_path

COUNTERS = ("fuzz_cases", "faults", "cycles", "hostile_values", "secret_scans", "outcomes")


def merge(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {k: Counter() for k in COUNTERS}
    out.update(leaks_found=[], secret_exposures=[], cycle_ms={}, modes=set(), started=None, finished=None,
               wall=0.0)
    for r in runs:
        for k in COUNTERS:
            out[k].update(r.get(k, {}))
        out["leaks_found"] += r.get("leaks_found", [])
        out["secret_exposures"] += r.get("secret_exposures", [])
        for p, ms in r.get("cycle_ms", {}).items():
            out["cycle_ms"].setdefault(p, []).extend(ms)
        out["modes"].add(r.get("mode", "?"))
        out["started"] = min(filter(None, [out["started"], r.get("started")]), default=None)
        out["finished"] = max(filter(None, [out["finished"], r.get("finished")]), default=None)
        out["wall"] += r.get("durations", {}).get("wall", 0.0)
    return out


def _table(title: str, counts: Counter, unit: str) -> List[str]:
    lines = [f"{title}: {sum(counts.values())} {unit}" if unit else f"{title}:"]
    width = max((len(k) for k in counts), default=0)
    lines += [f"  {k:<{width}}  {v:>8}" for k, v in sorted(counts.items())]
    return lines


def render(m: Dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(m["finished"])) if m["finished"] else "?"
    o = m["outcomes"]
    lines = [f"blocklink reliability report - mode {'/'.join(sorted(m['modes']))}, finished {when}, "
             f"wall {m['wall']:.0f} s",
             f"tests: {o.get('passed', 0)} passed, {o.get('failed', 0)} failed, {o.get('skipped', 0)} skipped", ""]
    lines += _table("cases fuzzed", m["fuzz_cases"], "cases") + [""]
    lines += _table("hostile values tried", m["hostile_values"], "cases") + [""]
    lines += _table("faults injected", m["faults"], "faults") + [""]
    lines.append(f"cycles run: {sum(m['cycles'].values())} cycles")
    width = max((len(k) for k in m["cycles"]), default=0)
    for p, n in sorted(m["cycles"].items()):
        ms = sorted(m["cycle_ms"].get(p, []))
        stats = (f"  median {statistics.median(ms):7.0f} ms  p95 {ms[int(0.95 * (len(ms) - 1))]:7.0f} ms"
                 if ms else "")
        lines.append(f"  {p:<{width}}  {n:>8}{stats}")
    lines.append("")
    lines += _table("secret-hygiene observations", m["secret_scans"], "") + [""]
    lines.append(f"leaks found: {len(m['leaks_found'])}")
    lines += [f"  {x['where']}: {json.dumps(x['leaks'])[:300]}" for x in m["leaks_found"]]
    lines.append(f"secret exposures found: {len(m['secret_exposures'])}")
    lines += [f"  {x['where']}: {x['detail']}" for x in m["secret_exposures"]]
    return "\n".join(lines)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", help=f"results JSON files (default: {results_path()})")
    args = ap.parse_args(argv)
    runs = []
    for path in args.results or [results_path()]:
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"cannot read {path}: {e}", file=sys.stderr)
            return 2
    m = merge(runs)
    print(render(m))
    bad = m["leaks_found"] or m["secret_exposures"] or m["outcomes"].get("failed", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
