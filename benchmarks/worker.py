"""A long-lived benchmark worker: one interpreter per implementation, driven over stdin/stdout.

The runner sends one JSON request per line, ``{"call": "module:function", "kwargs": {...}}``, and
reads one JSON reply per line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
Keeping the workers alive lets the runner interleave implementations repetition by repetition on
the same volume, while each one runs in its own venv (os-brick's or blocklink's). Secrets (cephx
keys in connection info) travel on this pipe, never on a command line. Runs until stdin closes.

Run as ``python -m benchmarks.worker`` with the repository as the working directory; imports
nothing from blocklink or os-brick itself (the called functions do).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback
from typing import IO, Any, Dict, Optional


def serve(inp: IO[str], out: IO[str]) -> None:
    for line in inp:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            mod, _, fn = req["call"].partition(":")
            result = getattr(importlib.import_module(mod), fn)(**req.get("kwargs", {}))
            reply: Dict[str, Any] = {"ok": True, "result": result}
        except Exception as e:  # the runner decides what a failure means
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class WorkerError(RuntimeError):
    pass


class Worker:
    """The runner's side: start ``python -m benchmarks.worker`` and call functions in it."""

    def __init__(self, python: str, name: str, log_path: str, cwd: str) -> None:
        self.name = name
        self._log = open(log_path, "ab")
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        self._p: Optional[subprocess.Popen] = subprocess.Popen(
            [python, "-m", "benchmarks.worker"], cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)

    def call(self, target: str, **kwargs: Any) -> Any:
        p = self._p
        if p is None or p.stdin is None or p.stdout is None:
            raise WorkerError(f"worker {self.name} is closed")
        p.stdin.write(json.dumps({"call": target, "kwargs": kwargs}) + "\n")
        p.stdin.flush()
        line = p.stdout.readline()
        if not line:
            raise WorkerError(f"worker {self.name} died (exit {p.wait()}); see {self._log.name}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise WorkerError(f"{self.name}: {target} failed: {reply['error']}\n{reply.get('trace', '')}")
        return reply["result"]

    def close(self, timeout: float = 30.0) -> None:
        p, self._p = self._p, None
        if p is not None:
            if p.stdin:
                p.stdin.close()
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()  # our own child, by its Popen handle
                p.wait()
            if p.stdout:
                p.stdout.close()
        self._log.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


if __name__ == "__main__":
    # replies go to the real stdout; anything a library prints goes to stderr (the log)
    reply_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, reply_out)
