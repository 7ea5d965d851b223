"""Userspace iSCSI attach end to end: tgtd on 127.0.0.1, qemu-storage-daemon + libiscsi, FUSE/NBD/vhost-user.

The host kernel has no iscsi_tcp: every byte here goes through libiscsi in qemu-storage-daemon.
Data written through the attached file is checked in tgtd's backing file.
"""

import concurrent.futures
import ctypes
import ctypes.util
import mmap
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid

import pytest

from blocklink.errors import (AuthenticationFailed, ConnectionFailed, DeviceBusy, InvalidConnectionInfo,
                              VolumeNotFound)
from blocklink.initiator.qsd import DaemonDied, DaemonLayout, mount_fstype, pid_alive
from blocklink.initiator.userspace import UserspaceISCSIConnector
from blocklink.testing.tgt import TgtDaemon

MiB = 1 << 20
HOST_IQN = "iqn.2024-01.test.blocklink:userspace-host"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Targets:
    """Volumes exported by one throwaway tgtd on 127.0.0.1 (TgtTarget: CHAP never on a command line)."""

    def __init__(self, tgt, backing_dir):
        self.tgt = tgt
        self.target = tgt.target(backing_dir=backing_dir)

    def volume(self, size=64 * MiB, chap=True, mutual=False):
        vid = uuid.uuid4().hex[:12]
        export = self.target.create_export(vid, size=size, chap=chap, mutual_chap=mutual)
        info = self.target.initialize_connection(vid, {"host": "userspace-test", "initiator": HOST_IQN})
        return info.to_dict(), export.device_path

    def grow(self, info, backing, size):
        """Grow the LUN under a live session: tgtd re-reads the size only for a re-created LU."""
        tid = next(t.tid for t in self.tgt.admin.show_targets() if t.iqn == info["data"]["target_iqn"])
        os.truncate(backing, size)
        self.tgt.admin.delete_lun(tid, 1)
        self.tgt.admin.new_lun(tid, 1, backing)

    def sessions(self):
        return sum(len(t.sessions) for t in self.tgt.admin.show_targets())


@pytest.fixture(scope="module")
def tgtd():
    for tool in ("tgtd", "qemu-storage-daemon", "nbdfuse"):
        assert shutil.which(tool), f"{tool} is not installed (scripts/bootstrap)"
    assert os.path.exists("/dev/fuse"), "no /dev/fuse on this host"
    d = tempfile.mkdtemp(prefix="blocklink-us-tgt.")
    tgt = TgtDaemon.start()
    try:
        yield Targets(tgt, d)
    finally:
        tgt.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def run_dir():
    d = tempfile.mkdtemp(prefix="bl-us.", dir="/run")
    yield d
    leftovers = [p for p in os.listdir(d) if p != "locks"]
    mounts = [ln for ln in open("/proc/self/mounts") if d in ln]
    for p in leftovers:  # even a failed test leaves no daemon or mount behind (stopped by PID)
        UserspaceISCSIConnector(run_dir=d, timeout=5)._teardown(DaemonLayout(os.path.join(d, p)), p, hard=True)
    shutil.rmtree(d, ignore_errors=True)
    assert not leftovers and not mounts, f"attachment leftovers: {leftovers} {mounts}"


def _conn(run_dir, **kw):
    kw.setdefault("initiator_name", HOST_IQN)
    return UserspaceISCSIConnector(run_dir=run_dir, timeout=20, **kw)


def _aligned(data):
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    return buf


def _daemon_pids(run_dir):
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


def test_fuse_write_lands_in_backing_file_and_detach_leaves_nothing(tgtd, run_dir):
    info, backing = tgtd.volume()
    conn = _conn(run_dir)
    t0 = time.monotonic()
    dev = conn.connect_volume(info)
    attach_ms = (time.monotonic() - t0) * 1000
    assert dev.type == "file" and os.path.isfile(dev.path) and os.stat(dev.path).st_size == 64 * MiB
    assert mount_fstype(dev.path) == "fuse"
    run = dev.run_dir
    assert oct(os.stat(run).st_mode & 0o777) == "0o700"
    assert "secret" not in os.listdir(run), "the CHAP secret file must be gone once the daemon is up"
    with open(f"/proc/{dev.pid}/cmdline", "rb") as f:
        assert info["data"]["auth_password"].encode() not in f.read()
    assert tgtd.sessions() == 1
    data = os.urandom(4 * MiB)
    fd = os.open(dev.path, os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwritev(fd, [_aligned(data)], 5 * MiB) == len(data)
        back = _aligned(b"\0" * len(data))
        assert os.preadv(fd, [back], 5 * MiB) == len(data) and bytes(back) == data
    finally:
        os.close(fd)
    with open(backing, "rb") as f:
        f.seek(5 * MiB)
        assert f.read(len(data)) == data
    # and the other way round: bytes put in the backing file are read through the file
    other = os.urandom(MiB)
    with open(backing, "r+b") as f:
        f.seek(20 * MiB)
        f.write(other)
    with open(dev.path, "rb") as f:
        f.seek(20 * MiB)
        assert f.read(MiB) == other
    # mmap writeback (several FUSE writes in flight at once) lands intact too
    mapped = os.urandom(4 * MiB)
    with open(dev.path, "r+b") as f, mmap.mmap(f.fileno(), 4 * MiB, offset=32 * MiB) as m:
        m[:] = mapped
        m.flush()
    with open(backing, "rb") as f:
        f.seek(32 * MiB)
        assert f.read(4 * MiB) == mapped
    assert conn.connect_volume(info).path == dev.path  # idempotent: same daemons
    assert len(_daemon_pids(run_dir)) == 2  # qemu-storage-daemon + nbdfuse
    assert conn.get_volume_paths(info) == [dev.path]
    t0 = time.monotonic()
    conn.disconnect_volume(info, dev)
    detach_ms = (time.monotonic() - t0) * 1000
    assert not os.path.exists(run) and mount_fstype(dev.path) is None and _daemon_pids(run_dir) == []
    assert tgtd.sessions() == 0
    conn.disconnect_volume(info, dev)  # twice is harmless
    assert conn.get_volume_paths(info) == []
    print(f"iscsi userspace attach {attach_ms:.0f} ms, detach {detach_ms:.0f} ms")


class _Iocb(ctypes.Structure):  # struct iocb (linux/aio_abi.h, little-endian 64-bit)
    _fields_ = [("data", ctypes.c_uint64), ("key", ctypes.c_uint32), ("rw_flags", ctypes.c_uint32),
                ("opcode", ctypes.c_int16), ("reqprio", ctypes.c_int16), ("fildes", ctypes.c_uint32),
                ("buf", ctypes.c_uint64), ("nbytes", ctypes.c_uint64), ("offset", ctypes.c_int64),
                ("reserved2", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("resfd", ctypes.c_uint32)]


class _IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


def _aio(fd, op, chunks):
    """Submit every (offset, page-aligned buffer) at once with libaio (opcode 1 = pwrite, 0 = pread) and
    wait for all of them: several direct requests in flight on the file together."""
    aio = ctypes.CDLL("libaio.so.1", use_errno=True)
    ctx = ctypes.c_ulong(0)
    assert aio.io_setup(len(chunks), ctypes.byref(ctx)) == 0
    try:
        iocbs = [_Iocb(data=i, opcode=op, fildes=fd, offset=off, nbytes=len(buf),
                       buf=ctypes.addressof(ctypes.c_char.from_buffer(buf)))
                 for i, (off, buf) in enumerate(chunks)]
        ptrs = (ctypes.POINTER(_Iocb) * len(iocbs))(*[ctypes.pointer(c) for c in iocbs])
        assert aio.io_submit(ctx, len(iocbs), ptrs) == len(iocbs)
        events = (_IoEvent * len(iocbs))()
        deadline = struct.pack("qq", 60, 0)  # a hung request fails the test instead of hanging it
        got = aio.io_getevents(ctx, len(iocbs), len(iocbs), events, ctypes.c_char_p(deadline))
        assert got == len(iocbs), f"{got} of {len(iocbs)} requests completed"
        return {int(e.data): int(e.res) for e in events}
    finally:
        aio.io_destroy(ctx)


def test_async_and_concurrent_direct_io_lands_intact(tgtd, run_dir):
    """Direct requests in flight together (libaio, and threads) each keep their own data."""
    info, backing = tgtd.volume()
    conn = _conn(run_dir)
    dev = conn.connect_volume(info)
    try:
        chunks = [(i * 3 * MiB, _aligned(os.urandom(MiB if i % 2 else 3 * MiB))) for i in range(8)]
        fd = os.open(dev.path, os.O_RDWR | os.O_DIRECT)
        try:
            assert _aio(fd, 1, chunks) == {i: len(b) for i, (_, b) in enumerate(chunks)}
            back = [(off, _aligned(b"\0" * len(b))) for off, b in chunks]
            assert _aio(fd, 0, back) == {i: len(b) for i, (_, b) in enumerate(back)}
            bad = [off for (off, b), (_, w) in zip(back, chunks) if bytes(b) != bytes(w)]
            assert not bad, f"async direct writes at {bad} read back different data"
            # and from threads: synchronous direct writes of 2 MiB racing each other
            racing = [(40 * MiB + i * 2 * MiB, _aligned(os.urandom(2 * MiB))) for i in range(6)]
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                assert list(pool.map(lambda c: os.pwritev(fd, [c[1]], c[0]), racing)) == [2 * MiB] * 6
        finally:
            os.close(fd)
        with open(backing, "rb") as f:
            for off, buf in chunks + racing:
                f.seek(off)
                assert f.read(len(buf)) == bytes(buf), f"data at {off} differs in the backing file"
    finally:
        conn.disconnect_volume(info, dev)


def test_wrong_initiator_and_wrong_chap_fail_typed_and_leave_nothing(tgtd, run_dir):
    info, _ = tgtd.volume()
    with pytest.raises(VolumeNotFound) as ei:
        _conn(run_dir, initiator_name="iqn.2024-01.test.blocklink:intruder").connect_volume(info)
    assert "ACL" in str(ei.value)
    bad = {"driver_volume_type": "iscsi", "data": dict(info["data"], auth_password="wrongpassword1")}
    with pytest.raises(AuthenticationFailed) as ei:
        _conn(run_dir).connect_volume(bad)
    assert "wrongpassword1" not in str(ei.value) and info["data"]["auth_password"] not in str(ei.value)
    nolun = {"driver_volume_type": "iscsi", "data": dict(info["data"], target_lun=7)}
    with pytest.raises(VolumeNotFound):
        _conn(run_dir).connect_volume(nolun)
    assert os.listdir(run_dir) == ["locks"] and _daemon_pids(run_dir) == []


def test_first_reachable_portal_is_used(tgtd, run_dir):
    info, _ = tgtd.volume()
    d = info["data"]
    dead = f"127.0.0.1:{_free_port()}"  # nothing listens there
    multi = {"driver_volume_type": "iscsi", "data": dict(
        d, target_portals=[dead, d["target_portal"]], target_iqns=[d["target_iqn"]] * 2, target_luns=[1, 1])}
    conn = _conn(run_dir, probe_timeout=1)
    dev = conn.connect_volume(multi)
    try:
        with open(os.path.join(dev.run_dir, "state.json")) as f:
            assert d["target_portal"] in f.read()
    finally:
        conn.disconnect_volume(multi, dev)
    only_dead = {"driver_volume_type": "iscsi", "data": dict(d, target_portal=dead)}
    with pytest.raises(ConnectionFailed, match="no portal is reachable"):
        conn.connect_volume(only_dead)


def test_read_only_attach(tgtd, run_dir):
    info, backing = tgtd.volume(chap=False)
    with open(backing, "r+b") as f:
        f.write(b"ro-check" * 512)
    ro = {"driver_volume_type": "iscsi", "data": dict(info["data"], access_mode="ro")}
    conn = _conn(run_dir)
    dev = conn.connect_volume(ro)
    try:
        assert dev.read_only is True
        with open(dev.path, "rb") as f:
            assert f.read(4096) == b"ro-check" * 512
        with pytest.raises(OSError):
            fd = os.open(dev.path, os.O_WRONLY)
            os.close(fd)
        with pytest.raises(DeviceBusy):  # the same volume read-write while attached read-only
            conn.connect_volume(info)
    finally:
        conn.disconnect_volume(ro, dev)


def test_mutual_chap_refused_unless_one_way_allowed(tgtd, run_dir):
    mutual, backing = tgtd.volume(mutual=True)
    secret_in = mutual["data"]["auth_password_in"]
    with pytest.raises(InvalidConnectionInfo) as ei:
        _conn(run_dir).connect_volume(mutual)
    assert ei.value.field == "data.auth_password_in" and secret_in not in str(ei.value)
    assert os.listdir(run_dir) in ([], ["locks"])
    conn = _conn(run_dir, allow_one_way_chap=True)
    dev = conn.connect_volume(mutual)
    try:
        with open(dev.path, "r+b", buffering=0) as f:
            f.write(b"one-way".ljust(512, b"\0"))  # the file takes block-aligned I/O, like a disk
        with open(backing, "rb") as f:
            assert f.read(7) == b"one-way"
    finally:
        conn.disconnect_volume(mutual, dev)


def test_dead_daemon_is_reported_and_cleaned(tgtd, run_dir):
    info, _ = tgtd.volume()
    conn = _conn(run_dir)
    dev = conn.connect_volume(info)
    pid = dev.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # bounded
    with pytest.raises(DaemonDied) as ei:
        conn.check_health(info)
    assert ei.value.pid == pid
    assert conn.get_volume_paths(info) == []
    assert mount_fstype(dev.path) == "fuse"  # the stale mount of the dead daemon is still there ...
    with pytest.raises(DaemonDied):
        conn.connect_volume(info)  # ... reported by connect, which also clears the leftovers
    assert mount_fstype(dev.path) is None and not os.path.exists(dev.run_dir)
    dev2 = conn.connect_volume(info)  # and a retry attaches afresh
    assert dev2.pid != pid
    conn.disconnect_volume(info, dev2)


def test_open_file_blocks_detach_unless_forced(tgtd, run_dir):
    info, _ = tgtd.volume()
    conn = _conn(run_dir)
    dev = conn.connect_volume(info)
    f = open(dev.path, "rb")
    try:
        with pytest.raises(DeviceBusy):
            conn.disconnect_volume(info, dev)
        assert conn.check_health(info).pid == dev.pid
        conn.disconnect_volume(info, dev, force=True)
    finally:
        f.close()
    assert not os.path.exists(dev.run_dir)


def test_nbd_export(tgtd, run_dir):
    info, backing = tgtd.volume()
    conn = _conn(run_dir, export="nbd")
    dev = conn.connect_volume(info)
    try:
        assert dev.export == "nbd" and os.path.exists(dev.path)
        pattern = os.path.join(run_dir, "pat.raw")
        with open(pattern, "wb") as f:
            f.write(os.urandom(2 * MiB))
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", pattern, dev.uri],
                       check=True, capture_output=True)
        with open(pattern, "rb") as a, open(backing, "rb") as b:
            assert a.read() == b.read(2 * MiB)
        os.unlink(pattern)
        # a connected NBD client makes a plain detach refuse
        client = subprocess.Popen(["qemu-io", "-f", "raw", dev.uri], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            client.stdin.write(b"read 0 512\n")
            client.stdin.flush()
            assert b"read 512/512" in client.stdout.readline()
            with pytest.raises(DeviceBusy):
                conn.disconnect_volume(info, dev)
        finally:
            client.stdin.close()
            client.wait(10)
    finally:
        conn.disconnect_volume(info, dev)
    assert not os.path.exists(dev.path)


def test_vhost_user_blk_export_answers_the_protocol(tgtd, run_dir):
    info, _ = tgtd.volume()
    conn = _conn(run_dir, export="vhost-user-blk")
    dev = conn.connect_volume(info)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(dev.path)
            s.sendall(struct.pack("<III", 1, 0x1, 0))  # VHOST_USER_GET_FEATURES, version 1
            req, flags, size = struct.unpack("<III", s.recv(12))
            features = struct.unpack("<Q", s.recv(size))[0]
        assert req == 1 and flags & 0x4 and features & (1 << 32)  # a reply; VIRTIO_F_VERSION_1
    finally:
        conn.disconnect_volume(info, dev)


def test_eight_volumes_concurrently(tgtd, run_dir):
    volumes = [tgtd.volume(size=32 * MiB) for _ in range(8)]
    infos = [v[0] for v in volumes]
    files = [v[1] for v in volumes]
    conn = _conn(run_dir)
    payloads = [os.urandom(MiB) for _ in infos]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        devs = list(pool.map(conn.connect_volume, infos))
    attach_s = time.monotonic() - t0
    try:
        assert len({d.path for d in devs}) == 8 and len(_daemon_pids(run_dir)) == 16

        def write(i):
            with open(devs[i].path, "r+b") as f:
                f.seek(i * MiB)
                f.write(payloads[i])
                f.flush()
                os.fsync(f.fileno())

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(8)))
        for i, path in enumerate(files):
            with open(path, "rb") as f:
                f.seek(i * MiB)
                assert f.read(MiB) == payloads[i], f"LUN {i + 1}"
    finally:
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda a: conn.disconnect_volume(*a), zip(infos, devs)))
        detach_s = time.monotonic() - t0
    assert _daemon_pids(run_dir) == [] and tgtd.sessions() == 0
    print(f"8 concurrent iSCSI userspace attaches in {attach_s * 1000:.0f} ms, detaches in {detach_s * 1000:.0f} ms")


def test_extend_shows_the_grown_lun(tgtd, run_dir):
    info, backing = tgtd.volume()
    conn = _conn(run_dir)
    dev = conn.connect_volume(info)
    try:
        tgtd.grow(info, backing, 80 * MiB)
        assert conn.extend_volume(info) == 80 * MiB
        assert os.stat(dev.path).st_size == 80 * MiB and conn.check_health(info).size == 80 * MiB
        tail = os.urandom(MiB)
        with open(dev.path, "r+b", buffering=0) as f:
            f.seek(79 * MiB)
            f.write(tail)
        with open(backing, "rb") as f:
            f.seek(79 * MiB)
            assert f.read(MiB) == tail
    finally:
        conn.disconnect_volume(info, dev)


def test_audit_reports_the_daemons_of_an_unrecorded_attach_and_clean_leaves_them(tgtd, run_dir, tmp_path):
    from blocklink.attach.records import AttachmentStore
    from blocklink.audit import AuditReport, Auditor

    info, _ = tgtd.volume()
    conn = _conn(run_dir)
    dev = conn.connect_volume(info)
    store = AttachmentStore(str(tmp_path / "a.db"))
    try:
        auditor = Auditor(store)

        def mine(objs):  # this machine is shared: only the daemons under this test's run directory
            return sorted((o.ids["program"], int(o.ids["pid"])) for o in objs
                          if o.kind == "userspace_daemon" and o.ids["run_dir"] == dev.run_dir)

        found = [o for o in auditor.audit().orphans if mine([o])]
        with open(DaemonLayout(dev.run_dir).bridge_pidfile) as f:
            bridge_pid = int(f.read())
        assert mine(found) == sorted((("qemu-storage-daemon", dev.pid), ("nbdfuse", bridge_pid)))
        cleaned = auditor.clean(AuditReport(orphans=found))  # never the rest of the host's orphans
        assert cleaned.removed == [] and len(cleaned.refused) == 2
        assert all("cannot be proven" in why for _, why in cleaned.refused)
        assert sorted(_daemon_pids(run_dir)) == sorted(p for _, p in mine(found))  # both still running
        rec = store.reserve("vol-us", "inst")
        store.record_step(rec.id, "connect", host_device=dev.path, protocol="iscsi", host=socket.gethostname())
        store.transition(rec.id, ["attaching"], "attached")
        report = auditor.audit()
        assert mine(report.orphans) == [] and len(mine(report.explained)) == 2
    finally:
        store.close()
        conn.disconnect_volume(info, dev)
    assert _daemon_pids(run_dir) == []
