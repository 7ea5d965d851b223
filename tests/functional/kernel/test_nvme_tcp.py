"""NVMe/TCP end to end in the real-kernel guest: nvmet target (configfs) + nvme-tcp initiator over loopback.

NvmetTarget exports files on tmpfs (buffered_io chosen by probing O_DIRECT, which tmpfs lacks) and
loop devices on 127.0.0.1/127.0.0.2:4420 (files on overlayfs, like the guest's /tmp, are refused:
nvmet would serve them with a 1-byte block size); NVMeOFConnector attaches them through /dev/nvme-fabrics
(no nvme-cli; test_nvme_auth.py proves no child process). Each test checks
what is left: no controller (``nvme list-subsys``), no nvmet object in configfs after remove_export.
Connect/disconnect/extend times are recorded as junit properties and printed.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List

import pytest

from blocklink.connection import HostConnector, NvmeofInfo, NvmePortal
from blocklink.errors import AuthenticationFailed, ConnectionFailed, DetachIncomplete, DeviceBusy, InvalidConnectionInfo
from blocklink.initiator.host.nvme import parse_list_subsys
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.nvmeof import NVMeOFConnector
from blocklink.registry import connector_for
from blocklink.target.nvmet import NvmetTarget
from tests.harness.guest.blockio import block_size

pytestmark = pytest.mark.kernel

MiB = 1 << 20
NVMET = "/sys/kernel/config/nvmet"
NVME_MODULES = ("nvmet", "nvmet-tcp", "nvme-tcp", "nvme-fabrics")


def sh(*argv: str, check: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def nvmet_objects() -> List[str]:
    return [f"{k}/{n}" for k in ("subsystems", "ports", "hosts") for n in os.listdir(os.path.join(NVMET, k))]


def subsystems_on_host() -> List[Dict[str, Any]]:
    return parse_list_subsys(sh("nvme", "list-subsys", "-o", "json"))


def direct_io(path: str, data: bytes, offset: int = 0) -> bytes:
    """Write ``data`` at ``offset`` with O_DIRECT, read it back with O_DIRECT."""
    buf = mmap.mmap(-1, len(data))  # page-aligned, as O_DIRECT wants
    buf.write(data)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwritev(fd, [buf], offset) == len(data)
        back = mmap.mmap(-1, len(data))
        assert os.preadv(fd, [back], offset) == len(data)
        return bytes(back)
    finally:
        os.close(fd)


def o_direct_works(directory: str) -> bool:
    try:
        fd = os.open(os.path.join(directory, ".odirect-probe"), os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(os.path.join(directory, ".odirect-probe"))
    return True


class Timings:
    def __init__(self, record_property: Any) -> None:
        self.record = record_property

    def __call__(self, name: str, fn: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.monotonic()
        out = fn(*args, **kw)
        secs = time.monotonic() - t0
        self.record(name, f"{secs:.3f}")
        print(f"TIMING {name} {secs:.3f}s")
        return out


@pytest.fixture(scope="module")
def nvme_modules(modprobe: Any) -> None:
    modprobe(*NVME_MODULES)
    assert os.path.isdir(NVMET) and os.path.exists("/dev/nvme-fabrics")


@pytest.fixture
def timing(record_property: Any) -> Timings:
    return Timings(record_property)


@pytest.fixture
def workdir() -> Iterator[str]:
    """Backing files on tmpfs (/run): the guest's /tmp is overlayfs, which nvmet cannot serve files from."""
    d = tempfile.mkdtemp(prefix="blocklink-nvme-", dir="/run")
    yield d
    shutil.rmtree(d)


def make_target(workdir: str, *portals: str) -> NvmetTarget:
    return NvmetTarget(portals=list(portals) or ["127.0.0.1:4420"], backing_dir=workdir,
                       lock_path=os.path.join(workdir, "locks"))


@pytest.fixture
def target(nvme_modules: None, workdir: str) -> Iterator[NvmetTarget]:
    t = make_target(workdir)
    yield t
    for vid in t.list_exports():
        t.remove_export(vid)


@pytest.fixture
def connector(nvme_modules: None, workdir: str) -> NVMeOFConnector:
    c = connector_for("nvmeof", run_dir=os.path.join(workdir, "run"), timeout=60.0, use_multipath=True)
    assert isinstance(c, NVMeOFConnector)
    return c


@pytest.fixture
def host(connector: NVMeOFConnector) -> HostConnector:
    props = connector.get_connector_properties()
    assert props["nqn"].startswith("nqn."), props
    return HostConnector.from_dict({"host": "blguest", **props})


def kernel_subsystems(nqn: str) -> List[str]:
    base = "/sys/class/nvme-subsystem"
    out = []
    for s in os.listdir(base):
        with open(os.path.join(base, s, "subsysnqn")) as f:
            if f.read().strip() == nqn:
                out.append(s)
    return out


def assert_clean(nqn: str) -> None:
    """Nothing of the subsystem left the moment disconnect_volume returned: no controller, no
    namespace device and no kernel subsystem object (which outlives ``nvme disconnect`` while any
    process still holds one of its devices open)."""
    assert not [s for s in subsystems_on_host() if s["nqn"] == nqn]
    assert kernel_subsystems(nqn) == []
    assert not os.listdir("/sys/class/nvme"), os.listdir("/sys/class/nvme")
    assert not [b for b in os.listdir("/sys/block") if b.startswith("nvme")]


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backing", ["file", "loop"])
def test_connect_write_read_disconnect(target: NvmetTarget, connector: NVMeOFConnector, host: HostConnector,
                                       workdir: str, timing: Timings, backing: str, modprobe: Any) -> None:
    vid = str(uuid.uuid4())
    loop = None
    if backing == "file":
        export = target.create_export(vid, size=64 * MiB)
        # probed: tmpfs (/run) has O_DIRECT from Linux 6.6 (the 6.12 guest), not on 6.1
        assert export.buffered_io is not o_direct_works(workdir)
    else:
        modprobe("loop")
        img = os.path.join(workdir, "loop.img")
        with open(img, "wb") as f:
            f.truncate(64 * MiB)
        loop = sh("losetup", "--find", "--show", img).strip()
        export = target.create_export(vid, loop)
        assert not export.buffered_io
    try:
        info = target.initialize_connection(vid, host)
        assert info.vol_uuid == vid and info.ns_id == 1 and info.form == "new"
        wire = info.to_dict()  # what Cinder hands Nova: the plain os-brick dict
        dev = timing(f"connect_{backing}", connector.connect_volume, wire)
        assert dev.path and dev.path.startswith("/dev/nvme") and os.path.exists(dev.path)
        name = os.path.basename(dev.path)
        with open(f"/sys/block/{name}/uuid") as f:
            assert f.read().strip() == vid
        assert block_size(dev.path) == 64 * MiB
        assert connector.get_volume_paths(wire) == [dev.path]
        assert connector.connect_volume(wire).path == dev.path  # idempotent: no second controller
        assert len(os.listdir("/sys/class/nvme")) == 1

        data = os.urandom(4 * MiB)
        assert direct_io(dev.path, data, 8 * MiB) == data
        timing(f"disconnect_{backing}", connector.disconnect_volume, wire, dev)
        assert not os.path.exists(dev.path)
        assert connector.get_volume_paths(wire) == []
        assert_clean(export.nqn)
        connector.disconnect_volume(wire, dev)  # twice is harmless
        with open(export.device_path, "rb") as f:  # the data reached the backing store
            f.seek(8 * MiB)
            assert f.read(len(data)) == data
    finally:
        target.remove_export(vid)
        if loop:
            sh("losetup", "-d", loop)
    assert nvmet_objects() == []


def test_two_namespaces_of_one_subsystem_detach_independently(
        target: NvmetTarget, connector: NVMeOFConnector, host: HostConnector, workdir: str) -> None:
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=32 * MiB)
    second = os.path.join(workdir, "second.img")
    with open(second, "wb") as f:
        f.truncate(16 * MiB)
    uuid2 = str(uuid.uuid4())
    target.config.add_namespace(export.nqn, 2, second, uuid2, buffered_io=True)
    try:
        info_a = target.initialize_connection(vid, host)
        info_b = info_a.replace(vol_uuid=uuid2, ns_id=2)
        dev_a = connector.connect_volume(info_a)
        dev_b = connector.connect_volume(info_b)
        assert dev_a.path != dev_b.path
        assert (block_size(dev_a.path), block_size(dev_b.path)) == (32 * MiB, 16 * MiB)
        ctrls = os.listdir("/sys/class/nvme")
        assert len(ctrls) == 1  # one controller carries both namespaces

        connector.disconnect_volume(info_a, dev_a)
        assert os.listdir("/sys/class/nvme") == ctrls  # B is attached: the controller stays
        data = os.urandom(MiB)
        assert direct_io(dev_b.path, data) == data  # and B still works

        connector.disconnect_volume(info_b, dev_b)
        assert_clean(export.nqn)
    finally:
        target.config.remove_namespace(export.nqn, 2)
        target.remove_export(vid)
    assert nvmet_objects() == []


def test_host_without_acl_is_refused_clearly(target: NvmetTarget, connector: NVMeOFConnector,
                                             host: HostConnector) -> None:
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    other = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000ff"
    target.initialize_connection(vid, {"host": "other", "nqn": other})  # only some other host is allowed
    info = target.connection_info(target.get_export(vid))
    with pytest.raises(AuthenticationFailed) as e:
        connector.connect_volume(info)
    assert host.nqn in str(e.value) and "allowed hosts" in str(e.value) and export.nqn in str(e.value)
    assert_clean(export.nqn)

    # a portal nobody listens on: unreachable, not "refused by the target"
    bad = info.replace(portals=(NvmePortal("127.0.0.1", 4999, "tcp"),))
    with pytest.raises(ConnectionFailed) as e2:
        connector.connect_volume(bad)
    assert not isinstance(e2.value, AuthenticationFailed) and "unreachable" in str(e2.value)
    assert_clean(export.nqn)

    target.terminate_connection(vid, {"host": "other", "nqn": other})
    assert target.get_export(vid).hosts == ()
    target.remove_export(vid)
    assert nvmet_objects() == []


def test_file_on_overlayfs_is_refused_before_anything_changes(target: NvmetTarget, tmp_path: Any) -> None:
    with open("/proc/self/mountinfo") as f:
        assert any(" /tmp " in line and " - overlay " in line for line in f)  # the guest's /tmp
    img = str(tmp_path / "vol.img")
    with pytest.raises(InvalidConnectionInfo) as e:
        target.create_export(str(uuid.uuid4()), img, size=16 * MiB)
    assert e.value.field == "device_path" and "overlay" in str(e.value) and "block size" in str(e.value)
    assert not os.path.exists(img)  # the file it created is gone again
    assert nvmet_objects() == []


def test_extend(target: NvmetTarget, connector: NVMeOFConnector, host: HostConnector, timing: Timings) -> None:
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=32 * MiB)
    info = target.initialize_connection(vid, host)
    dev = connector.connect_volume(info)
    try:
        data = os.urandom(MiB)
        assert direct_io(dev.path, data) == data
        os.truncate(export.device_path, 96 * MiB)  # the volume grows on the storage side
        assert target.revalidate_size(vid) == 96 * MiB
        assert timing("extend", connector.extend_volume, info) == 96 * MiB
        assert block_size(dev.path) == 96 * MiB
        assert direct_io(dev.path, data, 90 * MiB) == data  # the new space is usable
        assert direct_io(dev.path, data, 0) == data
    finally:
        connector.disconnect_volume(info, dev)
        target.remove_export(vid)
    assert_clean(export.nqn)
    assert nvmet_objects() == []


def test_two_portals_native_multipath(nvme_modules: None, connector: NVMeOFConnector, host: HostConnector,
                                      workdir: str, timing: Timings) -> None:
    with open("/sys/module/nvme_core/parameters/multipath") as f:
        assert f.read().strip() == "Y", "Debian's kernel enables native NVMe multipath"
    target = make_target(workdir, "127.0.0.1:4420", "127.0.0.2:4420")
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=32 * MiB)
    try:
        info = target.initialize_connection(vid, host)
        assert [(p.address, p.port) for p in info.portals] == [("127.0.0.1", 4420), ("127.0.0.2", 4420)]
        dev = timing("connect_multipath", connector.connect_volume, info)
        assert sorted(list(dev.controllers)) == sorted(os.listdir("/sys/class/nvme"))
        assert len(list(dev.controllers)) == 2
        subs = [s for s in subsystems_on_host() if s["nqn"] == export.nqn]
        assert len(subs) == 1 and sorted(p["address"].split(",")[0] for p in subs[0]["paths"]) == [
            "traddr=127.0.0.1", "traddr=127.0.0.2"]
        nvme_disks = [d for d in os.listdir("/sys/block") if d.startswith("nvme") and "c" not in d[4:]]
        assert nvme_disks == [os.path.basename(dev.path)]  # one head device for both paths

        # lose the 127.0.0.2 path on the target: I/O continues on the other one
        port2 = target.config.find_port("tcp", "127.0.0.2", 4420)
        target.config.unlink_port(port2.port_id, export.nqn)
        data = os.urandom(MiB)
        assert direct_io(dev.path, data) == data
        timing("disconnect_multipath", connector.disconnect_volume, info, dev)
        assert_clean(export.nqn)
    finally:
        target.remove_export(vid)
    assert nvmet_objects() == []


def test_without_native_multipath_first_reachable_portal_only(
        modprobe: Any, workdir: str, host: HostConnector) -> None:
    """nvme_core reloaded with multipath=N: separate per-path devices, so only one portal is connected."""
    for m in ("nvme_tcp", "nvme_fabrics", "nvme_core"):
        sh("modprobe", "-r", m)
    modprobe.load("nvme_core", multipath="N")
    try:
        modprobe("nvme-fabrics", "nvme-tcp")
        connector = NVMeOFConnector(run_dir=os.path.join(workdir, "run"), timeout=60.0, use_multipath=True)
        assert connector.get_connector_properties()["nvme_native_multipath"] is False
        target = make_target(workdir, "127.0.0.2:4420")
        vid = str(uuid.uuid4())
        export = target.create_export(vid, size=16 * MiB)
        try:
            info = target.initialize_connection(vid, host)
            info = info.replace(portals=(NvmePortal("127.0.0.1", 4499, "tcp"),) + info.portals)  # first one is dead
            dev = connector.connect_volume(info)
            ctrls = os.listdir("/sys/class/nvme")
            assert len(ctrls) == 1 and os.path.basename(dev.path).startswith(ctrls[0] + "n")  # nvme<ctrl>n<ns>
            with open(f"/sys/class/nvme/{ctrls[0]}/address") as f:
                assert f.read().startswith("traddr=127.0.0.2,")
            data = os.urandom(MiB)
            assert direct_io(dev.path, data) == data
            connector.disconnect_volume(info, dev)
            assert_clean(export.nqn)
        finally:
            target.remove_export(vid)
    finally:
        for m in ("nvme_tcp", "nvme_fabrics", "nvme_core"):
            sh("modprobe", "-r", m, check=False)
        modprobe("nvme-tcp", "nvme-fabrics")
    with open("/sys/module/nvme_core/parameters/multipath") as f:
        assert f.read().strip() == "Y"
    assert nvmet_objects() == []


def test_list_subsys_parser_matches_sysfs(target: NvmetTarget, connector: NVMeOFConnector,
                                          host: HostConnector) -> None:
    vid = str(uuid.uuid4())
    target.create_export(vid, size=16 * MiB)
    info: NvmeofInfo = target.initialize_connection(vid, host)
    dev = connector.connect_volume(info)
    try:
        raw = json.loads(sh("nvme", "list-subsys", "-o", "json"))
        subs = parse_list_subsys(json.dumps(raw))
        assert [s["nqn"] for s in subs] == [info.target_nqn]
        assert [p["name"] for p in subs[0]["paths"]] == list(dev.controllers)
        assert subs[0]["paths"][0]["state"] == "live"
    finally:
        connector.disconnect_volume(info, dev)
        target.remove_export(vid)


def test_repeated_attach_detach_cycles(target: NvmetTarget, connector: NVMeOFConnector, host: HostConnector,
                                       timing: Timings) -> None:
    """Attach/detach five times (the connect and disconnect times to report); nothing accumulates."""
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    info = target.initialize_connection(vid, host)
    try:
        for i in range(5):
            dev = timing(f"connect_cycle{i}", connector.connect_volume, info)
            assert block_size(dev.path) == 16 * MiB
            timing(f"disconnect_cycle{i}", connector.disconnect_volume, info, dev)
            assert_clean(export.nqn)
    finally:
        target.remove_export(vid)
    assert nvmet_objects() == []


# ---------------------------------------------------------------------------------------------
# a process holding the device across the disconnect (what udev's blkid does to a fresh device):
# Linux deletes the controller and the head at once but frees the subsystem only when it closes

class Holder:
    """A child process that holds ``path`` open until :meth:`close` (stopped by PID at the end)."""

    def __init__(self, path: str) -> None:
        code = "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); print('open', flush=True); sys.stdin.read()"
        self.proc = subprocess.Popen([sys.executable, "-c", code, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "open"

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def test_disconnect_waits_until_the_last_holder_closes(target: NvmetTarget, connector: NVMeOFConnector,
                                                       host: HostConnector, timing: Timings) -> None:
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    info = target.initialize_connection(vid, host)
    dev = connector.connect_volume(info)
    holder = Holder(dev.path)
    closer = threading.Timer(1.0, holder.close)
    try:
        t0 = time.monotonic()
        closer.start()
        timing("disconnect_held", connector.disconnect_volume, info, dev)
        assert time.monotonic() - t0 >= 1.0  # it waited for the close, and
        assert_clean(export.nqn)  # nothing was left when it returned
    finally:
        closer.cancel()
        holder.stop()
        target.remove_export(vid)
    assert nvmet_objects() == []


def test_holder_that_never_closes_is_named(target: NvmetTarget, host: HostConnector, workdir: str) -> None:
    connector = NVMeOFConnector(run_dir=os.path.join(workdir, "run"), timeout=2.0)
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    info = target.initialize_connection(vid, host)
    dev = connector.connect_volume(info)
    holder = Holder(dev.path)
    try:
        with pytest.raises(DeviceBusy) as e:
            connector.disconnect_volume(info, dev)
        assert e.value.device == dev.path
        assert f"pid {holder.proc.pid} (python" in e.value.reason and f"{dev.path} (deleted)" in e.value.reason
        assert export.nqn in e.value.reason and "nvme-subsys" in e.value.reason
        assert not os.listdir("/sys/class/nvme") and len(kernel_subsystems(export.nqn)) == 1  # no paths, held
        with pytest.raises(DetachIncomplete) as e2:
            connector.disconnect_volume(info, dev, force=True)
        assert len(e2.value.failures) == 1 and f"pid {holder.proc.pid}" in e2.value.failures[0]
        holder.close()
        wait_for(lambda: True if not kernel_subsystems(export.nqn) else None, timeout=30,
                 watch=["/sys/class/nvme-subsystem"], what="the subsystem to go once closed")
        connector.disconnect_volume(info, dev)  # nothing left: returns at once
        assert_clean(export.nqn)
    finally:
        holder.stop()
        target.remove_export(vid)
    assert nvmet_objects() == []
