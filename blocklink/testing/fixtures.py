"""pytest fixtures over real throwaway services, for blocklink's tests and for its users' tests.

Use in a consumer project's ``conftest.py``::

    pytest_plugins = ["blocklink.testing.fixtures"]

    def test_attach(ceph_cluster):            # session-scoped, real mon + osd on 127.0.0.1 (also: tgt_daemon, tgtd)
        target = ceph_cluster.rbd_target()
        target.create_volume("vol1", 64 << 20)
        info = target.initialize_connection("vol1")
        ...

A component that cannot start is an error (the test fails), never a skip: set
``BLOCKLINK_ALLOW_SKIP=1`` to turn a missing component into a skip on a developer machine.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Iterator

import pytest

from blocklink.testing.ceph import CephCluster


def _missing(what: str) -> None:
    msg = f"{what} is not available on this machine (run scripts/bootstrap)"
    if os.environ.get("BLOCKLINK_ALLOW_SKIP") == "1":
        pytest.skip(msg)
    pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[CephCluster]:
    """A real single-node Ceph cluster (cephx on, pool ``volumes``), shared by the session."""
    for tool in ("ceph-mon", "ceph-osd", "ceph", "rbd"):
        if shutil.which(tool) is None:
            _missing(tool)
    cluster = CephCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _tgtd() -> Iterator[Any]:
    if shutil.which("tgtd") is None:
        _missing("tgtd")
    from blocklink.testing.tgt import TgtDaemon

    with TgtDaemon.start() as d:
        yield d


@pytest.fixture
def tgt_daemon() -> Iterator[Any]:
    """A real tgtd (userspace iSCSI target) on 127.0.0.1 and a free port; stopped (by PID) after the test.

    ``tgt_daemon.target(backing_dir=...)`` gives a :class:`blocklink.target.tgt.TgtTarget` on it.
    """
    yield from _tgtd()


@pytest.fixture(scope="module")
def tgtd() -> Iterator[Any]:
    """Like ``tgt_daemon``, but one daemon for all the tests of a module (each uses its own volume ids)."""
    yield from _tgtd()


@pytest.fixture
def rbd_volume(ceph_cluster: CephCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh 64 MiB image ``volume-<id>`` in the cluster's pool; removed after the test."""
    import uuid

    vid = f"t{uuid.uuid4().hex[:12]}"
    target = ceph_cluster.rbd_target()
    target.create_volume(vid, 64 << 20)
    try:
        yield vid
    finally:
        target.delete_volume(vid)
        target.close()
