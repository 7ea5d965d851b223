"""Fault injection on real components. Each fault must end in a clear typed error and nothing leaked
(tests.harness.leaks counters before/after): tgtd killed during a userspace login, during a
QEMU-native login and during an attach flow; a Ceph OSD stopped under I/O through the RBD handle; a
libvirt attach that really fails after the host attach; processes SIGKILLed between steps of RBD and
userspace host-attach flows, then reconcile.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest

from blocklink.attach.flow import AttachFailed
from blocklink.errors import BlocklinkError, ConnectionFailed, RbdIOError
from blocklink.executor import ProcessExecutor
from blocklink.initiator.rbd import RBDConnector
from blocklink.initiator.userspace import UserspaceISCSIConnector
from blocklink.testing.ceph import CephCluster
from tests.harness.leaks import LeakChecker, LeakFound
from blocklink.testing.procs import read_pidfile
from blocklink.testing.tgt import TgtDaemon
from tests.reliability.flows import (HOST_IQN, MiB, backing_file, chap, leak_checker, make_flow, new_id, run_dir,
                                     spec, store)
from tests.reliability.results import RESULTS

__all__ = ["run_dir", "store"]


def assert_no_leaks(checker: LeakChecker, before: Any, where: str) -> None:
    try:
        checker.assert_none_since(before, where)
    except LeakFound as e:
        RESULTS.leak(where, e.leaks)
        raise


class Tgt:
    """A tgtd this module may kill and restart (the daemon object is replaced on restart)."""

    def __init__(self) -> None:
        self.d = TgtDaemon.start()

    def kill(self) -> None:
        os.kill(self.d.pid, signal.SIGKILL)
        RESULTS.fault("tgtd SIGKILL")

    def freeze_then_kill(self, after: float = 0.3) -> None:
        """Freeze tgtd now (a login cannot complete against it) and SIGKILL it ``after`` seconds later:
        the death lands during the login whatever the machine's speed."""
        os.kill(self.d.pid, signal.SIGSTOP)
        threading.Timer(after, self.kill).start()

    def restart(self) -> None:
        if self.d.alive():
            return
        self.d = self.d.restart()


@pytest.fixture(scope="module")
def tgt() -> Iterator[Tgt]:
    t = Tgt()
    try:
        yield t
    finally:
        t.d.stop()


def _target(tgt: Tgt, tmp_path: Any) -> Any:
    return tgt.d.target(backing_dir=str(tmp_path / "backing"), config_dir=str(tmp_path / "config"),
                        lock_path=str(tmp_path / "locks"))


class KillOnExec:
    """An executor that fires ``fault`` when a command matching ``prefix`` starts (mid-login):
    ``delay=None`` fires it synchronously, before the command runs; otherwise that many seconds after."""

    def __init__(self, prefix: str, fault: Any, delay: Any = 0.05) -> None:
        self.inner = ProcessExecutor()
        self.prefix, self.fault, self.delay = prefix, fault, delay
        self.fired = False

    def run(self, argv: Any, **kw: Any) -> Any:
        if not self.fired and argv and argv[0] == self.prefix:
            self.fired = True
            if self.delay is None:
                self.fault()
            else:
                threading.Timer(self.delay, self.fault).start()
        return self.inner.run(argv, **kw)


# ------------------------------------------------------------------ tgtd dies while the initiator logs in
@pytest.mark.tgt
def test_tgtd_killed_during_userspace_login(tgt: Tgt, tmp_path: Any, run_dir: str) -> None:
    tgt.restart()
    target = _target(tgt, tmp_path)
    vid = new_id("f")
    target.create_export(vid, backing_file(str(tmp_path), vid), chap=chap())
    info = target.initialize_connection(vid, {"host": "h", "initiator": HOST_IQN}).to_dict()
    checker = leak_checker(run_dirs=(run_dir,))
    before = checker.snapshot()
    conn = UserspaceISCSIConnector(run_dir=run_dir, initiator_name=HOST_IQN, timeout=15,
                                   executor=KillOnExec("qemu-storage-daemon", tgt.freeze_then_kill, delay=None))
    t0 = time.monotonic()
    with pytest.raises(ConnectionFailed) as ei:  # tgtd is frozen before the daemon starts: no login can complete
        conn.connect_volume(info)
    assert time.monotonic() - t0 < 60
    assert "127.0.0.1" in str(ei.value) or "iqn." in str(ei.value)
    assert_no_leaks(checker, before, "tgtd killed during userspace login")
    tgt.restart()  # a fresh tgtd has no targets: the export's record re-creates it
    target.ensure_export(vid, os.path.join(str(tmp_path), f"{vid}.img"))
    target.remove_export(vid)


@pytest.mark.tgt
@pytest.mark.libvirt
def test_tgtd_killed_during_qemu_native_login(tgt: Tgt, tmp_path: Any, store: Any, libvirt_host: Any,
                                              libvirt_domain: Any) -> None:
    """QEMU's own libiscsi login (hot-plug of a network disk) while tgtd dies: the flow's hypervisor step
    fails, every earlier step is undone (the export's undo included, once tgtd answers again)."""
    tgt.restart()
    target = _target(tgt, tmp_path)
    vid = new_id("f")

    def on_step(name: str, att: Any) -> None:
        if name == "initialize":
            tgt.kill()

    checker = leak_checker(libvirt_host=libvirt_host, domain=libvirt_domain, store=store)
    before = checker.snapshot()
    flow = make_flow(store, libvirt_host, iscsi_target=target, on_step=on_step)
    with pytest.raises(AttachFailed) as ei:
        flow.attach_volume(spec(vid, "iscsi", device_path=backing_file(str(tmp_path), vid)), libvirt_domain.name())
    assert ei.value.step == "hypervisor", ei.value  # tgtd died after the initialize step: QEMU's login fails
    assert isinstance(ei.value, BlocklinkError)
    assert_no_leaks(checker, before, "tgtd killed during QEMU-native login (libvirt, records)")
    # the target side: the undo of the export cannot reach the dead tgtd; it is named, and a retry
    # after the restart leaves nothing
    assert any(f.startswith("export:") for f in ei.value.undo_failures), ei.value.undo_failures
    tgt.restart()
    target.remove_export(vid)
    assert target.get_export(vid) is None and target.list_exports() == []
    assert LeakChecker.files_in([target.store.volumes_dir]) == []


@pytest.mark.tgt
@pytest.mark.libvirt
def test_tgtd_killed_during_host_attach_flow(tgt: Tgt, tmp_path: Any, run_dir: str, store: Any, libvirt_host: Any,
                                             libvirt_domain: Any) -> None:
    tgt.restart()
    target = _target(tgt, tmp_path)
    vid = new_id("f")

    def on_step(name: str, att: Any) -> None:
        if name == "initialize":
            tgt.kill()

    checker = leak_checker(run_dirs=(run_dir,), libvirt_host=libvirt_host, domain=libvirt_domain, store=store)
    before = checker.snapshot()
    flow = make_flow(store, libvirt_host, iscsi_target=target, run_dir=run_dir, on_step=on_step)
    with pytest.raises(AttachFailed) as ei:
        flow.attach_volume(spec(vid, "iscsi", device_path=backing_file(str(tmp_path), vid), host_attach=True),
                           libvirt_domain.name())
    assert ei.value.step == "connect" and isinstance(ei.value.cause, ConnectionFailed), ei.value
    assert_no_leaks(checker, before, "tgtd killed during attach flow (host attach)")
    assert any(f.startswith("export:") for f in ei.value.undo_failures), ei.value.undo_failures  # tgtd is dead
    tgt.restart()
    target.remove_export(vid)
    assert target.list_exports() == [] and LeakChecker.files_in([target.store.volumes_dir]) == []


# ------------------------------------------------------------------ Ceph OSD stopped under I/O
@pytest.fixture
def own_ceph() -> Iterator[CephCluster]:
    c = CephCluster.start()
    try:
        yield c
    finally:
        c.stop()


def _osd_pid(c: CephCluster) -> int:
    pid = read_pidfile(os.path.join(c.directory, "run", "osd.0.pid"))
    assert pid, "no osd pid"
    return pid


def _written_handle(c: CephCluster, vid: str) -> Any:
    """(info, connector, device) of volume-<vid>: attached as a librbd handle (5 s op timeout), 1 MiB flushed."""
    c.create_image(f"volume-{vid}", 32 * MiB)
    info = c.rbd_target(include_keyring=True).initialize_connection(vid)
    conn = RBDConnector(timeout=5)
    dev = conn.connect_volume(info)
    dev.handle.write(os.urandom(MiB))
    dev.handle.flush()
    return info, conn, dev


@pytest.mark.ceph
def test_osd_stopped_during_handle_io(own_ceph: CephCluster) -> None:
    c = own_ceph
    info, conn, dev = _written_handle(c, "osd")
    h = dev.handle
    assert len(c.watchers("volume-osd")) == 1
    osd = _osd_pid(c)
    os.kill(osd, signal.SIGSTOP)  # the OSD stops answering (a hung disk, a partitioned host)
    RESULTS.fault("ceph-osd SIGSTOP under I/O")
    try:
        t0 = time.monotonic()
        with pytest.raises(BlocklinkError) as ei:
            h.seek(2 * MiB)
            h.write(os.urandom(MiB))
            h.flush()
        waited = time.monotonic() - t0
        assert waited < 60, waited
        assert "volume-osd" in str(ei.value)
        assert isinstance(ei.value, OSError)  # and still an OSError for file-object callers
        # The flush above reported the lost write (typed, naming the image). The disconnect, with the
        # OSD still frozen, then releases the image, the I/O context and the cluster connection and
        # returns: the loss is not reported a second time, and a cleanup path does not fail on an
        # OSD that does not answer (the image's watch expires on the OSD's own timer, checked below).
        t0 = time.monotonic()
        conn.disconnect_volume(info, dev)
        assert h.closed and time.monotonic() - t0 < 60
    finally:
        os.kill(osd, signal.SIGCONT)
    # the OSD is back: the handle's watch is gone (closed cleanly, or timed out and blocklisted)
    deadline = time.monotonic() + 90
    while c.watchers("volume-osd") and time.monotonic() < deadline:
        time.sleep(1)  # bounded: a lost watch expires on the OSD's own timer, no event to wait on
    assert c.watchers("volume-osd") == []
    # and a new attach works
    dev = conn.connect_volume(info)
    dev.handle.write(b"x" * 4096)
    conn.disconnect_volume(info, dev)
    assert c.watchers("volume-osd") == []


@pytest.mark.ceph
@pytest.mark.parametrize("when", ["write in flight", "write already failed"])
def test_unflushed_write_lost_to_a_stopped_osd_is_reported_at_disconnect(own_ceph: CephCluster, when: str) -> None:
    """A write nobody flushed, to an OSD that stopped answering: the disconnect must say it failed.
    (With librbd's write-around cache this returned success when the write had already timed out.)"""
    c = own_ceph
    info, conn, dev = _written_handle(c, "unflushed")
    h = dev.handle
    osd = _osd_pid(c)
    os.kill(osd, signal.SIGSTOP)
    RESULTS.fault("ceph-osd SIGSTOP, unflushed write")
    try:
        h.seek(2 * MiB)
        h.write(os.urandom(MiB))  # returns at once: the write is on its way
        if when == "write already failed":
            h._drain()  # the completion (ETIMEDOUT after the 5 s op timeout) has arrived
            assert h._write_error is not None and h._write_error.errno == errno.ETIMEDOUT
        with pytest.raises(RbdIOError) as ei:
            conn.disconnect_volume(info, dev)
        assert "volume-unflushed" in str(ei.value) and h.closed
    finally:
        os.kill(osd, signal.SIGCONT)


# ------------------------------------------------------------------ libvirt fails after the host attach
@pytest.mark.tgt
@pytest.mark.libvirt
def test_libvirt_attach_fails_after_host_attach(tgt: Tgt, tmp_path: Any, run_dir: str, store: Any,
                                                libvirt_host: Any, libvirtd: Any) -> None:
    """The domain dies between the host attach and the hot-plug: libvirt refuses, the flow rolls back."""
    import uuid

    from blocklink.testing.libvirtd import tiny_domain_xml

    tgt.restart()
    target = _target(tgt, tmp_path)
    dom = libvirt_host.connection.defineXML(tiny_domain_xml(f"bl-{uuid.uuid4().hex[:10]}"))
    dom.create()
    try:
        def on_step(name: str, att: Any) -> None:
            if name == "connect":
                dom.destroy()  # the domain is gone (a stopped one would take the disk in its config)
                dom.undefine()
                RESULTS.fault("libvirt domain destroyed+undefined before hot-plug")

        checker = leak_checker(run_dirs=(run_dir,), tgtd=tgt.d, target=target, libvirt_host=libvirt_host,
                               store=store)
        before = checker.snapshot()
        flow = make_flow(store, libvirt_host, iscsi_target=target, run_dir=run_dir, on_step=on_step)
        vid = new_id("f")
        with pytest.raises(AttachFailed) as ei:
            flow.attach_volume(spec(vid, "iscsi", device_path=backing_file(str(tmp_path), vid), host_attach=True),
                               dom.name())
        assert ei.value.step == "hypervisor" and ei.value.undo_failures == (), ei.value
        assert_no_leaks(checker, before, "libvirt attach failed after host attach")
    finally:
        import libvirt

        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass  # already gone


# ------------------------------------------------------------------ SIGKILL between steps, then reconcile
CHILD = r"""
import os, signal, sys, blocklink
from blocklink.attach.flow import AttachFlow, VolumeSpec
from blocklink.attach.records import AttachmentStore
from blocklink.hypervisor.live import LibvirtHost
db, uri, protocol, kill_after, vid, dom, run_dir, extra = sys.argv[1:]
if protocol == "rbd":
    from blocklink.target.rbd import RbdTarget
    conffile, keyring = extra.split(",")
    target = RbdTarget(conffile=conffile, keyring=keyring, include_keyring=True)
    spec = VolumeSpec(volume_id=vid, protocol="rbd", bus="scsi", host_attach=True)
else:
    from blocklink.target.tgt import TgtTarget
    cport, portal, backing, config_dir, lock_path = extra.split(",")
    target = TgtTarget(portals=[portal], control_port=int(cport), config_dir=config_dir, lock_path=lock_path)
    spec = VolumeSpec(volume_id=vid, protocol="iscsi", device_path=backing, bus="scsi", host_attach=True)
def on_step(name, att):
    if name == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
flow = AttachFlow(store=AttachmentStore(db), targets={protocol: target}, hypervisor=LibvirtHost(uri),
                  connector_properties=lambda: blocklink.get_connector_properties(ip="127.0.0.1"), on_step=on_step,
                  connector_factory=lambda p: blocklink.connector_for(p, attach="userspace", run_dir=run_dir, timeout=20))
flow.attach_volume(spec, dom)
"""

KILL_CASES = [("rbd", "connect"), ("rbd", "hypervisor"), ("iscsi", "connect"), ("iscsi", "hypervisor")]


@pytest.mark.parametrize("protocol,kill_after", KILL_CASES, ids=[f"{p}-{k}" for p, k in KILL_CASES])
def test_killed_between_steps_then_reconcile(protocol: str, kill_after: str, tgt: Tgt, ceph_cluster: Any,
                                             tmp_path: Any, run_dir: str, store: Any, libvirtd: Any,
                                             libvirt_host: Any, libvirt_domain: Any) -> None:
    vid = new_id("k")
    if protocol == "rbd":
        target = ceph_cluster.rbd_target(include_keyring=True)
        target.create_volume(vid, 32 * MiB)
        extra = f"{ceph_cluster.conffile},{ceph_cluster.keyring}"
        checker = leak_checker(run_dirs=(run_dir,), ceph=ceph_cluster, images=(f"volume-{vid}",),
                               libvirt_host=libvirt_host, domain=libvirt_domain, store=store)
    else:
        tgt.restart()
        target = _target(tgt, tmp_path)
        backing = backing_file(str(tmp_path), vid)
        extra = ",".join([str(tgt.d.control_port), tgt.d.portal, backing, target.store.directory,
                          target.locks.lock_path])
        checker = leak_checker(run_dirs=(run_dir,), tgtd=tgt.d, target=target, libvirt_host=libvirt_host,
                               domain=libvirt_domain, store=store)
    before = checker.snapshot()
    db = store.url[len("sqlite:///"):]
    p = subprocess.run([sys.executable, "-c", CHILD, db, libvirtd.uri, protocol, kill_after, vid,
                        libvirt_domain.name(), run_dir, extra], capture_output=True, text=True, timeout=180)
    assert p.returncode == -9, p.stderr[-3000:]
    RESULTS.fault(f"process SIGKILL after {kill_after} ({protocol} host attach)")
    (rec,) = store.list(volume_id=vid)
    assert rec.status == "attaching" and rec.steps[-1] == kill_after
    left = checker.new_since(before)
    assert left.get("processes"), left  # the killed process left its qemu-storage-daemon running
    flow = make_flow(store, libvirt_host, rbd_target=target if protocol == "rbd" else None,
                     iscsi_target=target if protocol == "iscsi" else None, run_dir=run_dir)
    report = flow.reconcile()
    assert [r["volume_id"] for r in report] == [vid], report
    if kill_after == "hypervisor":
        assert report[0]["action"] == "completed"
        flow.detach_volume(rec.id)
    else:
        assert report[0]["action"] == "rolled back" and store.get(rec.id).status == "error"
    try:
        assert_no_leaks(checker, before, f"reconcile after SIGKILL after {kill_after} ({protocol})")
    finally:
        if protocol == "rbd":
            target.delete_volume(vid)
            target.close()
