"""Userspace attach without qemu: a fake host (/proc tree), a recording executor and a real QMP server stub.

The fake ``qemu-storage-daemon`` command does what the real one does to the host: writes its pid
file, appears in /proc, listens on its QMP socket (a real unix socket speaking QMP), and the fake
nbdfuse/fusermount3 add and remove the mount in /proc/self/mountinfo. The tests then check what the
connector leaves behind (files, mounts, processes) and what it raises, not just the commands.
"""

import json
import os
import socket
import stat
import threading

import pytest

from blocklink.connection import AttachedDevice, DeviceKind, RbdInfo
from blocklink.errors import (AuthenticationFailed, ConnectionFailed, DeviceBusy, DeviceMismatch, InvalidConnectionInfo,
                              InvalidConnector, InvalidOption, VolumeNotFound)
from blocklink.hostpaths import HostPaths
from blocklink.initiator.qsd import (MALLOC_TUNABLES, DaemonDied, DaemonLayout, DaemonSpec, QmpClient, QmpError,
                                     build_argv, daemon_env, daemon_message, mount_fstype)
from blocklink.initiator.userspace import UserspaceConnector, UserspaceISCSIConnector, UserspaceRBDConnector, _probe
from blocklink.masking import Secret
from blocklink.testing.fakes import FakeExecutor

PW = "chapsecret1234"
KEY = "AQBtHwdqAAAAABAAZmFrZWtleWZha2VrZXlmYWtlaw=="


class FakeQmp:
    """A QMP server on a unix socket: greeting, capabilities, the commands the connector uses."""

    def __init__(self, path, host, pid, export_type="nbd", size=64 << 20, read_only=False):
        self.host, self.pid = host, pid
        self.exports = {"exp0": export_type}
        self.size, self.read_only = size, read_only
        self.commands = []
        self.in_use = False
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rwb")
                f.write(b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}\r\n')
                f.flush()
                for line in f:
                    req = json.loads(line)
                    cmd, args = req["execute"], req.get("arguments", {})
                    self.commands.append(cmd)
                    out = self._answer(cmd, args, f)
                    f.write(json.dumps(out).encode() + b"\r\n")
                    f.flush()
                    if cmd == "quit":
                        self.host.exit(self.pid)
                        self.sock.close()
                        return

    def _answer(self, cmd, args, f):
        if cmd == "query-block-exports":
            return {"return": [{"id": k, "type": v, "node-name": "vol", "shutting-down": False}
                               for k, v in self.exports.items()]}
        if cmd == "query-named-block-nodes":
            return {"return": [{"node-name": "vol", "drv": "iscsi", "ro": self.read_only,
                                "image": {"virtual-size": self.size}}]}
        if cmd == "block-export-del":
            if self.in_use and args.get("mode") == "safe":
                return {"error": {"class": "GenericError", "desc": "export 'exp0' still in use"}}
            self.exports.pop(args["id"], None)
            f.write(b'{"event": "BLOCK_EXPORT_DELETED", "data": {"id": "exp0"}, "timestamp": {}}\r\n')
            return {"return": {}}
        if cmd == "block-export-add":
            self.exports[args["id"]] = args["type"]
            return {"return": {}}
        if cmd == "block_resize":
            self.size = max(self.size, 96 << 20)  # the remote volume grew
            return {"return": {}}
        return {"return": {}}


class FakeHost:
    """A /proc tree plus the commands that change it (qemu-storage-daemon, nbdfuse, fusermount3)."""

    def __init__(self, root):
        self.paths = HostPaths.under(str(root))
        os.makedirs(self.paths.procpath("self"))
        self.mounts = []
        self._write_mounts()
        self.next_pid = 4_000_001  # above any real pid_max: never a real process
        self.qmp = {}
        self.failure = None  # stderr to fail the next daemon start with
        self.seen_secrets = []
        self.ex = FakeExecutor()
        self.ex.on(("qemu-storage-daemon",), self._qsd)
        self.ex.on(("start-stop-daemon",), self._nbdfuse)
        self.ex.on(("fusermount3",), self._unmount)
        self.ex.on(("umount",), self._unmount)

    def _write_mounts(self):
        with open(self.paths.procpath("self", "mountinfo"), "w") as f:
            for i, m in enumerate(self.mounts):
                f.write(f"{100 + i} 1 0:5{i} / {m.replace(' ', chr(92) + '040')} rw - fuse /dev/fuse rw\n")

    def spawn(self, argv):
        pid = self.next_pid
        self.next_pid += 1
        os.makedirs(self.paths.procpath(str(pid), "fd"))
        with open(self.paths.procpath(str(pid), "stat"), "w") as f:
            f.write(f"{pid} (proc) S 1")
        with open(self.paths.procpath(str(pid), "cmdline"), "wb") as f:
            f.write(b"\0".join(a.encode() for a in argv))
        return pid

    def exit(self, pid):
        with open(self.paths.procpath(str(pid), "stat"), "w") as f:
            f.write(f"{pid} (proc) Z 1")

    def mount(self, path):
        self.mounts.append(path)
        self._write_mounts()

    def _qsd(self, argv, _input):
        secret_file = next((json.loads(argv[i + 1])["file"] for i, a in enumerate(argv)
                            if a == "--object"), None)
        if secret_file:
            st = os.stat(secret_file)
            assert stat.S_IMODE(st.st_mode) == 0o600
            with open(secret_file) as f:
                self.seen_secrets.append(f.read())
        if self.failure:
            err, self.failure = self.failure, None
            return (1, "", err)
        pidfile = argv[argv.index("--pidfile") + 1]
        qmp = argv[argv.index("--chardev") + 1].split("path=")[1].split(",")[0]
        export = json.loads(argv[argv.index("--export") + 1])
        node = json.loads(argv[argv.index("--blockdev") + 1])
        pid = self.spawn(argv)
        with open(pidfile, "w") as f:
            f.write(f"{pid}\n")
        self.qmp[pid] = FakeQmp(qmp, self, pid, export["type"], read_only=bool(node.get("read-only")))
        if export["type"] == "fuse":
            self.mount(export["mountpoint"])
        return (0, "", "")

    def _nbdfuse(self, argv, _input):
        args = argv[argv.index("--") + 1:]
        pid = self.spawn(["/usr/bin/nbdfuse", *args])
        with open(argv[argv.index("--pidfile") + 1], "w") as f:
            f.write(str(pid))
        with open(args[args.index("-P") + 1], "w") as f:
            f.write(str(pid))
        self.mount(args[-2])
        return (0, "", "")

    def _unmount(self, argv, _input):
        path = argv[-1]
        if path in self.mounts:
            self.mounts.remove(path)
            self._write_mounts()
        for name in os.listdir(self.paths.procpath()):  # the FUSE server exits with its mount
            if name.isdigit() and path.encode() in open(self.paths.procpath(name, "cmdline"), "rb").read():
                self.exit(int(name))
        return (0, "", "")

    def qsd_runs(self):
        return len(self.ex.argvs(("qemu-storage-daemon",)))


@pytest.fixture
def host(tmp_path):
    h = FakeHost(tmp_path / "host")
    yield h
    for q in h.qmp.values():
        q.sock.close()


@pytest.fixture
def portal():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    return str(d)


def _iscsi(portal, **kw):
    data = {"target_portal": portal, "target_iqn": "iqn.2024-01.test:t1", "target_lun": 1,
            "auth_method": "CHAP", "auth_username": "user", "auth_password": PW}
    data.update(kw)
    return {"driver_volume_type": "iscsi", "data": data}


def _conn(host, run_dir, **kw):
    kw.setdefault("initiator_name", "iqn.2024-01.test:host")
    return UserspaceISCSIConnector(run_dir=run_dir, executor=host.ex, paths=host.paths, timeout=5, **kw)


# ------------------------------------------------------------------------------------------------ argv


def test_argv_names_the_secret_file_never_the_secret(tmp_path):
    layout = DaemonLayout(str(tmp_path))
    spec = DaemonSpec(blockdev={"driver": "iscsi", "password-secret": "sec0"}, export="nbd", read_only=True,
                      secret=Secret(PW))
    argv = build_argv(spec, layout)
    assert PW not in " ".join(argv)
    obj = json.loads(argv[argv.index("--object") + 1])
    assert obj == {"qom-type": "secret", "id": "sec0", "file": layout.secret, "format": "raw"}
    node = json.loads(argv[argv.index("--blockdev") + 1])
    assert node["node-name"] == "vol" and node["read-only"] is True
    export = json.loads(argv[argv.index("--export") + 1])
    assert export == {"type": "nbd", "id": "exp0", "node-name": "vol", "writable": False, "name": "vol"}
    assert argv[argv.index("--nbd-server") + 1] == f"addr.type=unix,addr.path={layout.nbd}"
    assert argv[-1] == "--daemonize"
    vhost = build_argv(DaemonSpec(blockdev={}, export="vhost-user-blk"), layout)
    assert "--object" not in vhost
    assert json.loads(vhost[vhost.index("--export") + 1])["addr"] == {"type": "unix", "path": layout.vhost}


def test_daemon_env_sets_malloc_thresholds_and_keeps_the_callers_tunables(host, run_dir, portal, monkeypatch):
    assert daemon_env({}) == {"GLIBC_TUNABLES": MALLOC_TUNABLES}
    mine = "glibc.malloc.mmap_threshold=262144"
    assert daemon_env({"GLIBC_TUNABLES": mine})["GLIBC_TUNABLES"] == f"{MALLOC_TUNABLES}:{mine}"  # last wins
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    conn = _conn(host, run_dir)
    dev = conn.connect_volume(_iscsi(portal))
    started = [c for c in host.ex.calls if c.argv[0] == "qemu-storage-daemon"]
    assert len(started) == 1 and started[0].env == {"GLIBC_TUNABLES": MALLOC_TUNABLES}
    assert all("GLIBC_TUNABLES" not in " ".join(c.argv) for c in host.ex.calls)  # not on any command line
    conn.disconnect_volume(_iscsi(portal), dev)


def test_daemon_message_drops_the_echoed_option():
    err = ('qemu-storage-daemon: --blockdev {"driver": "rbd", "pool": "volumes"}: '
           'error reading header from img2: No such file or directory\n')
    assert daemon_message(err) == "error reading header from img2: No such file or directory"
    assert daemon_message("") == "qemu-storage-daemon failed"


def test_mountinfo_lookup_unescapes(tmp_path):
    paths = HostPaths.under(str(tmp_path))
    os.makedirs(paths.procpath("self"))
    with open(paths.procpath("self", "mountinfo"), "w") as f:
        f.write("36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse /dev/fuse rw\n"
                "37 35 98:0 / /mnt/c rw - ext4 /dev/vda rw\n")
    assert mount_fstype("/mnt/a b", paths) == "fuse"
    assert mount_fstype("/mnt/c", paths) == "ext4"
    assert mount_fstype("/mnt/a", paths) is None


def test_probe_tells_listening_from_closed(portal):
    host, port = portal.split(":")
    assert _probe(host, int(port), 1.0, None)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    assert not _probe("127.0.0.1", closed, 1.0, None)


# ------------------------------------------------------------------------------------------------ QMP


def test_qmp_client_keeps_events_and_types_errors(tmp_path, host):
    path = str(tmp_path / "q.sock")
    server = FakeQmp(path, host, host.spawn(["qsd"]), "fuse")
    with QmpClient(path, timeout=2) as qmp:
        assert [e.id for e in qmp.query_block_exports()] == ["exp0"]
        qmp.block_export_del("exp0")  # its event arrives before the answer: kept, then found
        assert qmp.wait_event("BLOCK_EXPORT_DELETED", {"id": "exp0"}).data == {"id": "exp0"}
        with pytest.raises(QmpError) as ei:
            qmp.wait_event("BLOCK_EXPORT_DELETED", timeout=0.2)
        assert ei.value.error_class == "Timeout"
        server.in_use = True
        server.exports["exp0"] = "nbd"
        with pytest.raises(QmpError) as ei:
            qmp.block_export_del("exp0", "safe")
        assert ei.value.command == "block-export-del" and "still in use" in ei.value.desc
        qmp.quit()
        with pytest.raises(QmpError):
            qmp.query_block_exports()  # the daemon closed the socket
    assert server.commands[0] == "qmp_capabilities"
    with pytest.raises(QmpError) as ei:
        QmpClient(str(tmp_path / "nothing.sock"), timeout=1)
    assert ei.value.command == "connect"


# ------------------------------------------------------------------------------------------------ attach / detach


def test_connect_check_disconnect_leaves_nothing(host, run_dir, portal):
    conn = _conn(host, run_dir)
    dev = conn.connect_volume(_iscsi(portal))
    layout = conn.layout(_iscsi(portal))
    assert dev.type is DeviceKind.FILE and dev.path == layout.disk and dev.bridge == "nbdfuse"
    assert host.seen_secrets == [PW]
    assert not os.path.exists(layout.secret), "secret file must go once QMP says the export is up"
    assert stat.S_IMODE(os.stat(layout.dir).st_mode) == 0o700
    with open(layout.state) as f:
        state = f.read()
    assert PW not in state and json.loads(state)["bridge"] == "nbdfuse"
    for argv in (c.argv for c in host.ex.calls):
        assert PW not in " ".join(argv)
    qsd_argv = host.ex.argvs(("qemu-storage-daemon",))[0]
    node = json.loads(qsd_argv[qsd_argv.index("--blockdev") + 1])
    assert node["initiator-name"] == "iqn.2024-01.test:host" and node["portal"] == portal
    assert mount_fstype(layout.disk, host.paths) == "fuse"
    status = conn.check_health(_iscsi(portal))
    assert status.size == 64 << 20 and status.bridge_pid is not None and not status.read_only
    assert conn.connect_volume(_iscsi(portal)).path == dev.path and host.qsd_runs() == 1  # idempotent
    assert conn.get_volume_paths(_iscsi(portal)) == [dev.path]
    qmp = host.qmp[status.pid]
    conn.disconnect_volume(_iscsi(portal), dev)
    assert qmp.commands[-2:] == ["block-export-del", "quit"]
    assert not os.path.exists(layout.dir) and host.mounts == []
    calls = len(host.ex.calls)
    conn.disconnect_volume(_iscsi(portal), dev)  # twice: nothing to do, nothing run
    assert len(host.ex.calls) == calls and conn.get_volume_paths(_iscsi(portal)) == []


def test_qsd_fuse_bridge_and_read_only(host, run_dir, portal):
    conn = _conn(host, run_dir, file_bridge="qsd")
    info = _iscsi(portal, access_mode="ro")
    dev = conn.connect_volume(info)
    assert dev.read_only is True and host.ex.argvs(("start-stop-daemon",)) == []
    argv = host.ex.argvs(("qemu-storage-daemon",))[0]
    assert json.loads(argv[argv.index("--export") + 1])["writable"] is False
    with pytest.raises(DeviceBusy):  # read-write while attached read-only
        conn.connect_volume(_iscsi(portal))
    conn.disconnect_volume(info, dev)
    assert host.mounts == [] and not os.path.exists(conn.layout(info).dir)


def test_dead_daemon_reported_by_health_and_connect_then_cleaned(host, run_dir, portal):
    conn = _conn(host, run_dir)
    info = _iscsi(portal)
    dev = conn.connect_volume(info)
    host.exit(dev.pid)
    with pytest.raises(DaemonDied) as ei:
        conn.check_health(info)
    assert ei.value.pid == dev.pid and "exited" in str(ei.value)
    assert conn.get_volume_paths(info) == []
    with pytest.raises(DaemonDied):
        conn.connect_volume(info)
    assert not os.path.exists(conn.layout(info).dir) and host.mounts == []  # stale mount unmounted
    assert host.ex.argvs(("fusermount3", "-u"))
    conn.connect_volume(info)  # a retry attaches afresh
    assert host.qsd_runs() == 2


def test_open_file_makes_detach_busy_unless_forced(host, run_dir, portal):
    conn = _conn(host, run_dir)
    info = _iscsi(portal)
    dev = conn.connect_volume(info)
    user = host.spawn(["reader"])
    os.symlink(dev.path, host.paths.procpath(str(user), "fd", "3"))
    with pytest.raises(DeviceBusy, match=str(user)):
        conn.disconnect_volume(info, dev)
    assert conn.check_health(info).pid == dev.pid  # nothing was torn down
    conn.disconnect_volume(info, dev, force=True)
    assert not os.path.exists(conn.layout(info).dir)


def test_nbd_clients_make_detach_busy(host, run_dir, portal):
    conn = _conn(host, run_dir, export="nbd")
    info = _iscsi(portal)
    dev = conn.connect_volume(info)
    assert dev.path.endswith("nbd.sock") and dev.uri.startswith("nbd+unix:///vol?socket=")
    assert dev.type is DeviceKind.SOCKET and dev.to_dict()["type"] == "socket" and dev.export == "nbd"
    assert dev.nbd_export and dev.pid and dev.run_dir == conn.layout(info).dir and dev.read_only is False
    assert AttachedDevice.from_dict(dev.to_dict()) == dev
    # a device of another volume's attachment is a mismatch, and nothing is torn down for it
    other = AttachedDevice(protocol="iscsi", path=os.path.join(run_dir, "iscsi-someone-else", "nbd.sock"))
    with pytest.raises(DeviceMismatch) as ei:
        conn.disconnect_volume(info, other)
    assert ei.value.device == other.path and ei.value.expected == conn.layout(info).dir
    assert os.path.isdir(conn.layout(info).dir) and host.qsd_runs() == 1
    host.qmp[dev.pid].in_use = True
    with pytest.raises(DeviceBusy, match="clients are connected"):
        conn.disconnect_volume(info, dev)
    conn.disconnect_volume(info, dev, force=True)  # mode=hard drops them
    assert not os.path.exists(conn.layout(info).dir)


def test_extend_recreates_the_nbd_export(host, run_dir, portal):
    conn = _conn(host, run_dir)
    info = _iscsi(portal)
    dev = conn.connect_volume(info)
    assert conn.extend_volume(info) == 96 << 20
    qmp = host.qmp[dev.pid]
    assert qmp.commands[-4:] == ["block-export-del", "block_resize", "block-export-add", "query-named-block-nodes"]
    assert len(host.ex.argvs(("start-stop-daemon",))) == 2  # nbdfuse remounted with the new size
    assert conn.check_health(info).size == 96 << 20
    conn.disconnect_volume(info, dev)


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("stderr,error,runs", [
    ("iSCSI: Failed to connect to LUN : Failed to log in to target. Status: Authentication failure(513)",
     AuthenticationFailed, 1),
    ("iSCSI: Failed to connect to LUN : Failed to log in to target. Status: Target not found(515)",
     VolumeNotFound, 2),
    ("iSCSI: Failed to connect to LUN : SENSE KEY:ILLEGAL_REQUEST(5) ASCQ:LOGICAL_UNIT_NOT_SUPPORTED(0x2500)",
     VolumeNotFound, 2),
])
def test_login_refusals_are_typed_and_leave_nothing(host, run_dir, portal, stderr, error, runs):
    second = socket.socket()
    second.bind(("127.0.0.2", 0))
    second.listen(4)
    info = _iscsi(portal, target_portals=[portal, f"127.0.0.2:{second.getsockname()[1]}"],
                  target_iqns=["iqn.2024-01.test:t1"] * 2, target_luns=[1, 1])
    host.ex.rules.insert(0, (("qemu-storage-daemon",), (1, "", f"qemu-storage-daemon: --blockdev {{}}: {stderr}")))
    with pytest.raises(error) as ei:
        _conn(host, run_dir).connect_volume(info)
    assert PW not in str(ei.value)
    assert host.qsd_runs() == runs  # an auth refusal is final; a missing target/LUN tries the next portal
    assert sorted(os.listdir(run_dir)) == ["locks"]
    second.close()


def test_first_reachable_portal_and_none_reachable(host, run_dir, portal):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    info = _iscsi(portal, target_portals=[dead, portal], target_iqns=["iqn.2024-01.test:t1"] * 2,
                  target_luns=[1, 1])
    conn = _conn(host, run_dir, probe_timeout=0.5)
    dev = conn.connect_volume(info)
    argv = host.ex.argvs(("qemu-storage-daemon",))[0]
    assert json.loads(argv[argv.index("--blockdev") + 1])["portal"] == portal and host.qsd_runs() == 1
    conn.disconnect_volume(info, dev)
    with pytest.raises(ConnectionFailed, match="no portal is reachable"):
        conn.connect_volume(_iscsi(dead))
    assert host.qsd_runs() == 1 and sorted(os.listdir(run_dir)) == ["locks"]


def test_mutual_chap_refused_unless_one_way_allowed(host, run_dir, portal):
    info = _iscsi(portal, auth_username_in="tgt", auth_password_in="mutualsecret99")
    with pytest.raises(InvalidConnectionInfo) as ei:
        _conn(host, run_dir).connect_volume(info)
    assert ei.value.field == "data.auth_password_in" and "mutualsecret99" not in str(ei.value)
    assert host.ex.calls == [] and not os.path.exists(os.path.join(run_dir, "iscsi-"))
    _conn(host, run_dir, allow_one_way_chap=True).connect_volume(info)
    assert host.qsd_runs() == 1


def test_chap_without_password_and_no_initiator_name(host, run_dir, portal):
    with pytest.raises(InvalidConnectionInfo) as ei:
        _conn(host, run_dir).connect_volume(_iscsi(portal, auth_password=None))
    assert ei.value.field == "data.auth_password"
    with pytest.raises(InvalidConnector) as ei:
        UserspaceISCSIConnector(run_dir=run_dir, executor=host.ex, paths=host.paths).connect_volume(_iscsi(portal))
    assert ei.value.field == "initiator"
    os.makedirs(host.paths.etcpath("iscsi"))
    with open(host.paths.etcpath("iscsi", "initiatorname.iscsi"), "w") as f:
        f.write("## comment\nInitiatorName=iqn.2024-01.test:from-etc\n")
    assert UserspaceISCSIConnector(paths=host.paths).initiator() == "iqn.2024-01.test:from-etc"
    assert host.qsd_runs() == 0


@pytest.mark.parametrize("kw,field", [
    ({"export": "iscsi"}, "export"), ({"file_bridge": "x"}, "file_bridge"), ({"run_dir": "/run/a,b"}, "run_dir"),
    ({"run_dir": "/" + "x" * 90}, "run_dir"), ({"netns": "../x"}, "netns"), ({"timeout": 0}, "timeout"),
    ({"cache_direct": "yes"}, "cache_direct"), ({"probe_timeout": float("nan")}, "probe_timeout"),
    ({"allow_one_way_chap": 1}, "allow_one_way_chap"), ({"no_such_option": 1}, "no_such_option"),
])
def test_bad_options_name_their_field(kw, field):
    with pytest.raises(InvalidOption) as ei:
        UserspaceISCSIConnector(**kw)
    assert ei.value.option == field and isinstance(ei.value, ValueError)


def test_renamed_timeout_option_warns_and_applies(run_dir):
    with pytest.warns(DeprecationWarning, match="device_timeout"):
        conn = UserspaceRBDConnector(run_dir=run_dir, device_timeout=7)
    assert conn.timeout == 7.0


# ------------------------------------------------------------------------------------------------ RBD


def test_rbd_spec_generated_conf_and_key_secret(tmp_path):
    conn = UserspaceRBDConnector(run_dir=str(tmp_path / "run"), timeout=12)
    info = RbdInfo.from_dict({"name": "volumes/ns1/volume-1", "hosts": ["127.0.0.1", "::1"], "ports": ["6789", "3300"],
                              "auth_username": "cinder", "discard": True,
                              "keyring": f"[client.cinder]\n\tkey = {KEY}\n"})
    layout = conn.layout(info)
    [(where, spec)] = list(conn._attempts(info, layout))
    assert where == "volumes/ns1/volume-1"
    assert spec.secret == KEY and spec.secret_format == "base64" and spec.export == "nbd"
    assert spec.blockdev == {"driver": "rbd", "pool": "volumes", "namespace": "ns1", "image": "volume-1",
                             "user": "cinder", "cache": {"direct": True}, "conf": os.path.join(layout.dir, "ceph.conf"),
                             "key-secret": "sec0", "auth-client-required": ["cephx"], "discard": "unmap"}
    conf = spec.extra_files["ceph.conf"]
    assert "mon_host = [v1:127.0.0.1:6789],[v2:[::1]:3300]" in conf and "client_mount_timeout = 12" in conf
    assert KEY not in conf and KEY not in " ".join(build_argv(spec, layout))
    no_auth = RbdInfo.from_dict({"name": "volumes/v", "hosts": ["127.0.0.1"], "ports": ["6789"],
                                 "auth_enabled": False})
    [(_, spec)] = list(conn._attempts(no_auth, conn.layout(no_auth)))
    assert spec.secret is None and spec.blockdev["auth-client-required"] == ["none"]
    assert conn.layout(info) != conn.layout(no_auth)


@pytest.mark.parametrize("stderr,error,text", [
    ("error connecting: Permission denied", AuthenticationFailed, "cephx"),
    ("error reading header from v: No such file or directory", VolumeNotFound, "image does not exist"),
    ("error opening pool nopool: No such file or directory", VolumeNotFound, "pool does not exist"),
    ("error connecting: Connection timed out", ConnectionFailed, "timed out"),
])
def test_rbd_errors_are_typed(stderr, error, text):
    a = UserspaceRBDConnector()._classify("volumes/v", f'qemu-storage-daemon: --blockdev {{"pool": "volumes"}}: {stderr}')
    assert type(a.error) is error and text in str(a.error) and not a.retry


def test_registry_userspace_table_gives_the_userspace_connectors(run_dir):
    """The registry's table is the only one: every entry builds that protocol's userspace connector."""
    from blocklink.registry import USERSPACE_CONNECTORS, connector_for

    assert set(USERSPACE_CONNECTORS) == {"iscsi", "rbd"}
    for protocol in USERSPACE_CONNECTORS:
        conn = connector_for(protocol, attach="userspace", run_dir=run_dir)
        assert isinstance(conn, UserspaceConnector) and conn.protocol == protocol
