"""get_connector_properties: wall time and child processes, blocklink vs os-brick on this host.

Each repetition is a fresh interpreter that imports the library (not timed here: see
import_time.py), then times the first call and the median of further calls in the same process.
Child processes are counted for real: one extra run per implementation under
``strace -f -z -e trace=execve,clone,clone3,fork,vfork``, bracketed by marker syscalls so only
the call itself is counted.

os-brick needs oslo.privsep for several of its properties (system UUID, NVMe host NQN). Two ways
a consumer running as root can set it up, both measured:

* ``privsep in-process``: ``set_client_mode(False)`` on ``os_brick.privileged.default`` and
  ``brick_privsep_hide_output``, so privileged functions run in the caller (as os-brick's own
  tests do). The cheapest possible os-brick.
* ``privsep daemon``: the deployed default, the first privileged call starts a privsep daemon;
  ``[privsep_osbrick] helper_command`` is set to the venv's ``privsep-helper`` (as root there is
  no sudo; a real deployment adds ``sudo`` and often ``nova-rootwrap``, which only costs more).
"""

from __future__ import annotations

import os
import tempfile
from typing import Dict

from benchmarks import fresh
from benchmarks.context import Context, interleave
from benchmarks.model import BLOCKLINK, OSBRICK, Outcome

TITLE = "get_connector_properties"

_SETUP = {
    BLOCKLINK: """
import blocklink
def call():
    return blocklink.get_connector_properties(ip="127.0.0.1")
def cleanup():
    pass
""",
    "osbrick-inproc": """
from os_brick.initiator import connector
from os_brick import privileged
for _ctx in (privileged.default, privileged.brick_privsep_hide_output):
    _ctx.set_client_mode(False)
def call():
    return connector.get_connector_properties("sudo", "127.0.0.1", False, False)
def cleanup():
    pass
""",
    "osbrick-daemon": """
from oslo_config import cfg
from os_brick.initiator import connector
from os_brick import privileged
cfg.CONF.set_override("helper_command", os.path.join(os.path.dirname(sys.executable), "privsep-helper"),
                      group="privsep_osbrick")
def call():
    return connector.get_connector_properties("sudo", "127.0.0.1", False, False)
def cleanup():
    for _ctx in (privileged.default, privileged.brick_privsep_hide_output):
        if _ctx.channel is not None:
            _ctx.stop()
""",
}

_BODY = """
N_LATER = {later}
mark("first-start")
t0 = time.perf_counter()
props = call()
t1 = time.perf_counter()
mark("first-end")
later = []
for i in range(N_LATER):
    if i == 0:
        mark("later-start")
    a = time.perf_counter()
    call()
    later.append(time.perf_counter() - a)
    if i == 0:
        mark("later-end")
cleanup()
later.sort()
print(json.dumps({{"first": t1 - t0, "later": later[len(later) // 2] if later else None, "keys": sorted(props)}}))
"""

VARIANTS = {
    "osbrick-inproc": "os-brick, privsep in-process",
    "osbrick-daemon": "os-brick, privsep daemon",
}


def _code(impl: str, later: int) -> str:
    return _SETUP[impl] + _BODY.format(later=later)


def run(ctx: Context) -> Outcome:
    out = Outcome("connector_properties", TITLE)
    reps = ctx.reps(15, 3)
    later = ctx.reps(5, 2)
    python = {BLOCKLINK: ctx.blocklink_python, "osbrick-inproc": ctx.osbrick_python,
              "osbrick-daemon": ctx.osbrick_python}
    first: Dict[str, list] = {k: [] for k in python}
    again: Dict[str, list] = {k: [] for k in python}
    keys: Dict[str, list] = {}
    for _, impl in interleave(reps + 1, list(python)):
        res = fresh.run(python[impl], _code(impl, later))
        first[impl].append(res["first"] * 1000)
        again[impl].append(res["later"] * 1000)
        keys[impl] = res["keys"]
    for impl in python:  # the first round warmed caches (.pyc, page cache): not counted
        first[impl] = first[impl][1:]
        again[impl] = again[impl][1:]

    for variant, label in VARIANTS.items():
        r = out.row(f"first call in a fresh process ({label})", "ms")
        r.samples[BLOCKLINK] = first[BLOCKLINK]
        r.samples[OSBRICK] = first[variant]
        r = out.row(f"later call, same process ({label})", "ms")
        r.samples[BLOCKLINK] = again[BLOCKLINK]
        r.samples[OSBRICK] = again[variant]

    if not fresh.strace_available():
        out.skip("strace is not installed", "child processes of get_connector_properties")
    else:
        spawned = {}
        with tempfile.TemporaryDirectory(prefix="blocklink-bench-strace.") as d:
            for impl in python:
                log = os.path.join(d, f"{impl}.strace")
                fresh.run(python[impl], _code(impl, 1), strace_log=log)
                with open(log) as f:
                    text = f.read()
                spawned[impl] = (fresh.count_spawns(text, "first-start", "first-end"),
                                 fresh.count_spawns(text, "later-start", "later-end"))
        for variant, label in VARIANTS.items():
            for i, when in enumerate(("first call", "later call")):
                r = out.row(f"child processes, {when} ({label})", "count", chart=False)
                r.samples[BLOCKLINK] = [spawned[BLOCKLINK][i].processes]
                r.samples[OSBRICK] = [spawned[variant][i].processes]
        lines = ["Programs executed during one call (successful `execve`, from strace; "
                 "the same run's process count is in the table):", "",
                 "| implementation | first call | later call |", "|---|---|---|"]
        for impl, label in ((BLOCKLINK, "blocklink"), *VARIANTS.items()):
            cells = []
            for c in spawned[impl]:
                cells.append(", ".join(c.programs) if c.programs else "none")
            lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
        out.notes.append("\n".join(lines))
    only_ob = sorted(set(keys.get("osbrick-inproc", [])) - set(keys.get(BLOCKLINK, [])))
    only_bl = sorted(set(keys.get(BLOCKLINK, [])) - set(keys.get("osbrick-inproc", [])))
    out.notes.append(
        f"Both return the same connector dict format; keys only os-brick returned here: {only_ob or 'none'}; "
        f"only blocklink: {only_bl or 'none'}. Both are given ip=127.0.0.1. {reps} fresh processes per "
        f"implementation (after one discarded warm-up round), interleaved; 'later call' is the median of "
        f"{later} further calls in each process. os-brick setup: " + ("privsep in-process = "
        "`set_client_mode(False)` on both os-brick privsep contexts; privsep daemon = "
        "`[privsep_osbrick] helper_command=<venv>/bin/privsep-helper` (root, so no sudo/rootwrap in front: "
        "cheaper than a real deployment)."))
    return out
