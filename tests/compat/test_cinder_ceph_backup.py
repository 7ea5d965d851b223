"""Cinder's Ceph backup driver backs up an RBD volume through the connector's handle on the RBD fast
path (``rbd export-diff | rbd import-diff`` into the backup pool) and restores it into another volume.

The handle is what ``brick_get_connector('rbd', ...).connect_volume(data)['path']`` returns; the
driver takes the fast path only if it finds ``rbd_image``/``rbd_pool``/``rbd_user``/``rbd_conf`` on
it. Proof that it did: the base image in the backup pool carries the rbd-diff snapshot
``backup.<id>.snap.<time>``, and the source image its twin (a chunked copy makes neither).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Iterator

import pytest

from tests.compat.conftest import FACADE, REAL, plain

pytestmark = pytest.mark.ceph
MiB = 1 << 20
GiB = 1 << 30
BACKUP_POOL = "backups"


@pytest.fixture
def backup_pool(ceph_cluster: Any) -> Iterator[str]:
    """The backup pool; whatever a test left in it (images, their snapshots) is removed after."""
    import rbd

    if BACKUP_POOL not in ceph_cluster.pools():
        ceph_cluster.create_pool(BACKUP_POOL)
    yield BACKUP_POOL
    ioctx = ceph_cluster.admin().open_ioctx(BACKUP_POOL)
    try:
        for name in rbd.RBD().list(ioctx):
            with rbd.Image(ioctx, name) as img:
                for snap in list(img.list_snaps()):
                    img.remove_snap(snap["name"])
            rbd.RBD().remove(ioctx, name)
    finally:
        ioctx.close()


@pytest.fixture
def volumes(ceph_cluster: Any) -> Iterator[Any]:
    """Two 1 GiB volumes (source, restore target: Cinder sizes are GiB) named as Cinder names them; removed after."""
    target = ceph_cluster.rbd_target()
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    for vid in ids:
        target.create_volume(vid, GiB)
    try:
        yield ids
    finally:
        for vid in ids:
            for snap in _snaps(ceph_cluster, f"volume-{vid}"):
                _admin_image(ceph_cluster, ceph_cluster.pool, f"volume-{vid}", lambda img, s=snap: img.remove_snap(s))
            target.delete_volume(vid)
        target.close()


def _admin_image(cluster: Any, pool: str, name: str, fn: Any) -> Any:
    import rbd

    ioctx = cluster.admin().open_ioctx(pool)
    try:
        with rbd.Image(ioctx, name) as img:
            return fn(img)
    finally:
        ioctx.close()


def _snaps(cluster: Any, name: str, pool: str = "") -> list:
    return [s["name"] for s in _admin_image(cluster, pool or cluster.pool, name, lambda img: list(img.list_snaps()))]


def _write(cluster: Any, name: str, offset: int, data: bytes) -> None:
    _admin_image(cluster, cluster.pool, name, lambda img: img.write(data, offset))


def _read(cluster: Any, pool: str, name: str, offset: int, length: int) -> bytes:
    return bytes(_admin_image(cluster, pool, name, lambda img: img.read(offset, length)))


@pytest.mark.parametrize("facade", [True, False], ids=["facade", "os-brick"])
def test_ceph_backup_takes_the_rbd_fast_path_and_restores(scenario: Any, facade: bool, ceph_cluster: Any,
                                                          backup_pool: str, volumes: Any, tmp_path: Any) -> None:
    import rbd

    src, dst = volumes
    pattern = os.urandom(256 * 1024)
    _write(ceph_cluster, f"volume-{src}", 5 * MiB, pattern)
    _write(ceph_cluster, f"volume-{src}", GiB - 4096, b"tail" * 1024)
    # Cinder's RBD driver without a keyring on this host: cinderlib's form carries it in the info
    target = ceph_cluster.rbd_target(include_keyring=True)
    res = scenario("cinder_ceph_backup_restore", facade=facade, db=str(tmp_path / "cinder.sqlite"),
                   source_id=src, restore_id=dst,
                   source=plain(target.initialize_connection(src)), restore=plain(target.initialize_connection(dst)),
                   cinder={"backup_ceph_conf": ceph_cluster.conffile, "backup_ceph_user": "admin",
                           "backup_ceph_pool": backup_pool, "backup_ceph_chunk_size": 4 * MiB})
    target.close()
    assert res["library"] == (FACADE if facade else REAL)
    handle = res["handle"]
    assert handle["has_rbd_image"] and handle["rbd_pool"] == ceph_cluster.pool and handle["rbd_user"] == "admin"
    assert handle["type"].endswith("linuxrbd.RBDVolumeIOWrapper")
    assert handle["rbd_conf_exists"] and res["rbd_conf_left"] is False  # the private ceph.conf went at detach

    # the fast path: a diff-format base image whose snapshot names this backup, and the source's twin
    base = json.loads(res["backup_updates"]["service_metadata"])["base"]
    assert base == f"volume-{src}.backup.{res['backup_id']}" and res["container"] == backup_pool
    ioctx = ceph_cluster.admin().open_ioctx(backup_pool)
    try:
        assert base in rbd.RBD().list(ioctx)
    finally:
        ioctx.close()
    snaps = _snaps(ceph_cluster, base, backup_pool)
    assert len(snaps) == 1 and snaps[0].startswith(f"backup.{res['backup_id']}.snap.")
    assert _snaps(ceph_cluster, f"volume-{src}") == snaps  # kept on the source for the next incremental

    # restored, byte for byte where it was written, and zero elsewhere
    assert _read(ceph_cluster, ceph_cluster.pool, f"volume-{dst}", 5 * MiB, len(pattern)) == pattern
    assert _read(ceph_cluster, ceph_cluster.pool, f"volume-{dst}", GiB - 4096, 4096) == b"tail" * 1024
    assert _read(ceph_cluster, ceph_cluster.pool, f"volume-{dst}", 0, 4096) == b"\0" * 4096
