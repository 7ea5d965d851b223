"""doctor's fleet-wide identity check on a real PostgreSQL store: hosts (separate processes, each with
its own host tree) register their initiator identities; a cloned IQN or host NQN is critical on both."""

import pytest

from blocklink.attach.records import AttachmentStore
from blocklink.doctor import Doctor
from blocklink.testing.fakes import FakeExecutor
from blocklink.testing.hosttree import FakeHostTree
from blocklink.testing.postgres import PostgresServer
from tests.harness import children


@pytest.fixture(scope="module")
def pg():
    srv = PostgresServer.start()
    yield srv
    srv.stop()


def _host_doctor(job):
    url, root, host, iqn, nqn = job
    tree = FakeHostTree(root)
    tree.set_initiator_name(iqn)
    tree._write(tree.p("etc", "nvme", "hostnqn"), nqn + "\n")
    store = AttachmentStore(url)
    try:
        report = Doctor(executor=FakeExecutor(), paths=tree.paths, store=store, host=host,
                        protocols=("iscsi", "nvmeof")).run()
        return [(f.severity, sorted(k for k in f.detail if k != "hosts"), f.detail.get("hosts"))
                for f in report.by_check("identity_unique")]
    finally:
        store.close()


def run_host(pg, tmp_path, host, iqn, nqn):
    (findings,) = children.map_processes(_host_doctor, [(pg.url, str(tmp_path / host), host, iqn, nqn)], timeout=120)
    return findings


def test_a_cloned_iqn_and_hostnqn_are_critical_across_hosts(pg, tmp_path):
    nqn = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
    assert run_host(pg, tmp_path, "pg-h1", "iqn.1993-08.org.debian:01:h1", nqn) == [("ok", [], None)]
    assert run_host(pg, tmp_path, "pg-h2", "iqn.1993-08.org.debian:01:h2",
                    "nqn.2014-08.org.nvmexpress:uuid:other") == [("ok", [], None)]
    # a third host cloned from h1's image: same IQN and host NQN
    assert run_host(pg, tmp_path, "pg-h3", "iqn.1993-08.org.debian:01:h1", nqn) == [
        ("critical", ["iqn"], ["pg-h1"]), ("critical", ["hostnqn"], ["pg-h1"])]
    # h1's next doctor run sees the clone too
    assert run_host(pg, tmp_path, "pg-h1", "iqn.1993-08.org.debian:01:h1", nqn) == [
        ("critical", ["iqn"], ["pg-h3"]), ("critical", ["hostnqn"], ["pg-h3"])]
    hosts = {h.host: h for h in AttachmentStore(pg.url).hosts()}
    assert set(hosts) >= {"pg-h1", "pg-h2", "pg-h3"} and hosts["pg-h2"].iqn.endswith(":h2")
