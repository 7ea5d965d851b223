"""Hook for benchmarks/userspace_throughput.py (written by the userspace-attach work, not here).

If that module exists and offers ``run(ctx) -> Outcome`` its rows join this report; otherwise the
report says why it did not run.
"""

from __future__ import annotations

import importlib
import importlib.util

from benchmarks.context import Context
from benchmarks.model import Outcome

TITLE = "userspace attach throughput"


def run(ctx: Context) -> Outcome:
    if importlib.util.find_spec("benchmarks.userspace_throughput") is None:
        out = Outcome("userspace", TITLE)
        out.skip("benchmarks/userspace_throughput.py is not present")
        return out
    mod = importlib.import_module("benchmarks.userspace_throughput")
    fn = getattr(mod, "run", None)
    if fn is None:
        out = Outcome("userspace", TITLE)
        out.skip("benchmarks/userspace_throughput.py has no run(ctx) -> Outcome entry point; run it on its own")
        return out
    result: Outcome = fn(ctx)
    return result
