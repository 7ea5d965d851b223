"""LIO target side in the real-kernel guest: LioTarget vs rtslib-fb direct (see target_exports.py)."""

from __future__ import annotations

import importlib.util

from benchmarks.context import Context
from benchmarks.model import Outcome


def _landed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_lio(ctx: Context, out: Outcome) -> None:
    if not _landed("blocklink.target.lio"):
        out.skip("blocklink/target/lio.py (LioTarget) has not landed yet", "target side, LIO (guest)")
        return
    out.skip("the LIO benchmark is not written yet", "target side, LIO (guest)")
