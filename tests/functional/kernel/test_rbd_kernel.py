"""RBDConnector local attach on the real kernel: ``rbd map`` (krbd) and rbd-nbd, against a Ceph in the guest."""

from __future__ import annotations

import os
import uuid

import pytest

import blocklink
from tests.harness.guest.blockio import block_size, direct_read, direct_write


pytestmark = pytest.mark.kernel

MiB = 1 << 20


@pytest.mark.parametrize("device_type", ["krbd", "nbd"])
def test_local_attach_write_extend_detach(ceph_cluster, modprobe, device_type: str) -> None:
    modprobe("rbd" if device_type == "krbd" else "nbd")
    target = ceph_cluster.rbd_target(include_keyring=True)  # the guest has no /etc/ceph
    vid = f"k{uuid.uuid4().hex[:10]}"
    name = target.create_volume(vid, 64 * MiB)
    try:
        info = target.initialize_connection(vid)
        conn = blocklink.connector_for("rbd", do_local_attach=True, device_type=device_type)
        dev = conn.connect_volume(info)
        try:
            prefix = "/dev/rbd" if device_type == "krbd" else "/dev/nbd"
            assert dev.path and dev.path.startswith(prefix), dev
            assert conn.get_volume_paths(info) == [dev.path]
            assert block_size(dev.path) == 64 * MiB
            assert ceph_cluster.watchers(name), "a mapped image has a watcher"

            data = os.urandom(2 * MiB)
            direct_write(dev.path, data, offset=MiB)
            assert direct_read(dev.path, len(data), offset=MiB) == data

            assert target.extend_volume(vid, 96 * MiB) == 96 * MiB
            assert conn.extend_volume(info) == 96 * MiB
            assert block_size(dev.path) == 96 * MiB
            direct_write(dev.path, data[:MiB], offset=95 * MiB)  # the new tail is usable
        finally:
            conn.disconnect_volume(info, dev)
        assert conn.get_volume_paths(info) == []
        assert ceph_cluster.watchers(name) == []

        exported = os.path.join("/tmp", f"{name}.raw")  # the data is in Ceph, not only in a page cache
        ceph_cluster.export_image(name, exported)
        try:
            with open(exported, "rb") as f:
                f.seek(MiB)
                assert f.read(len(data)) == data
                f.seek(95 * MiB)
                assert f.read(MiB) == data[:MiB]
        finally:
            os.unlink(exported)
    finally:
        target.delete_volume(vid)
        target.close()
