"""Run a benchmark task inside the real-kernel qemu guest (tests.harness.guest) and get its JSON.

The guest sees the host's / read-only over virtio-9p, so the project venv and
benchmarks/.venv-osbrick run there at the same paths. Tasks are in guest_tasks.py; each prints one
JSON object as its last stdout line. Everything measured inside the guest runs under qemu TCG
(no KVM here): absolute times are many times the host's, the blocklink/os-brick ratios are what
counts.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any, Dict, List, Optional

from benchmarks.context import REPO, Context


class GuestTaskFailed(RuntimeError):
    pass


def not_landed(*modules: "tuple[str, str]") -> Optional[str]:
    """Why a benchmark of blocklink code cannot run yet: the first (module, description) not importable."""
    for module, what in modules:
        try:
            if importlib.util.find_spec(module) is not None:
                continue
        except ModuleNotFoundError:
            pass
        return f"{what} has not landed yet"
    return None


def harness_missing() -> Optional[str]:
    """Why the guest cannot be used here, or None."""
    try:
        if importlib.util.find_spec("tests.harness.guest") is None:
            return "the guest harness (tests/harness/guest) has not landed"
    except ModuleNotFoundError:
        return "the guest harness (tests/harness/guest) has not landed"
    from tests.harness.guest import find_kernel

    try:
        find_kernel(None)
    except Exception as e:  # the harness's own words on what is missing
        return f"no guest kernel: {e}"
    return None


def run_task(ctx: Context, task: str, args: List[str], timeout: float) -> Dict[str, Any]:
    """Boot a guest, run ``python -m benchmarks.guest_tasks <task> <args>``, power off; return its JSON."""
    from tests.harness.guest import Guest, GuestError

    argv = [ctx.blocklink_python, "-m", "benchmarks.guest_tasks", task, "--osbrick-python", ctx.osbrick_python,
            *args]
    g = None
    for attempt in (1, 2):  # a boot that fails before the agent answers is retried once
        ctx.log(f"booting the guest for {task} ...")
        try:
            g = Guest.boot()
            break
        except (GuestError, OSError) as e:
            if attempt == 2:
                raise
            ctx.log(f"guest boot failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); retrying")
    assert g is not None
    with g:
        ctx.log(f"guest up in {g.stats.get('boot_seconds', 0):.0f} s; running {task}")
        res = g.run(argv, cwd=REPO, timeout=timeout)
    log = f"{ctx.scratch('guest')}/{task}.log"
    with open(log, "w") as f:
        f.write(f"exit {res.exit_code}, {res.duration:.1f} s\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}\n")
    if res.timed_out:
        raise GuestTaskFailed(f"{task} timed out after {timeout:.0f} s in the guest (log: {log})")
    if res.exit_code != 0:
        tail = res.stderr.strip().splitlines()[-1:] or ["?"]
        raise GuestTaskFailed(f"{task} failed in the guest (exit {res.exit_code}): {tail[0]} (log: {log})")
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if not lines:
        raise GuestTaskFailed(f"{task} printed nothing in the guest (log: {log})")
    result: Dict[str, Any] = json.loads(lines[-1])
    return result
