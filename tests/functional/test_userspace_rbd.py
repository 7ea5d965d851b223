"""Userspace RBD attach end to end on a real throwaway Ceph (cephx, 127.0.0.1): librbd in qemu-storage-daemon.

The host kernel has no rbd module; the file is served by qemu-storage-daemon (librbd) + nbdfuse.
Data written through the file is checked with ``rbd export``.
"""

import concurrent.futures
import mmap
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from blocklink.errors import AuthenticationFailed, VolumeNotFound
from blocklink.initiator.qsd import DaemonDied, DaemonLayout, mount_fstype, pid_alive
from blocklink.initiator.userspace import UserspaceRBDConnector

MiB = 1 << 20


@pytest.fixture
def run_dir():
    assert shutil.which("qemu-storage-daemon") and shutil.which("nbdfuse"), "qemu-storage-daemon/nbdfuse missing"
    d = tempfile.mkdtemp(prefix="bl-us.", dir="/run")
    yield d
    leftovers = [p for p in os.listdir(d) if p != "locks"]
    mounts = [ln for ln in open("/proc/self/mounts") if d in ln]
    for p in leftovers:  # even a failed test leaves no daemon or mount behind (stopped by PID)
        UserspaceRBDConnector(run_dir=d, timeout=5)._teardown(DaemonLayout(os.path.join(d, p)), p, hard=True)
    shutil.rmtree(d, ignore_errors=True)
    assert not leftovers and not mounts, f"attachment leftovers: {leftovers} {mounts}"


def _info(ceph_cluster, vid, **kw):
    return ceph_cluster.rbd_target(include_keyring=True).initialize_connection(vid, **kw).to_dict()


def _exported(ceph_cluster, image, offset, length):
    out = os.path.join(ceph_cluster.directory, f"export-{image}.raw")
    ceph_cluster.export_image(image, out)
    try:
        with open(out, "rb") as f:
            f.seek(offset)
            return f.read(length)
    finally:
        os.unlink(out)


def _pids(run_dir):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if run_dir.encode() in f.read() and pid_alive(int(p)):
                        out.append(int(p))
            except OSError:
                pass
    return out


def test_write_through_file_lands_in_the_image(ceph_cluster, rbd_volume, run_dir):
    image = f"volume-{rbd_volume}"
    info = _info(ceph_cluster, rbd_volume)
    conn = UserspaceRBDConnector(run_dir=run_dir)
    t0 = time.monotonic()
    dev = conn.connect_volume(info)
    attach_ms = (time.monotonic() - t0) * 1000
    run = dev.run_dir
    assert dev.type == "file" and os.stat(dev.path).st_size == 64 * MiB and mount_fstype(dev.path) == "fuse"
    assert "secret" not in os.listdir(run)
    key = ceph_cluster.admin_key()
    for pid in _pids(run_dir):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert key.encode() not in f.read()
    assert len(ceph_cluster.watchers(image)) == 1
    data = os.urandom(4 * MiB)
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    fd = os.open(dev.path, os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwritev(fd, [buf], 9 * MiB) == len(data)
    finally:
        os.close(fd)
    assert _exported(ceph_cluster, image, 9 * MiB, len(data)) == data
    with open(dev.path, "rb") as f:
        f.seek(9 * MiB)
        assert f.read(len(data)) == data
    t0 = time.monotonic()
    conn.disconnect_volume(info, dev)
    detach_ms = (time.monotonic() - t0) * 1000
    assert not os.path.exists(run) and _pids(run_dir) == [] and ceph_cluster.watchers(image) == []
    assert os.listdir(os.path.join(run_dir, "locks")) == []  # no lock file per volume ever attached
    conn.disconnect_volume(info, dev)  # twice is harmless
    print(f"rbd userspace attach {attach_ms:.0f} ms, detach {detach_ms:.0f} ms")


def test_wrong_key_and_missing_image_fail_typed_and_leave_nothing(ceph_cluster, rbd_volume, run_dir):
    info = _info(ceph_cluster, rbd_volume)
    bad_key = "AQBtHwdqAAAAABAAbadbadbadbadbadbadbadbadbQ=="
    bad = dict(info, data=dict(info["data"], keyring=f"[client.admin]\n\tkey = {bad_key}\n"))
    conn = UserspaceRBDConnector(run_dir=run_dir)
    with pytest.raises(AuthenticationFailed) as ei:
        conn.connect_volume(bad)
    assert bad_key not in str(ei.value)
    missing = dict(info, data=dict(info["data"], name=f"{ceph_cluster.pool}/no-such-image"))
    with pytest.raises(VolumeNotFound, match="image does not exist"):
        conn.connect_volume(missing)
    nopool = dict(info, data=dict(info["data"], name="no-such-pool/x"))
    with pytest.raises(VolumeNotFound, match="pool does not exist"):
        conn.connect_volume(nopool)
    assert os.listdir(run_dir) == ["locks"] and _pids(run_dir) == []


def test_read_only_and_extend(ceph_cluster, rbd_volume, run_dir):
    image = f"volume-{rbd_volume}"
    ro = _info(ceph_cluster, rbd_volume, access_mode="ro")
    conn = UserspaceRBDConnector(run_dir=run_dir)
    dev = conn.connect_volume(ro)
    try:
        assert dev.read_only is True
        with pytest.raises(OSError):
            os.close(os.open(dev.path, os.O_WRONLY))
    finally:
        conn.disconnect_volume(ro, dev)
    rw = _info(ceph_cluster, rbd_volume)
    dev = conn.connect_volume(rw)
    try:
        ceph_cluster.rbd_target().extend_volume(rbd_volume, 96 * MiB)
        assert conn.extend_volume(rw) == 96 * MiB
        assert conn.check_health(rw).size == 96 * MiB
        tail = os.urandom(MiB)
        with open(dev.path, "r+b", buffering=0) as f:  # nbdfuse re-reads the size on open
            f.seek(95 * MiB)
            f.write(tail)
        assert _exported(ceph_cluster, image, 95 * MiB, MiB) == tail
    finally:
        conn.disconnect_volume(rw, dev)


def test_dead_daemon_is_reported(ceph_cluster, rbd_volume, run_dir):
    info = _info(ceph_cluster, rbd_volume)
    conn = UserspaceRBDConnector(run_dir=run_dir)
    dev = conn.connect_volume(info)
    watchers = ceph_cluster.watchers(f"volume-{rbd_volume}")
    assert len(watchers) == 1
    os.kill(dev.pid, 9)
    deadline = time.monotonic() + 10
    while pid_alive(dev.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # bounded
    with pytest.raises(DaemonDied):
        conn.check_health(info)
    with pytest.raises(DaemonDied):
        conn.connect_volume(info)
    assert _pids(run_dir) == [] and mount_fstype(dev.path) is None
    # a killed librbd client keeps its watch until the OSD times it out (30 s): blocklist it, as an
    # operator would, so the fixture can delete the image now
    subprocess.run(["ceph", "-c", ceph_cluster.conffile, "--id", "admin", "osd", "blocklist", "add",
                    watchers[0]["address"]], check=True, capture_output=True)


def test_eight_images_concurrently(ceph_cluster, run_dir):
    target = ceph_cluster.rbd_target(include_keyring=True)
    vids = [f"c{i}-{os.getpid()}" for i in range(8)]
    for v in vids:
        target.create_volume(v, 32 * MiB)
    try:
        infos = [target.initialize_connection(v).to_dict() for v in vids]
        conn = UserspaceRBDConnector(run_dir=run_dir)
        payloads = [os.urandom(MiB) for _ in vids]
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            devs = list(pool.map(conn.connect_volume, infos))
        attach_s = time.monotonic() - t0
        try:
            assert len({d.path for d in devs}) == 8 and len(_pids(run_dir)) == 16

            def write(i):
                with open(devs[i].path, "r+b", buffering=0) as f:
                    f.seek(i * MiB)
                    f.write(payloads[i])
                    os.fsync(f.fileno())

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(write, range(8)))
        finally:
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda a: conn.disconnect_volume(*a), zip(infos, devs)))
            detach_s = time.monotonic() - t0
        for i, v in enumerate(vids):
            assert _exported(ceph_cluster, f"volume-{v}", i * MiB, MiB) == payloads[i]
        assert _pids(run_dir) == []
        print(f"8 concurrent RBD userspace attaches in {attach_s * 1000:.0f} ms, detaches in {detach_s * 1000:.0f} ms")
    finally:
        for v in vids:
            target.delete_volume(v)
        target.close()
