"""What ships: the wheel built from this checkout holds the runtime package and the small public testing
API, not the qemu guest harness, the FCoE fabric or the demo; installed alone into an empty virtualenv
(no dependencies, no system site packages, no network) it imports, and ``blocklink.testing`` resolves
every public name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOT_SHIPPED = ("guest", "qemu", "initramfs", "demo", "fcoe", "leaks", "examples", "tests/", "benchmarks")
PUBLIC_TESTING = ("__init__", "fixtures", "libvirt_fixtures", "ceph", "tgt", "libvirtd", "postgres", "netns", "procs",
                  "fakes", "hosttree")
IMPORT_CHECK = """
import json, sys
import blocklink, blocklink.testing
from blocklink.testing import CephCluster, FakeExecutor, FakeHostTree, LibvirtDaemon, PostgresServer, TgtDaemon
missing = []
for fixtures in ("blocklink.testing.fixtures", "blocklink.testing.libvirt_fixtures"):
    try:
        __import__(fixtures)
    except ModuleNotFoundError as e:  # pytest plugins need pytest, which an empty venv lacks
        missing.append(e.name)
print(json.dumps({"file": blocklink.__file__, "missing": missing,
                  "names": [c.__module__ + "." + c.__name__ for c in (CephCluster, FakeExecutor, FakeHostTree,
                                                                   LibvirtDaemon, PostgresServer, TgtDaemon)]}))
"""


def _run(argv, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # not this checkout
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, **kw)
    assert p.returncode == 0 or not check, f"{argv}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(the wheel, an empty tmp dir): built from a copy of the checkout, so no build/ or egg-info lands in it."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(TOP, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
        ".pytest_cache", "results"))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", str(dist), str(src)], cwd=str(tmp))
    wheels = sorted(dist.glob("blocklink-*.whl"))
    assert len(wheels) == 1, wheels
    try:
        yield wheels[0], tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_wheel_holds_the_runtime_and_the_public_testing_api_only(built) -> None:
    wheel, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if ".dist-info/" not in n]
    assert code and all(n.startswith("blocklink/") for n in code), [n for n in code if not n.startswith("blocklink/")]
    assert [n for n in code if any(bad in n for bad in NOT_SHIPPED)] == []
    testing = {n[len("blocklink/testing/"):-3] for n in code if n.startswith("blocklink/testing/") and n.endswith(".py")}
    assert set(PUBLIC_TESTING) <= testing, set(PUBLIC_TESTING) - testing
    assert "blocklink/py.typed" in names and "blocklink/cli.py" in code and "blocklink/connection.py" in code


def test_the_wheel_alone_imports_in_an_empty_virtualenv(built) -> None:
    wheel, tmp = built
    venv = tmp / "venv"
    _run(["/usr/bin/python3", "-m", "venv", str(venv)], cwd=str(tmp))  # no system site packages: no rados, pytest
    py = str(venv / "bin" / "python")
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q", str(wheel)],
         cwd=str(tmp))
    out = json.loads(_run([py, "-I", "-c", IMPORT_CHECK], cwd=str(tmp)).stdout)
    assert out["file"].startswith(str(venv) + os.sep)  # the installed copy, not this checkout
    assert out["names"] == ["blocklink.testing.ceph.CephCluster", "blocklink.testing.fakes.FakeExecutor",
                            "blocklink.testing.hosttree.FakeHostTree", "blocklink.testing.libvirtd.LibvirtDaemon",
                            "blocklink.testing.postgres.PostgresServer", "blocklink.testing.tgt.TgtDaemon"]
    assert out["missing"] == ["pytest", "pytest"]  # nothing else: the fixtures' own imports are all shipped
    cli = str(venv / "bin" / "blocklink")
    assert "connector-properties" in _run([cli, "--help"], cwd=str(tmp)).stdout
    demo = _run([cli, "demo"], check=False, cwd=str(tmp))
    assert demo.returncode == 2 and "./scripts/demo" in demo.stderr  # the demo stays in the checkout
