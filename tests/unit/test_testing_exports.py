"""blocklink.testing's public names: importable as the README says, loaded only on first use."""

import json
import subprocess
import sys

import pytest

import blocklink.testing

HEAVY = ("rados", "rbd", "libvirt", "rtslib_fb", "pytest", "sqlalchemy", "psycopg")


def _loaded_after(statement: str) -> list:
    code = (f"import json, sys; {statement}; print(json.dumps(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {HEAVY!r} or m.startswith('blocklink.testing.'))))")
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)


def test_import_loads_no_helper_module_binding_or_pytest():
    assert _loaded_after("import blocklink.testing") == []
    assert _loaded_after("from blocklink.testing import FakeExecutor") == ["blocklink.testing.fakes"]


def test_every_public_name_resolves_to_its_module_class():
    from blocklink.testing import CephCluster, FakeExecutor, FakeHostTree, LibvirtDaemon, PostgresServer, TgtDaemon

    got = {c.__name__: c.__module__ for c in (CephCluster, FakeExecutor, FakeHostTree, LibvirtDaemon,
                                               PostgresServer, TgtDaemon)}
    assert got == {"CephCluster": "blocklink.testing.ceph", "FakeExecutor": "blocklink.testing.fakes",
                   "FakeHostTree": "blocklink.testing.hosttree", "LibvirtDaemon": "blocklink.testing.libvirtd",
                   "PostgresServer": "blocklink.testing.postgres", "TgtDaemon": "blocklink.testing.tgt"}
    assert sorted(blocklink.testing.__all__) == sorted(got)
    assert set(got) <= set(dir(blocklink.testing))


def test_the_guest_harness_is_not_public():
    with pytest.raises(ImportError):
        from blocklink.testing import Guest  # noqa: F401
    with pytest.raises(AttributeError, match="Guest"):
        blocklink.testing.Guest  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        __import__("blocklink.testing.guest")
