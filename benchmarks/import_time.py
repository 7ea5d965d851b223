"""Cold import of the connector API: fresh interpreters, time and modules loaded, plus -X importtime.

"Cold" means a new interpreter with nothing imported yet; compiled .pyc files and the page cache
are warm (one discarded warm-up round), which is the state of every service restart but the first
after an install. The statement is timed inside the interpreter (start-up itself, the same for
both, is excluded).
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from benchmarks import fresh
from benchmarks.context import Context, interleave
from benchmarks.model import BLOCKLINK, OSBRICK, Outcome

TITLE = "cold import"

# (case, blocklink statement, os-brick statement, what blocklink needs to have landed)
CASES: List[Tuple[str, str, str, Optional[str]]] = [
    ("bare import",
     "import blocklink",
     "import os_brick.initiator.connector",
     None),
    ("import + iSCSI connector",
     'import blocklink\nblocklink.connector_for("iscsi")',
     'from os_brick.initiator import connector\nconnector.InitiatorConnector.factory("ISCSI", "sudo")',
     "blocklink.initiator.iscsi"),
    ("import + RBD connector",
     'import blocklink\nblocklink.connector_for("rbd")',
     'from os_brick.initiator import connector\nconnector.InitiatorConnector.factory("RBD", "sudo")',
     "blocklink.initiator.rbd"),
]

_TIMED = """
n0 = len(sys.modules)
mark("start")
t0 = time.perf_counter()
{stmt}
t1 = time.perf_counter()
mark("end")
print(json.dumps({{"seconds": t1 - t0, "modules": len(sys.modules) - n0}}))
"""

_IMPORTTIME = """
sys.stderr.write("@@BENCH-START@@\\n")
sys.stderr.flush()
{stmt}
print("{{}}")
"""

_IT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def parse_importtime(stderr: str) -> Tuple[int, Dict[str, int], int]:
    """(total µs, self µs by top-level package, modules) of the imports after the start marker."""
    after = stderr.split("@@BENCH-START@@", 1)[-1]
    by_pkg: Dict[str, int] = defaultdict(int)
    total = 0
    count = 0
    for line in after.splitlines():
        m = _IT_LINE.match(line)
        if not m:
            continue
        self_us, name = int(m.group(1)), m.group(4)
        total += self_us
        count += 1
        by_pkg[name.split(".")[0]] += self_us
    return total, dict(by_pkg), count


def _available(module: Optional[str]) -> bool:
    if module is None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run(ctx: Context) -> Outcome:
    out = Outcome("import_time", TITLE)
    reps = ctx.reps(15, 3)
    python = {BLOCKLINK: ctx.blocklink_python, OSBRICK: ctx.osbrick_python}
    detail = ["`python -X importtime` of each statement (one run each; self time summed per top-level "
              "package, the 6 largest shown):", "",
              "| case | implementation | total | modules | largest packages (self time) |", "|---|---|---|---|---|"]
    spawn_lines = []
    for case, bl_stmt, ob_stmt, needs in CASES:
        if not _available(needs):
            out.skip(f"{needs} has not landed in blocklink yet (connector_for would raise UnknownProtocol)",
                     f"{TITLE}: {case}")
            continue
        stmt = {BLOCKLINK: bl_stmt, OSBRICK: ob_stmt}
        t = out.row(f"{case}: wall time", "ms", note=f"`{bl_stmt.replace(chr(10), '; ')}` vs "
                                                      f"`{ob_stmt.replace(chr(10), '; ')}`")
        mods = out.row(f"{case}: modules loaded", "count", chart=False)
        for r, impl in interleave(reps + 1, list(python)):
            res = fresh.run(python[impl], _TIMED.format(stmt=stmt[impl]))
            if r == 0:
                continue  # warm-up round (.pyc, page cache)
            t.add(impl, res["seconds"] * 1000)
            mods.add(impl, res["modules"])
        spawns = out.row(f"{case}: child processes", "count", chart=False)
        for impl in python:
            res = fresh.run(python[impl], _IMPORTTIME.format(stmt=stmt[impl]), args=["-X", "importtime"])
            total, by_pkg, count = parse_importtime(res["_stderr"])
            top = sorted(by_pkg.items(), key=lambda kv: -kv[1])[:6]
            detail.append(f"| {case} | {impl} | {total / 1000:.0f} ms | {count} | "
                          + ", ".join(f"{k} {v / 1000:.0f} ms" for k, v in top) + " |")
            if fresh.strace_available():
                with tempfile.TemporaryDirectory(prefix="blocklink-bench-strace.") as d:
                    log = os.path.join(d, "import.strace")
                    fresh.run(python[impl], _TIMED.format(stmt=stmt[impl]), strace_log=log)
                    with open(log) as f:
                        c = fresh.count_spawns(f.read(), "start", "end")
                spawns.add(impl, c.processes)
                spawn_lines.append(f"{case}, {impl}: {', '.join(c.programs) or 'none'}")
        if not fresh.strace_available():
            out.rows.remove(spawns)
    out.notes.append("\n".join(detail))
    if spawn_lines:
        out.notes.append("Programs executed while importing (strace): " + "; ".join(spawn_lines) + ".")
    out.notes.append(f"{reps} fresh interpreters per implementation and case (after one discarded warm-up "
                     "round), interleaved. os-brick runs in benchmarks/.venv-osbrick, blocklink in the project "
                     "venv; both are Debian's python3 with system site packages.")
    return out
