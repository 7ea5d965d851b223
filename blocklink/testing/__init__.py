"""Test helpers for projects that use blocklink (and for blocklink's own tests).

Throwaway real services, each stopped by PID:

- :class:`CephCluster` (:mod:`blocklink.testing.ceph`): mon + osd, cephx, 127.0.0.1 only;
- :class:`TgtDaemon` (:mod:`blocklink.testing.tgt`): tgtd on a private control port, optionally in a
  network namespace (:mod:`blocklink.testing.netns`);
- :class:`LibvirtDaemon` (:mod:`blocklink.testing.libvirtd`): a private libvirtd with the QEMU driver;
- :class:`PostgresServer` (:mod:`blocklink.testing.postgres`): a private PostgreSQL cluster.

Fakes for unit tests: :class:`FakeExecutor` (:mod:`blocklink.testing.fakes`, recorded command
outputs) and :class:`FakeHostTree` (:mod:`blocklink.testing.hosttree`, a fake /sys + /dev + /etc tree).

pytest fixtures over the services: ``pytest_plugins = ["blocklink.testing.fixtures",
"blocklink.testing.libvirt_fixtures"]``.

The names above load on first use (PEP 562), so ``import blocklink.testing`` imports neither
pytest nor rados, libvirt or any other binding. The real-kernel qemu guest harness is not part of
the package: it lives in the source tree under ``tests/harness/guest``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    from blocklink.testing.ceph import CephCluster
    from blocklink.testing.fakes import FakeExecutor
    from blocklink.testing.hosttree import FakeHostTree
    from blocklink.testing.libvirtd import LibvirtDaemon
    from blocklink.testing.postgres import PostgresServer
    from blocklink.testing.tgt import TgtDaemon

# public name -> the module that defines it
_EXPORTS: Dict[str, str] = {
    "CephCluster": "blocklink.testing.ceph",
    "TgtDaemon": "blocklink.testing.tgt",
    "LibvirtDaemon": "blocklink.testing.libvirtd",
    "PostgresServer": "blocklink.testing.postgres",
    "FakeExecutor": "blocklink.testing.fakes",
    "FakeHostTree": "blocklink.testing.hosttree",
}

__all__ = ["CephCluster", "FakeExecutor", "FakeHostTree", "LibvirtDaemon", "PostgresServer", "TgtDaemon"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
