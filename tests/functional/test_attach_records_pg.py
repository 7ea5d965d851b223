"""The attachment store on a real PostgreSQL server: same guarantees as SQLite for a fleet of hosts."""

import pytest

from blocklink.attach.records import AttachmentStore, VolumeBusy
from blocklink.testing.postgres import PostgresServer
from tests.harness import children


@pytest.fixture(scope="module")
def pg():
    srv = PostgresServer.start()
    yield srv
    srv.stop()


def _race(job):
    url, instance, go = job
    s = AttachmentStore(url)
    try:
        go.wait(60)  # every child connected: they reserve together
        s.reserve("vol-pg-race", instance)
        return "won"
    except VolumeBusy:
        return "lost"
    finally:
        s.close()


def test_postgres_lifecycle_and_race(pg):
    store = AttachmentStore(pg.url)
    a = store.reserve("vol-pg", "inst-1")
    store.record_step(a.id, "initialize_connection", connection_info={"data": {"auth_password": "pg-secret-99"}})
    with pytest.raises(VolumeBusy):
        store.reserve("vol-pg", "inst-2")
    store.transition(a.id, ["attaching"], "attached")
    assert store.get(a.id).connection_info == {"data": {"auth_password": "***"}}
    store.close()
    go = children.CTX.Barrier(8)
    results = sorted(children.map_processes(_race, [(pg.url, f"i{i}", go) for i in range(8)], timeout=120))
    assert results == ["lost"] * 7 + ["won"], results
