"""Tests of the os-brick facade against the real Nova 34.0.0 and Cinder 29.0.0 (run under .venv-compat).

``scripts/test`` runs this folder with the compat virtualenv's interpreter (``scripts/compat-venv``
builds it). Nova and Cinder missing is a failure here (the imports below), never a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, Iterator

import pytest

import cinder  # noqa: F401  (the compat virtualenv is required: fail at collection without it)
import nova  # noqa: F401
from blocklink.masking import Secret

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plain(value: Any) -> Any:
    """A connection-info dict as Cinder sends it over RPC: JSON types only (secrets as strings)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=lambda v: v.reveal() if isinstance(v, Secret) else str(v)))


def run_scenario(name: str, timeout: float = 600, **args: Any) -> Dict[str, Any]:
    """Run ``tests.compat.scenarios.<name>`` in a fresh interpreter; its JSON result (failure: its stderr)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="compat-locks-") as locks:  # the service's lock_path
        p = subprocess.run([sys.executable, "-m", "tests.compat.scenarios", name],
                           input=json.dumps(dict(args, lock_path=locks)), capture_output=True, text=True, cwd=ROOT,
                           env=env, timeout=timeout)
    if p.returncode != 0:
        pytest.fail(f"scenario {name} failed (exit {p.returncode}):\n{p.stderr[-6000:]}", pytrace=False)
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


class ScenarioProcess:
    """One interpreter running several scenarios in turn (``scenarios serve``): in the slow TCG guest
    Nova's or Cinder's imports cost minutes, so a test pays them once. Results come back one JSON
    line per call; a failed call fails the test with the child's traceback."""

    def __init__(self, timeout: float = 900) -> None:
        self.timeout = timeout
        self.locks = tempfile.TemporaryDirectory(prefix="compat-locks-")
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.compat.scenarios", "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=ROOT, env=env)

    def __call__(self, name: str, **args: Any) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"name": name, "args": dict(args, lock_path=self.locks.name)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the child answers every request or exits
        reply = json.loads(line) if line.strip() else {"error": f"exited with {self.proc.wait(self.timeout)}"}
        if "error" in reply:
            self.stderr.seek(0)
            pytest.fail(f"scenario {name} failed: {reply['error']}\n{self.stderr.read()[-6000:]}", pytrace=False)
        return dict(reply["result"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # end of requests: the child exits
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        self.locks.cleanup()


@pytest.fixture
def scenario() -> Callable[..., Dict[str, Any]]:
    return run_scenario


@pytest.fixture
def service() -> Iterator[ScenarioProcess]:
    """Scenarios run one after another in one interpreter (as in one service process)."""
    proc = ScenarioProcess()
    try:
        yield proc
    finally:
        proc.close()


@pytest.fixture(scope="session")
def nova_service() -> Iterator[Callable[[bool], ScenarioProcess]]:
    """Nova's service interpreter per library (``nova_service(facade)``), shared by the session's Nova tests:
    under TCG each interpreter pays 1-2 min of imports, so the Nova tests pay them twice in all (as one
    nova-compute process serves many attachments). Cinder's options clash with Nova's: Cinder tests
    keep their own ``service``."""
    procs: Dict[bool, ScenarioProcess] = {}

    def get(facade: bool) -> ScenarioProcess:
        if facade not in procs:
            procs[facade] = ScenarioProcess()
        return procs[facade]

    try:
        yield get
    finally:
        for proc in procs.values():
            proc.close()


# both libraries: each test runs on the facade, and where it can run here on the real os-brick too
FACADE = "blocklink.compat.os_brick"
REAL = "os_brick"
