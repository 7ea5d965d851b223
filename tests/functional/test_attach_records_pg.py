"""The attachment store on a real PostgreSQL server: same guarantees as SQLite for a fleet of hosts."""

import multiprocessing

import pytest

from blocklink.attach.records import AttachmentStore, VolumeBusy
from blocklink.testing.postgres import PostgresServer


@pytest.fixture(scope="module")
def pg():
    srv = PostgresServer.start()
    yield srv
    srv.stop()


def _race(url, instance, q):
    s = AttachmentStore(url)
    try:
        s.reserve("vol-pg-race", instance)
        q.put("won")
    except VolumeBusy:
        q.put("lost")
    except Exception as e:
        q.put(repr(e))
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
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(pg.url, f"i{i}", q)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = sorted(q.get(timeout=5) for _ in procs)
    assert results == ["lost"] * 7 + ["won"], results
