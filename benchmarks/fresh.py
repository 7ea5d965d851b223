"""Run a snippet in a fresh interpreter, optionally under strace, and read back its JSON result.

Snippets print one JSON object as their last stdout line. They may call ``mark(name)``, which
``chdir``s into ``$BENCH_MARK_DIR/<name>``: a syscall nothing else makes with that path, so in an
strace log it brackets exactly the code under test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

PRELUDE = """\
import json, os, sys, time
_MARK = os.environ.get("BENCH_MARK_DIR")
def mark(name):
    if _MARK:
        os.chdir(os.path.join(_MARK, name))
"""

MARKS = ("first-start", "first-end", "later-start", "later-end", "start", "end")


class SnippetFailed(RuntimeError):
    pass


def run(python: str, code: str, *, env: Optional[Mapping[str, str]] = None, timeout: float = 300.0,
        args: Sequence[str] = (), strace_log: Optional[str] = None, mark_dir: Optional[str] = None) -> Dict[str, Any]:
    """Run ``PRELUDE + code`` with ``python -c`` in a scratch directory; return its JSON result."""
    scratch = tempfile.mkdtemp(prefix="blocklink-bench.")
    try:
        marks = mark_dir or os.path.join(scratch, "marks")
        for m in MARKS:
            os.makedirs(os.path.join(marks, m), exist_ok=True)
        e = dict(os.environ) if env is None else dict(env)
        if env is None:
            e.pop("PYTHONPATH", None)  # both interpreters see only their own venv
        e["BENCH_MARK_DIR"] = marks
        argv = [python, *args, "-c", PRELUDE + code]
        if strace_log:
            argv = ["strace", "-f", "-z", "-qq", "-o", strace_log,
                    "-e", "trace=execve,clone,clone3,fork,vfork,chdir", *argv]
        p = subprocess.run(argv, cwd=scratch, env=e, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise SnippetFailed(f"{os.path.basename(python)} snippet exited {p.returncode}: {p.stderr.strip()[-1500:]}")
        lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
        if not lines:
            raise SnippetFailed(f"snippet printed nothing; stderr: {p.stderr.strip()[-1500:]}")
        result: Dict[str, Any] = json.loads(lines[-1])
        result["_stderr"] = p.stderr
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class SpawnCount:
    processes: int = 0  # clone/fork/vfork that made a new process (not a thread)
    threads: int = 0
    programs: List[str] = field(default_factory=list)  # successful execve, in order (basename)


_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)$")


def count_spawns(strace_text: str, start: str, end: str) -> SpawnCount:
    """Count what the traced process tree spawned between ``chdir(.../start)`` and ``chdir(.../end)``.

    Expects ``strace -f -z -o`` output (successful calls only, one line each, pid first). Lines
    outside the bracket (interpreter start-up, imports, exit) are ignored.
    """
    out = SpawnCount()
    inside = False
    for line in strace_text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        name, rest = m.group(2), m.group(3)
        if name == "chdir":
            path = rest.split('"')[1] if '"' in rest else ""
            if path.endswith("/" + start):
                inside = True
            elif path.endswith("/" + end):
                inside = False
            continue
        if not inside:
            continue
        if name in ("clone", "clone3"):
            if "CLONE_THREAD" in rest:
                out.threads += 1
            else:
                out.processes += 1
        elif name in ("fork", "vfork"):
            out.processes += 1
        elif name == "execve":
            prog = rest.split('"')[1] if '"' in rest else "?"
            out.programs.append(os.path.basename(prog))
    return out


def strace_available() -> bool:
    return shutil.which("strace") is not None
