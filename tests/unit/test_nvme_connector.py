"""NVMeOFConnector against a fake NVMe kernel: an nvmet configfs (NvmetTarget) plus host sysfs and nvme-cli.

Assertions are on what remains: controllers and devices in the fake sysfs, attach records, errors.
"""

import json
import os
import stat
import threading
import time

import pytest

from blocklink.connection import NvmeofInfo, NvmePortal
from blocklink.errors import (AuthenticationFailed, ConnectionFailed, DetachIncomplete, DeviceBusy, DeviceMismatch,
                              DeviceNotFound, InvalidConnectionInfo)
from blocklink.initiator.nvmeof import NVMeOFConnector
from blocklink.registry import connector_for
from blocklink.target.nvmet import NvmetTarget
from blocklink.testing.hosttree_nvme import FakeNvmeKernel

MiB = 1 << 20
VOL = "11111111-2222-3333-4444-555555555555"
OTHER_HOST = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000ff"


class Env:
    def __init__(self, tmp_path, multipath=True, portals=("127.0.0.1:4420", "127.0.0.2:4420"), **kernel_kw):
        self.tmp = tmp_path
        self.kernel = FakeNvmeKernel(str(tmp_path / "root"), multipath=multipath, **kernel_kw)
        self.ex = self.kernel.install()
        self.target = NvmetTarget(portals=list(portals), paths=self.kernel.paths, configfs=self.kernel.configfs,
                                  backing_dir=str(tmp_path), lock_path=str(tmp_path / "tlocks"), buffered_io=True)
        self.conn = NVMeOFConnector(paths=self.kernel.paths, executor=self.ex, run_dir=str(tmp_path / "run"),
                                    timeout=0.3, use_multipath=True)
        self.host = {"host": "compute-1", "nqn": self.kernel.hostnqn}

    def export(self, vid=VOL, size=16 * MiB, allow=True):
        self.target.create_export(vid, size=size)
        return self.target.initialize_connection(vid, self.host) if allow else \
            self.target.connection_info(self.target.get_export(vid))

    def ctrls(self):
        return self.kernel.controllers()

    def connects(self):
        """The options of each controller create written to the fake /dev/nvme-fabrics."""
        return list(self.kernel.fabrics_writes)

    def record(self, nqn):
        d = str(self.tmp / "run" / "nvme")
        files = os.listdir(d) if os.path.isdir(d) else []
        return [json.load(open(os.path.join(d, f))) for f in files if nqn.split(":")[-1] in f]


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def test_registry_and_connector_properties(env):
    assert isinstance(connector_for("nvme", paths=env.kernel.paths, executor=env.ex), NVMeOFConnector)
    props = env.conn.get_connector_properties()
    assert props == {"nqn": env.kernel.hostnqn, "nvme_hostid": env.kernel.hostid, "nvme_native_multipath": True}
    assert Env(env.tmp / "nomp", multipath=False).conn.get_connector_properties()["nvme_native_multipath"] is False


def test_default_is_single_path_even_with_native_multipath(env):
    """use_multipath is False by default for NVMe as for every connector: one controller, first portal."""
    conn = NVMeOFConnector(paths=env.kernel.paths, executor=env.ex, run_dir=str(env.tmp / "run1"), timeout=0.3)
    assert conn.use_multipath is False
    info = env.export()
    dev = conn.connect_volume(info)
    assert dev.controllers == ("nvme0",) and env.ctrls() == ["nvme0"]
    assert [a["traddr"] for a in env.connects()] == ["127.0.0.1"]
    conn.disconnect_volume(info, dev)
    assert env.ctrls() == [] and env.kernel.devices() == []


def test_connect_both_portals_with_native_multipath(env):
    info = env.export()
    dev = env.conn.connect_volume(info.to_dict())  # the plain os-brick dict works as well as the typed info
    assert dev.path == "/dev/nvme0n1" and dev.type == "block" and dev.wwn == f"uuid.{VOL}"
    assert dev.controllers == ("nvme0", "nvme1") and dev.size == 16 * MiB
    assert env.kernel.devices() == ["nvme0n1"] and env.ctrls() == ["nvme0", "nvme1"]
    assert [a["traddr"] for a in env.connects()] == ["127.0.0.1", "127.0.0.2"]
    assert all(a["hostnqn"] == env.kernel.hostnqn for a in env.connects())
    assert all(a["hostid"] == env.kernel.hostid for a in env.connects())  # always sent: 6.12 refuses a mismatch
    rec_dir = env.tmp / "run" / "nvme"
    (rec,) = [os.path.join(rec_dir, f) for f in os.listdir(rec_dir)]
    assert stat.S_IMODE(os.stat(rec).st_mode) == 0o600
    assert json.load(open(rec))["namespaces"] == [{"uuid": VOL, "nguid": None, "nsid": 1}]
    assert env.conn.get_volume_paths(info) == ["/dev/nvme0n1"]

    again = env.conn.connect_volume(info)  # idempotent: rescans, connects nothing new
    assert again.path == dev.path and len(env.connects()) == 2
    assert env.ex.argvs(("nvme", "ns-rescan")) == [("nvme", "ns-rescan", "/dev/nvme0"),
                                                    ("nvme", "ns-rescan", "/dev/nvme1")]


def test_without_native_multipath_one_portal_is_enough(tmp_path):
    env = Env(tmp_path, multipath=False)
    dev = env.conn.connect_volume(env.export())
    assert env.ctrls() == ["nvme0"] and dev.path == "/dev/nvme0n1" and len(env.connects()) == 1


def test_dead_first_portal_is_skipped(tmp_path):
    env = Env(tmp_path, multipath=False, portals=("127.0.0.2:4420",))
    info = env.export()
    info = info.replace(portals=(NvmePortal("127.0.0.1", 4499, "tcp"),) + info.portals)
    dev = env.conn.connect_volume(info)
    assert dev.path == "/dev/nvme0n1" and len(env.connects()) == 2
    assert open(env.kernel.ctrl_path("nvme0", "address")).read().startswith("traddr=127.0.0.2,")


def test_legacy_info_finds_the_namespace_by_nsid(env):
    info = env.export()
    legacy = {"driver_volume_type": "nvmeof", "data": {
        "nqn": info.target_nqn, "transport_type": "tcp", "target_portal": "127.0.0.1", "target_port": 4420,
        "ns_id": 1}}
    dev = env.conn.connect_volume(legacy)
    assert dev.path == "/dev/nvme0n1" and env.ctrls() == ["nvme0"]
    env.conn.disconnect_volume(legacy, dev)
    assert env.ctrls() == [] and env.kernel.devices() == []


def test_legacy_info_without_identity(env):
    info = env.export()
    bare = {"nqn": info.target_nqn, "target_portal": "127.0.0.1", "target_port": "4420"}
    assert env.conn.connect_volume(bare).path == "/dev/nvme0n1"  # one namespace: unambiguous
    env.conn.disconnect_volume(bare)
    second = str(env.tmp / "second.img")
    open(second, "wb").truncate(MiB)
    env.target.config.add_namespace(info.target_nqn, 2, second, "66666666-7777-8888-9999-000000000000")
    with pytest.raises(ConnectionFailed, match="cannot tell which"):
        env.conn.connect_volume(bare)
    assert env.ctrls() == []  # the controller made for this attempt was disconnected again
    dev = env.conn.connect_volume({**bare, "ns_id": 2})
    with pytest.raises(ConnectionFailed, match="cannot tell which"):
        env.conn.disconnect_volume(bare)  # neither the info nor a device names the namespace
    env.conn.disconnect_volume(bare, dev)  # the device does
    assert env.ctrls() == [] and env.kernel.flushed[-1] == dev.path


def test_host_not_allowed_is_refused(env):
    env.export(allow=False)
    env.target.initialize_connection(VOL, {"host": "other", "nqn": OTHER_HOST})
    info = env.target.connection_info(env.target.get_export(VOL))
    with pytest.raises(AuthenticationFailed) as e:
        env.conn.connect_volume(info)
    assert env.kernel.hostnqn in str(e.value) and "allowed hosts" in str(e.value)
    assert env.ctrls() == [] and env.kernel.devices() == [] and env.record(info.target_nqn) == []


def test_info_host_nqn_wins(env):
    info = env.export(allow=False)
    env.target.initialize_connection(VOL, {"host": "other", "nqn": OTHER_HOST})
    dev = env.conn.connect_volume(info.replace(host_nqn=OTHER_HOST))
    assert all(a["hostnqn"] == OTHER_HOST for a in env.connects())
    assert all(a["hostid"] == "00000000-0000-0000-0000-0000000000ff" for a in env.connects())  # its NQN's UUID
    assert open(env.kernel.ctrl_path("nvme0", "hostnqn")).read().strip() == OTHER_HOST
    env.conn.disconnect_volume(info.replace(host_nqn=OTHER_HOST), dev)
    assert env.ctrls() == []


def test_no_listener_anywhere(env):
    info = env.export()
    dead = info.replace(portals=(NvmePortal("127.0.0.1", 4499, "tcp"),
                                 NvmePortal("127.0.0.2", 4499, "tcp")))
    with pytest.raises(ConnectionFailed) as e:
        env.conn.connect_volume(dead)
    assert not isinstance(e.value, AuthenticationFailed) and str(e.value).count("connection refused") == 2


def test_namespace_that_never_appears_undoes_the_connection(env):
    info = env.export()
    with pytest.raises(DeviceNotFound, match="namespace uuid 99999999-"):
        env.conn.connect_volume(info.replace(vol_uuid="99999999-2222-3333-4444-555555555555"))
    assert env.ctrls() == [] and env.record(info.target_nqn) == []


def test_bad_identifiers_and_missing_host_nqn(tmp_path):
    env = Env(tmp_path)
    info = env.export()
    with pytest.raises(InvalidConnectionInfo) as e:
        env.conn.connect_volume(info.replace(vol_uuid="not-a-uuid"))
    assert e.value.field == "data.vol_uuid"
    os.unlink(env.kernel.paths.etcpath("nvme", "hostnqn"))
    with pytest.raises(InvalidConnectionInfo) as e:
        env.conn.connect_volume(info)
    assert e.value.field == "data.host_nqn" and "gen-hostnqn" in str(e.value)
    assert env.ex.calls == []


def test_fabrics_module_loaded_on_demand(tmp_path):
    env = Env(tmp_path, fabrics_loaded=False)
    env.conn.connect_volume(env.export())
    assert env.ex.argvs(("modprobe",)) == [("modprobe", "-a", "nvme-fabrics", "nvme-tcp")]


def test_disconnect_flushes_and_removes_everything(env):
    info = env.export()
    dev = env.conn.connect_volume(info)
    env.conn.disconnect_volume(info, dev)
    assert env.kernel.flushed == ["/dev/nvme0n1"]
    assert env.ctrls() == [] and env.kernel.devices() == [] and env.record(info.target_nqn) == []
    assert env.conn.get_volume_paths(info) == []
    env.conn.disconnect_volume(info, dev)  # twice is harmless
    assert len(env.kernel.deleted) == 2


def test_two_namespaces_detach_independently(env):
    info_a = env.export()
    b_img = str(env.tmp / "b.img")
    open(b_img, "wb").truncate(8 * MiB)
    uuid_b = "66666666-7777-8888-9999-000000000000"
    env.target.config.add_namespace(info_a.target_nqn, 2, b_img, uuid_b)
    info_b = info_a.replace(vol_uuid=uuid_b, ns_id=2)
    dev_a = env.conn.connect_volume(info_a)
    dev_b = env.conn.connect_volume(info_b)  # the existing controllers are rescanned, none added
    assert (dev_a.path, dev_b.path) == ("/dev/nvme0n1", "/dev/nvme0n2") and len(env.connects()) == 2
    env.conn.disconnect_volume(info_a, dev_a)
    assert env.ctrls() == ["nvme0", "nvme1"]  # B is attached: the controllers stay
    assert env.kernel.flushed == ["/dev/nvme0n1"]
    env.conn.disconnect_volume(info_b, dev_b)
    assert env.ctrls() == [] and env.kernel.devices() == []


def test_controller_kept_while_another_namespace_is_open(env):
    info_a = env.export()
    b_img = str(env.tmp / "b.img")
    open(b_img, "wb").truncate(8 * MiB)
    env.target.config.add_namespace(info_a.target_nqn, 2, b_img, "66666666-7777-8888-9999-000000000000")
    dev_a = env.conn.connect_volume(info_a)
    env.kernel.scan("nvme0")
    env.kernel.open_by(777, "/dev/nvme0n2")  # attached by something else (not recorded by us)
    env.conn.disconnect_volume(info_a, dev_a)
    assert env.ctrls() == ["nvme0", "nvme1"]


def test_device_of_another_volume_is_refused(env):
    info = env.export()
    env.conn.connect_volume(info)
    b_img = str(env.tmp / "b.img")
    open(b_img, "wb").truncate(8 * MiB)
    env.target.config.add_namespace(info.target_nqn, 2, b_img, "66666666-7777-8888-9999-000000000000")
    env.kernel.scan("nvme0")
    with pytest.raises(DeviceMismatch):
        env.conn.disconnect_volume(info, {"type": "block", "path": "/dev/nvme0n2"})
    assert env.ctrls() == ["nvme0", "nvme1"] and env.kernel.flushed == []


def test_flush_failure_keeps_the_connection_unless_forced(env):
    info = env.export()
    dev = env.conn.connect_volume(info)
    env.ex.rules.insert(0, (("blockdev", "--flushbufs"), (1, "", "blockdev: ioctl error: Input/output error\n")))
    with pytest.raises(DeviceBusy):
        env.conn.disconnect_volume(info, dev)
    assert env.ctrls() == ["nvme0", "nvme1"]
    with pytest.raises(DetachIncomplete) as e:
        env.conn.disconnect_volume(info, dev, force=True)
    assert len(e.value.failures) == 1 and "flush /dev/nvme0n1" in e.value.failures[0]
    assert env.ctrls() == [] and env.kernel.devices() == []


def test_extend_rescans_and_waits_for_the_new_size(env):
    info = env.export(size=16 * MiB)
    dev = env.conn.connect_volume(info)
    exp = env.target.get_export(VOL)
    os.truncate(exp.device_path, 48 * MiB)
    assert env.target.revalidate_size(VOL) == 48 * MiB
    assert env.conn.extend_volume(info) == 48 * MiB  # the fake host sees it only after the rescan
    assert env.kernel.paths.read(env.kernel.paths.sys("block", "nvme0n1", "size")) == str(48 * MiB // 512)
    env.conn.disconnect_volume(info, dev)
    with pytest.raises(DeviceNotFound):
        env.conn.extend_volume(info)


def test_typed_info_round_trip(env):
    info = env.export()
    assert NvmeofInfo.from_dict(info.to_dict()) == info
    assert info.to_dict()["data"]["portals"] == [["127.0.0.1", 4420, "tcp"], ["127.0.0.2", 4420, "tcp"]]


# ---------------------------------------------------------------------------------------------
# disconnect returns only once the kernel let go of what it disconnected (issue 12 follow-up)

def _later(seconds, fn, *args):
    t = threading.Timer(seconds, fn, args)
    t.start()
    return t


@pytest.mark.parametrize("multipath", [True, False])
def test_disconnect_waits_until_the_last_holder_lets_the_subsystem_go(tmp_path, multipath):
    env = Env(tmp_path, multipath=multipath)
    env.conn.timeout = 10.0
    info = env.export()
    dev = env.conn.connect_volume(info)
    env.kernel.open_by(4242, dev.path, comm="(udev-worker)")  # blkid still probing the new device
    closed_at: list = []

    def close() -> None:
        closed_at.append(time.monotonic())
        env.kernel.close_by(4242)

    t0 = time.monotonic()
    closer = _later(0.3, close)
    env.conn.disconnect_volume(info, dev)
    returned = time.monotonic()
    closer.join()
    # returned only after the holder let go, and on that event rather than at the 10 s deadline
    assert closed_at and closed_at[0] <= returned and returned - t0 < 5
    assert env.ctrls() == [] and env.kernel.devices() == [] and env.kernel.subsystems() == []


def test_holder_that_never_closes_is_named_and_forced_detach_reports_it(env):
    info = env.export()
    dev = env.conn.connect_volume(info)
    env.kernel.open_by(4242, dev.path, comm="qemu-system-x86")
    with pytest.raises(DeviceBusy) as e:
        env.conn.disconnect_volume(info, dev)
    assert e.value.device == "/dev/nvme0n1"
    assert "subsystem nvme-subsys0" in e.value.reason and "pid 4242 (qemu-system-x86)" in e.value.reason
    assert info.target_nqn in e.value.reason
    # the controllers went (a kernel object held by a process cannot be taken back), the record too
    assert env.ctrls() == [] and env.kernel.devices() == [] and env.record(info.target_nqn) == []
    assert env.kernel.subsystems() == ["nvme-subsys0"]
    with pytest.raises(DeviceBusy):  # a retry still sees the leftover and says so
        env.conn.disconnect_volume(info, dev)
    with pytest.raises(DetachIncomplete) as e2:
        env.conn.disconnect_volume(info, dev, force=True)
    assert len(e2.value.failures) == 1 and "pid 4242" in e2.value.failures[0]
    env.kernel.close_by(4242)
    assert env.kernel.subsystems() == []
    env.conn.disconnect_volume(info, dev)  # nothing left: returns at once


def test_holder_of_another_subsystem_does_not_matter(env):
    info = env.export()
    dev = env.conn.connect_volume(info)
    env.kernel.open_by(4242, "/dev/nvme7n1")
    env.conn.disconnect_volume(info, dev)
    assert env.ctrls() == [] and env.kernel.subsystems() == []


def test_kept_controller_keeps_the_subsystem_without_waiting(env):
    info_a = env.export()
    b_img = str(env.tmp / "b.img")
    open(b_img, "wb").truncate(8 * MiB)
    uuid_b = "66666666-7777-8888-9999-000000000000"
    env.target.config.add_namespace(info_a.target_nqn, 2, b_img, uuid_b)
    dev_a = env.conn.connect_volume(info_a)
    dev_b = env.conn.connect_volume(info_a.replace(vol_uuid=uuid_b, ns_id=2))
    t0 = time.monotonic()
    env.conn.disconnect_volume(info_a, dev_a)
    assert time.monotonic() - t0 < 0.3  # nothing to wait for: the subsystem stays, in use
    assert env.kernel.subsystems() == ["nvme-subsys0"] and env.kernel.devices() == ["nvme0n1", "nvme0n2"]
    env.conn.disconnect_volume(info_a.replace(vol_uuid=uuid_b, ns_id=2), dev_b)
    assert env.kernel.subsystems() == [] and env.kernel.devices() == []


def test_delayed_head_removal_is_cleared_before_the_last_path_goes(env):
    info = env.export()
    dev = env.conn.connect_volume(info)
    attr = env.kernel.paths.sys("block", "nvme0n1", "delayed_removal_secs")
    with open(attr, "w") as f:
        f.write("30\n")  # an admin's setting (Linux 6.16+): the head would stay 30 s after its last path
    env.conn.disconnect_volume(info, dev)
    assert env.kernel.devices() == [] and env.kernel.subsystems() == [] and env.ctrls() == []


def test_deferred_controller_deletion_is_waited_for(env):
    """The delete_controller write can return while the kernel's delete work still runs (a controller
    already deleting, e.g. after ctrl_loss_tmo): the connector waits for the controller to go."""
    info = env.export()
    dev = env.conn.connect_volume(info)
    env.conn.timeout = 10.0
    timers = []

    def deferred(path, _data):
        ctrl = os.path.basename(os.path.dirname(path))
        if not path.endswith("/delete_controller"):
            return False
        with open(env.kernel.ctrl_path(ctrl, "state"), "w") as f:
            f.write("deleting\n")
        timers.append(_later(0.2, env.kernel.remove_controller, ctrl))
        return True

    env.kernel.sysfs_write = deferred
    env.conn.disconnect_volume(info, dev)
    for t in timers:
        t.join()
    assert len(timers) == 2 and env.ctrls() == [] and env.kernel.subsystems() == []
    assert env.kernel.devices() == []
