"""Reliability and security suites: fuzzed input, hostile values, secret hygiene, injected faults, soak.

SHORT mode by default (a few hundred fuzz cases per target, ~10 soak cycles); ``BLOCKLINK_LONG=1``
for the long mode (10,000 cases per target, 200 cycles). Every run writes its figures to
``$BLOCKLINK_RELIABILITY_RESULTS`` (default /tmp/blocklink-reliability/results.json);
``python -m tests.reliability.report`` prints them.
"""

from __future__ import annotations

import time

import pytest

from tests.reliability.results import RESULTS

# the real-service fixtures (ceph_cluster, rbd_volume, libvirtd, ...) come from the root conftest's plugins

_T0 = time.monotonic()


def _ours(nodeid: str) -> bool:
    return nodeid.startswith("tests/reliability/") or "/tests/reliability/" in nodeid


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _ours(report.nodeid):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        RESULTS.outcomes[report.outcome] += 1
        module = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        RESULTS.durations[module] = round(RESULTS.durations.get(module, 0.0) + report.duration, 2)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not RESULTS.empty():
        RESULTS.durations["wall"] = round(time.monotonic() - _T0, 1)
        path = RESULTS.write()
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"reliability figures written to {path} (python -m tests.reliability.report)")


@pytest.fixture
def results():
    return RESULTS
