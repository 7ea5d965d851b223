"""Attachment records on SQLite: conditional transitions, the concurrent-attach race, stuck records."""

import os
import subprocess

import pytest

from blocklink.attach.records import AttachmentStore, StaleRecord, VolumeBusy, mask_connection_info
from tests.harness import children


@pytest.fixture
def store(tmp_path):
    s = AttachmentStore(str(tmp_path / "att.db"))
    yield s
    s.close()


def test_lifecycle_and_masking(store):
    a = store.reserve("vol-1", "inst-1")
    assert a.status == "attaching" and a.owner_pid == os.getpid()
    info = {"driver_volume_type": "iscsi", "data": {"target_iqn": "iqn.x:y", "auth_password": "chap-secret-123",
                                                     "discovery_auth_password": "disc-secret-456"}}
    a = store.record_step(a.id, "initialize_connection", connection_info=info, protocol="iscsi")
    a = store.record_step(a.id, "connect_volume", host_device="/dev/sdb")
    assert a.steps == ("initialize_connection", "connect_volume")
    assert a.connection_info["data"]["auth_password"] == "***"
    assert "chap-secret-123" not in open(store.url[len("sqlite:///"):], "rb").read().decode(errors="replace")
    a = store.transition(a.id, ["attaching"], "attached", device_name="vdb")
    assert a.status == "attached" and a.device_name == "vdb"
    with pytest.raises(StaleRecord):
        store.transition(a.id, ["attaching"], "attached")
    store.transition(a.id, ["attached"], "detaching")
    store.transition(a.id, ["detaching"], "detached")
    # detached frees the volume for the next exclusive attach
    assert store.reserve("vol-1", "inst-2").status == "attaching"


def test_exclusive_volume_cannot_be_reserved_twice(store):
    store.reserve("vol-2", "inst-1")
    with pytest.raises(VolumeBusy) as ei:
        store.reserve("vol-2", "inst-2")
    assert "inst-1" in str(ei.value)
    with pytest.raises(VolumeBusy):
        store.reserve("vol-2", "inst-3", multiattach=True)


def test_multiattach_volume_admits_several(store):
    store.reserve("vol-3", "inst-1", multiattach=True)
    store.reserve("vol-3", "inst-2", multiattach=True)
    with pytest.raises(VolumeBusy):
        store.reserve("vol-3", "inst-3", multiattach=False)
    assert len(store.list(volume_id="vol-3")) == 2


def _race(job):
    path, instance, go = job
    s = AttachmentStore(path)
    go.wait(60)  # every child has its store open: they reserve together
    try:
        s.reserve("vol-race", instance)
        return ("won", instance)
    except VolumeBusy:
        return ("lost", instance)
    finally:
        s.close()


def test_concurrent_attach_race_has_one_winner(tmp_path):
    path = str(tmp_path / "race.db")
    AttachmentStore(path).close()
    go = children.CTX.Barrier(8)
    results = children.map_processes(_race, [(path, f"inst-{i}", go) for i in range(8)], timeout=120)
    assert [r[0] for r in results].count("won") == 1, results
    assert all(r[0] in ("won", "lost") for r in results), results


def test_stuck_records_of_dead_owner(store):
    a = store.reserve("vol-4", "inst-1")
    assert list(store.stuck()) == []
    p = subprocess.Popen(["true"])
    p.wait()
    store._update(a.id, ["attaching"], owner_pid=p.pid)  # as if a process that died had reserved it
    assert [s.id for s in store.stuck()] == [a.id]
    claimed = store.claim(a.id, ["attaching"], "detaching")
    assert claimed.owner_pid == os.getpid() and list(store.stuck()) == []


def test_mask_connection_info_nested():
    d = mask_connection_info({"data": {"keyring": "[client.a]\nkey=X", "hosts": ["a"], "auth_password": None}})
    assert d == {"data": {"keyring": "***", "hosts": ["a"], "auth_password": None}}
