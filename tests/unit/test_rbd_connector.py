"""RBD connector logic without a cluster: key resolution, mapping discovery, map/unmap, the handle."""

import errno
import io
import os
import stat
import threading

import pytest

from blocklink.connection import RbdInfo
from blocklink.errors import ConnectionFailed, DeviceMismatch, InvalidConnectionInfo, MissingCredentials, VolumeNotFound
from blocklink.hostpaths import HostPaths
from blocklink.initiator.rbd import RBDConnector, RbdHandle, RbdIOError
from blocklink.testing.fakes import FakeExecutor

INFO = {"name": "volumes/volume-1", "hosts": ["127.0.0.1", "::1"], "ports": ["6789", "3300"],
        "auth_enabled": True, "auth_username": "cinder", "cluster_name": "ceph"}


class FakeImage:
    def __init__(self, size):
        self.data = bytearray(size)
        self.flushed = 0
        self.closed = False

    def size(self):
        return len(self.data)

    def read(self, off, n):
        return bytes(self.data[off:off + n])

    def write(self, b, off):
        self.data[off:off + len(b)] = b
        return len(b)

    # librbd's aio_write: lands the data and calls back now, or when the test releases it (held)
    fail_errno = 0
    held = None

    def aio_write(self, b, off, oncomplete):
        def complete():
            if not self.fail_errno:
                self.data[off:off + len(b)] = b
            oncomplete(FakeCompletion(-self.fail_errno if self.fail_errno else 0))
        if self.held is not None:
            self.held.append(complete)
        else:
            complete()

    def flush(self):
        self.flushed += 1

    def close(self):
        self.closed = True


class FakeCompletion:
    def __init__(self, rc):
        self.rc = rc

    def get_return_value(self):
        return self.rc


class Closable:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True

    def shutdown(self):
        self.closed = True


def _handle(size=1 << 20, ro=False):
    img, ioctx, cluster = FakeImage(size), Closable(), Closable()
    return RbdHandle(cluster, ioctx, img, "volumes/volume-1", read_only=ro), img, ioctx, cluster


def test_handle_file_semantics():
    h, img, ioctx, cluster = _handle()
    assert h.seek(4096) == 4096
    assert h.write(b"abc") == 3 and h.tell() == 4099
    h.seek(-3, io.SEEK_CUR)
    assert h.read(3) == b"abc"
    assert h.seek(-2, io.SEEK_END) == (1 << 20) - 2
    assert h.read(10) == b"\0\0" and h.read(10) == b""
    buf = bytearray(5)
    h.seek(4096)
    assert h.readinto(buf) == 5 and bytes(buf) == b"abc\0\0"
    with pytest.raises(io.UnsupportedOperation):
        h.truncate(10)
    with pytest.raises(OSError):
        h.seek(0, io.SEEK_END)
        h.write(b"x")  # beyond the end
    h.close()
    assert img.closed and ioctx.closed and cluster.closed and img.flushed >= 1
    with pytest.raises(ValueError):
        h.read(1)
    h.close()  # twice is harmless


def test_read_errors_are_typed_and_other_errors_pass_through():
    h, img, *_ = _handle()
    LibrbdError = type("IOError", (Exception,), {"__module__": "rbd", "errno": -errno.EIO})

    def failing(off, n):
        raise LibrbdError("[errno 5] error reading")
    img.read = failing
    with pytest.raises(RbdIOError) as ei:
        h.read(4096)
    assert ei.value.errno == errno.EIO and "volumes/volume-1" in str(ei.value) and h.tell() == 0
    img.read = lambda off, n: 1 / 0
    with pytest.raises(ZeroDivisionError):  # not librbd's: as it is
        h.readinto(bytearray(8))
    h.close()


def test_handle_read_only_refuses_writes():
    h, img, *_ = _handle(ro=True)
    assert not h.writable()
    with pytest.raises(io.UnsupportedOperation):
        h.write(b"x")
    h.close()
    assert img.flushed == 0  # nothing to flush on a read-only image


def test_failed_write_is_reported_at_close_when_nothing_flushed():
    """librbd's write-around cache dropped this error (an OSD that timed out a write nobody flushed):
    the handle sees every completion, so close() reports the loss instead of returning."""
    h, img, ioctx, cluster = _handle()
    img.fail_errno = errno.ETIMEDOUT
    assert h.write(b"lost") == 4  # queued: the failure comes later, from the completion
    with pytest.raises(RbdIOError) as ei:
        h.close()
    assert ei.value.errno == errno.ETIMEDOUT and isinstance(ei.value, OSError)
    assert "volumes/volume-1" in str(ei.value) and "offset 0" in str(ei.value)
    assert h.closed and img.closed and ioctx.closed and cluster.closed  # released all the same


def test_failed_write_is_sticky_for_writes_and_flush_but_told_once_at_close():
    h, img, *_ = _handle()
    img.fail_errno = errno.EIO
    h.write(b"a")
    img.fail_errno = 0
    with pytest.raises(RbdIOError):
        h.flush()
    with pytest.raises(RbdIOError):
        h.write(b"b")  # a later write must not make the loss look repaired
    with pytest.raises(RbdIOError):
        h.flush()
    h.close()  # the caller was told: close releases without saying it again


def test_reads_wait_for_writes_in_flight_and_the_window_bounds_them():
    img, ioctx, cluster = FakeImage(1 << 20), Closable(), Closable()
    h = RbdHandle(cluster, ioctx, img, "volumes/volume-1", max_in_flight=8)
    img.held = []
    h.write(b"1234")
    h.write(b"5678")  # 8 bytes in flight: the window is full
    third_done = threading.Event()
    writer = threading.Thread(target=lambda: (h.write(b"9"), third_done.set()))
    writer.start()
    assert not third_done.is_set() and len(img.held) == 2
    img.held.pop(0)()  # one completes: the third write may go
    writer.join(10)
    assert third_done.is_set() and len(img.held) == 2
    got = []
    reader = threading.Thread(target=lambda: (h.seek(0), got.append(h.read(9))))
    reader.start()
    while img.held:  # the read waits for these; without the wait it would read zeros
        img.held.pop(0)()
    reader.join(10)
    assert got == [b"123456789"]
    h.close()


def _etc_with_keyring(tmp_path, user="cinder", key="AQBkeyfromhost=="):
    paths = HostPaths.under(str(tmp_path))
    os.makedirs(paths.etcpath("ceph"))
    with open(paths.etcpath("ceph", f"ceph.client.{user}.keyring"), "w") as f:
        f.write(f"[client.{user}]\n\tkey = {key}\n")
    return paths


def test_key_from_info_keyring_wins(tmp_path):
    conn = RBDConnector(paths=_etc_with_keyring(tmp_path))
    info = RbdInfo.from_dict(dict(INFO, keyring="[client.cinder]\n  key = AQBfrominfo==\n"))
    spec = conn.cluster_spec(info)
    assert spec.key == "AQBfrominfo==" and spec.keyring_file is None
    assert spec.monitors == (("127.0.0.1", 6789), ("::1", 3300))
    conf = spec.rados_conf()
    assert conf["mon_host"] == "[v1:127.0.0.1:6789],[v2:[::1]:3300]"
    assert "AQBfrominfo==" not in repr(spec)


def test_key_from_host_keyring(tmp_path):
    paths = _etc_with_keyring(tmp_path)
    spec = RBDConnector(paths=paths).cluster_spec(RbdInfo.from_dict(INFO))
    assert spec.key is None and spec.keyring_file == paths.etcpath("ceph", "ceph.client.cinder.keyring")


def test_no_key_anywhere_says_so_and_where_it_looked(tmp_path):
    """Cinder's RBD info carries no keyring by default: with none on the host either, the error names
    the user and every place searched (not librados' 'error connecting to the cluster')."""
    paths = _etc_with_keyring(tmp_path, user="someone-else")
    with pytest.raises(MissingCredentials) as ei:
        RBDConnector(paths=paths).cluster_spec(RbdInfo.from_dict(INFO))
    msg = str(ei.value)
    assert "no key for client.cinder" in msg and isinstance(ei.value, ConnectionFailed)
    assert ei.value.looked[0] == paths.etcpath("ceph", "ceph.client.cinder.keyring")
    assert paths.etcpath("ceph", "keyring") in msg
    no_auth = RbdInfo.from_dict(dict(INFO, auth_enabled=False))  # cephx off: no key needed
    assert RBDConnector(paths=paths).cluster_spec(no_auth).key is None


def test_keyring_without_the_users_key_is_a_field_error(tmp_path):
    info = RbdInfo.from_dict(dict(INFO, keyring="[client.other]\n key = A==\n[client.x]\n key = B==\n"))
    with pytest.raises(InvalidConnectionInfo) as ei:
        RBDConnector(paths=HostPaths.under(str(tmp_path))).cluster_spec(info)
    assert ei.value.field == "data.keyring" and "A==" not in str(ei.value)


def test_no_monitors_and_no_host_conf(tmp_path):
    info = RbdInfo.from_dict({"name": "volumes/volume-1"})
    with pytest.raises(InvalidConnectionInfo) as ei:
        RBDConnector(paths=HostPaths.under(str(tmp_path))).cluster_spec(info)
    assert ei.value.field == "data.hosts"


def _rbd_sysfs(paths, dev_id, pool, name, ns="", snap="-"):
    d = paths.sys("bus", "rbd", "devices", str(dev_id))
    os.makedirs(d)
    for k, v in (("pool", pool), ("name", name), ("pool_ns", ns), ("current_snap", snap)):
        with open(os.path.join(d, k), "w") as f:
            f.write(v + "\n")


def test_local_map_writes_private_key_file_and_cleans_up(tmp_path):
    paths = HostPaths.under(str(tmp_path / "host"))
    run_dir = str(tmp_path / "run")
    seen = {}

    def rbd_map(argv, stdin):
        conf = argv[argv.index("--conf") + 1]
        keyring = argv[argv.index("--keyring") + 1]
        seen["mode"] = stat.S_IMODE(os.stat(keyring).st_mode)
        seen["dirmode"] = stat.S_IMODE(os.stat(os.path.dirname(keyring)).st_mode)
        seen["keyring"] = open(keyring).read()
        seen["conf"] = open(conf).read()
        seen["files"] = (conf, keyring)
        _rbd_sysfs(paths, 3, "volumes", "volume-1")  # the kernel creates the mapping
        return "/dev/rbd3\n"

    fx = FakeExecutor().on(("rbd", "device", "map"), rbd_map)
    conn = RBDConnector(do_local_attach=True, executor=fx, paths=paths, run_dir=run_dir)
    info = dict(INFO, keyring="[client.cinder]\n\tkey = AQBsecretkey==\n")
    dev = conn.connect_volume(info)
    assert dev.path == "/dev/rbd3" and dev.type == "block"
    assert seen["mode"] == 0o600 and seen["dirmode"] == 0o700
    assert "AQBsecretkey==" in seen["keyring"] and "mon_host = [v1:127.0.0.1:6789],[v2:[::1]:3300]" in seen["conf"]
    assert not any(os.path.exists(p) for p in seen["files"])  # removed right after the command
    argv = fx.calls[0].argv
    assert "AQBsecretkey==" not in " ".join(argv) and argv[-1] == "volumes/volume-1"
    assert conn.get_volume_paths(info) == ["/dev/rbd3"]
    # connecting again returns the existing mapping without mapping twice
    assert conn.connect_volume(info).path == "/dev/rbd3" and len(fx.argvs(("rbd", "device", "map"))) == 1


def test_unmap_is_idempotent_and_checks_the_device(tmp_path):
    paths = HostPaths.under(str(tmp_path))
    _rbd_sysfs(paths, 0, "volumes", "other-image")
    _rbd_sysfs(paths, 1, "volumes", "volume-1")
    _rbd_sysfs(paths, 2, "volumes", "volume-1", snap="snap1")  # a snapshot mapping is not the volume

    def unmap(argv, stdin):
        import shutil
        shutil.rmtree(paths.sys("bus", "rbd", "devices", "1"))
        return ""

    fx = FakeExecutor().on(("rbd", "device", "unmap"), unmap)
    conn = RBDConnector(do_local_attach=True, executor=fx, paths=paths, run_dir=str(tmp_path / "run"))
    with pytest.raises(DeviceMismatch) as ei:
        conn.disconnect_volume(INFO, {"path": "/dev/rbd0", "type": "block"})  # not ours: refused
    assert (ei.value.device, ei.value.found, ei.value.expected) == ("/dev/rbd0", "volumes/other-image",
                                                                    "volumes/volume-1")
    assert fx.calls == []
    conn.disconnect_volume(INFO, {"path": "/dev/rbd1", "type": "block"})
    assert fx.argvs(("rbd", "device", "unmap")) == [("rbd", "device", "unmap", "/dev/rbd1")]
    conn.disconnect_volume(INFO, {"path": "/dev/rbd1", "type": "block"})  # twice: nothing to do
    assert len(fx.calls) == 1


def test_map_error_is_typed(tmp_path):
    fx = FakeExecutor().on(("rbd", "device", "map"), (2, "", "rbd: error opening image volume-1: (2) No such file or directory"))
    conn = RBDConnector(do_local_attach=True, executor=fx, paths=HostPaths.under(str(tmp_path)),
                        run_dir=str(tmp_path / "run"))
    with pytest.raises(VolumeNotFound):
        conn.connect_volume(dict(INFO, keyring="[client.cinder]\nkey = AQB==\n"))
    assert os.listdir(tmp_path / "run") == ["locks"]  # no key file left behind


def test_info_do_local_attach_key_wins(tmp_path):
    conn = RBDConnector(do_local_attach=False)
    assert conn._local(RbdInfo.from_dict(dict(INFO, do_local_attach=True)))
    assert not conn._local(RbdInfo.from_dict(INFO))
