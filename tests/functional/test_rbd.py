"""RBD end to end on a real throwaway Ceph cluster (cephx, 127.0.0.1): handle I/O, extend, auth, errors."""

import io
import logging
import os
import subprocess

import pytest

import blocklink
from blocklink.errors import AuthenticationFailed, VolumeNotFound
from blocklink.hostpaths import HostPaths

MiB = 1 << 20


def _info(ceph_cluster, vid, **kw):
    return ceph_cluster.rbd_target(**kw).initialize_connection(vid, blocklink.get_connector_properties(ip="127.0.0.1"))


def test_handle_round_trip_4mib_and_no_watchers_after(ceph_cluster, rbd_volume):
    info = _info(ceph_cluster, rbd_volume, include_keyring=True).to_dict()
    conn = blocklink.connector_for("rbd")
    dev = conn.connect_volume(info)
    assert dev.type == "handle" and dev.path is None
    h = dev.handle
    assert len(ceph_cluster.watchers(f"volume-{rbd_volume}")) == 1
    data = os.urandom(4 * MiB)
    for offset in (0, 7 * MiB + 512, 60 * MiB):
        h.seek(offset)
        assert h.write(data) == len(data)
        h.flush()
        h.seek(offset)
        assert h.read(4 * MiB) == data
        assert h.tell() == offset + 4 * MiB
    conn.disconnect_volume(info, dev)
    assert ceph_cluster.watchers(f"volume-{rbd_volume}") == []
    # the bytes really are in the cluster: read back through the admin CLI export
    out = os.path.join(ceph_cluster.directory, "export.raw")
    ceph_cluster.export_image(f"volume-{rbd_volume}", out)
    with open(out, "rb") as f:
        f.seek(60 * MiB)
        assert f.read(4 * MiB) == data
    os.unlink(out)


def test_extend(ceph_cluster, rbd_volume):
    target = ceph_cluster.rbd_target(include_keyring=True)
    info = target.initialize_connection(rbd_volume)
    conn = blocklink.connector_for("rbd")
    dev = conn.connect_volume(info)
    try:
        assert target.extend_volume(rbd_volume, 96 * MiB) == 96 * MiB
        assert conn.extend_volume(info) == 96 * MiB
        assert dev.handle.size() == 96 * MiB
        dev.handle.seek(95 * MiB)
        dev.handle.write(b"x" * MiB)  # the new space is writable through the open handle
    finally:
        conn.disconnect_volume(info, dev)
    assert ceph_cluster.image_size(f"volume-{rbd_volume}") == 96 * MiB


def test_restricted_user_profile_rbd_on_one_pool(ceph_cluster, rbd_volume, tmp_path):
    key = ceph_cluster.create_user("cinder-r", {"mon": "profile rbd", "osd": f"profile rbd pool={ceph_cluster.pool}"})
    target = ceph_cluster.rbd_target(client_user="cinder-r", client_key=key, include_keyring=True)
    info = target.initialize_connection(rbd_volume)
    assert info.auth_username == "cinder-r"
    conn = blocklink.connector_for("rbd")
    dev = conn.connect_volume(info)
    dev.handle.write(b"restricted")
    conn.disconnect_volume(info, dev)
    # the same user may not touch another pool
    if "otherpool" not in ceph_cluster.pools():
        ceph_cluster.create_pool("otherpool")
    ceph_cluster.create_image("foreign", 8 * MiB, pool="otherpool")
    other = info.replace(name="otherpool/foreign")
    with pytest.raises((AuthenticationFailed, VolumeNotFound)) as ei:
        conn.connect_volume(other)
    assert "otherpool" in str(ei.value)


def test_key_from_host_ceph_config(ceph_cluster, rbd_volume, tmp_path):
    """No keyring in the info: the host's /etc/ceph/ceph.client.<user>.keyring is used."""
    paths = HostPaths(etc=str(tmp_path / "etc"))
    os.makedirs(paths.etcpath("ceph"))
    with open(paths.etcpath("ceph", "ceph.client.admin.keyring"), "w") as f:
        f.write(f"[client.admin]\n\tkey = {ceph_cluster.admin_key()}\n")
    info = _info(ceph_cluster, rbd_volume)
    assert info.keyring is None
    conn = blocklink.connector_for("rbd", paths=paths)
    dev = conn.connect_volume(info)
    assert dev.handle.read(4) == dev.handle.read(0) + bytes(4)
    conn.disconnect_volume(info, dev)


@pytest.mark.parametrize("kind", ["well-formed", "malformed"])
def test_wrong_key_is_a_clear_error_and_secret_free(ceph_cluster, rbd_volume, caplog, kind):
    info = _info(ceph_cluster, rbd_volume, include_keyring=True)
    if kind == "well-formed":
        bad = subprocess.run(["ceph-authtool", "--gen-print-key"], capture_output=True, text=True,
                             check=True).stdout.strip()
    else:
        bad = "AQCbrokenbrokenbrokenbrokenbrokenbroke=="
    wrong = info.replace(keyring=blocklink.Secret(f"[client.admin]\n\tkey = {bad}\n"))
    conn = blocklink.connector_for("rbd", timeout=10)
    with caplog.at_level(logging.DEBUG, logger="blocklink"):
        with pytest.raises(AuthenticationFailed) as ei:
            conn.connect_volume(wrong)
    assert "client.admin" in str(ei.value) and "127.0.0.1" in str(ei.value)
    assert bad not in str(ei.value) and bad not in caplog.text
    assert ceph_cluster.admin_key() not in caplog.text


def test_missing_image_is_a_clear_error(ceph_cluster):
    info = _info(ceph_cluster, "does-not-exist", include_keyring=True)
    with pytest.raises(VolumeNotFound) as ei:
        blocklink.connector_for("rbd").connect_volume(info)
    assert "volume-does-not-exist" in str(ei.value)


def test_read_only_attach(ceph_cluster, rbd_volume):
    info = ceph_cluster.rbd_target(include_keyring=True).initialize_connection(rbd_volume, access_mode="ro")
    conn = blocklink.connector_for("rbd")
    dev = conn.connect_volume(info)
    try:
        assert not dev.handle.writable()
        with pytest.raises(io.UnsupportedOperation):
            dev.handle.write(b"nope")
        assert dev.handle.read(16) == bytes(16)
    finally:
        conn.disconnect_volume(info, dev)


def test_connection_info_matches_cinder_shape(ceph_cluster, rbd_volume):
    d = ceph_cluster.rbd_target(secret_uuid="5fe62cc7-0392-4a32-8466-081ce0ea970f").initialize_connection(
        rbd_volume).to_dict()
    assert d["driver_volume_type"] == "rbd"
    data = d["data"]
    assert set(data) == {"name", "hosts", "ports", "cluster_name", "auth_enabled", "auth_username", "secret_type",
                         "secret_uuid", "volume_id", "discard"}
    assert data["name"] == f"volumes/volume-{rbd_volume}" and data["hosts"] == ["127.0.0.1"]
    assert all(isinstance(p, str) and p.isdigit() for p in data["ports"])
    assert data["secret_type"] == "ceph" and data["discard"] is True and data["auth_enabled"] is True
