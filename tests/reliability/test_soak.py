"""Soak: repeated attach/detach of each protocol this host can run, leak counters checked after every cycle.

Short mode: 10 cycles per protocol; ``BLOCKLINK_LONG=1``: 200. Protocols: the RBD handle (librbd in
process), userspace RBD (qemu-storage-daemon + nbdfuse), userspace iSCSI on tgtd (CHAP), and the attach
flow with libvirt for an RBD network disk and a QEMU-native iSCSI disk (CHAP, libvirt secret).
Each cycle also moves data (written, read back) so a cycle that "attached" something dead fails.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import pytest

from blocklink.initiator.rbd import RBDConnector
from blocklink.initiator.userspace import UserspaceISCSIConnector, UserspaceRBDConnector
from tests.harness.leaks import LeakChecker, LeakFound
from tests.harness.leaks import soak as run_soak
from blocklink.testing.tgt import TgtDaemon
from tests.reliability.flows import (HOST_IQN, MiB, backing_file, chap, io_roundtrip, leak_checker, make_flow, new_id,
                                     run_dir, spec, store)
from tests.reliability.results import RESULTS, long_mode

__all__ = ["run_dir", "store"]

CYCLES = int(os.environ.get("BLOCKLINK_SOAK_CYCLES", "200" if long_mode() else "10"))


def soak(protocol: str, checker: LeakChecker, cycle: Callable[[int], None]) -> None:
    try:
        times = run_soak(protocol, CYCLES, cycle, checker)
    except LeakFound as e:
        RESULTS.leak(f"soak {protocol}: {e.when}", e.leaks)
        raise
    for t in times:
        RESULTS.cycle(protocol, t * 1000)


@pytest.mark.slow
@pytest.mark.ceph
def test_soak_rbd_handle(ceph_cluster: Any) -> None:
    vid = new_id("soak")
    target = ceph_cluster.rbd_target(include_keyring=True)
    target.create_volume(vid, 16 * MiB)
    info = target.initialize_connection(vid).to_dict()
    conn = RBDConnector(timeout=20)
    checker = leak_checker(ceph=ceph_cluster, images=(f"volume-{vid}",))

    def cycle(i: int) -> None:
        dev = conn.connect_volume(info)
        data = os.urandom(64 << 10)
        dev.handle.seek(i * 4096 % (8 * MiB))
        dev.handle.write(data)
        dev.handle.seek(i * 4096 % (8 * MiB))
        assert dev.handle.read(len(data)) == data
        conn.disconnect_volume(info, dev)

    try:
        soak("rbd handle", checker, cycle)
    finally:
        target.delete_volume(vid)
        target.close()


@pytest.mark.slow
@pytest.mark.ceph
def test_soak_rbd_userspace(ceph_cluster: Any, run_dir: str) -> None:
    vid = new_id("soak")
    target = ceph_cluster.rbd_target(include_keyring=True)
    target.create_volume(vid, 16 * MiB)
    info = target.initialize_connection(vid).to_dict()
    conn = UserspaceRBDConnector(run_dir=run_dir, timeout=20)
    checker = leak_checker(run_dirs=(run_dir,), ceph=ceph_cluster, images=(f"volume-{vid}",))

    def cycle(i: int) -> None:
        dev = conn.connect_volume(info)
        io_roundtrip(dev.path, MiB * (i % 8))
        conn.disconnect_volume(info, dev)

    try:
        soak("rbd userspace", checker, cycle)
    finally:
        target.delete_volume(vid)
        target.close()


@pytest.mark.slow
@pytest.mark.tgt
def test_soak_iscsi_userspace(tgtd: TgtDaemon, tmp_path: Any, run_dir: str) -> None:
    target = tgtd.target(backing_dir=str(tmp_path / "backing"))
    vid = new_id("soak")
    target.create_export(vid, backing_file(str(tmp_path), vid, 16 * MiB), chap=chap())
    info = target.initialize_connection(vid, {"host": "h", "initiator": HOST_IQN}).to_dict()
    conn = UserspaceISCSIConnector(run_dir=run_dir, initiator_name=HOST_IQN, timeout=20)
    checker = leak_checker(run_dirs=(run_dir,), tgtd=tgtd, target=target)

    def cycle(i: int) -> None:
        dev = conn.connect_volume(info)
        io_roundtrip(dev.path, MiB * (i % 8))
        conn.disconnect_volume(info, dev)

    try:
        soak("iscsi userspace (tgtd, CHAP)", checker, cycle)
    finally:
        target.remove_export(vid)


@pytest.mark.slow
@pytest.mark.ceph
@pytest.mark.libvirt
def test_soak_flow_rbd_network_disk(ceph_cluster: Any, store: Any, libvirt_host: Any, libvirt_domain: Any) -> None:
    vid = new_id("soak")
    target = ceph_cluster.rbd_target(include_keyring=True)
    target.create_volume(vid, 16 * MiB)
    flow = make_flow(store, libvirt_host, rbd_target=target)
    checker = leak_checker(ceph=ceph_cluster, images=(f"volume-{vid}",), libvirt_host=libvirt_host,
                           domain=libvirt_domain, store=store)

    def cycle(i: int) -> None:
        att = flow.attach_volume(spec(vid, "rbd"), libvirt_domain.name())
        assert len(ceph_cluster.watchers(f"volume-{vid}")) == 1  # QEMU has it open
        flow.detach_volume(att.id)

    try:
        soak("attach flow: rbd network disk (libvirt)", checker, cycle)
    finally:
        target.delete_volume(vid)
        target.close()


@pytest.mark.slow
@pytest.mark.tgt
@pytest.mark.libvirt
def test_soak_flow_iscsi_native(tgtd: TgtDaemon, tmp_path: Any, store: Any, libvirt_host: Any,
                                libvirt_domain: Any) -> None:
    target = tgtd.target(backing_dir=str(tmp_path / "backing"))
    vid = new_id("soak")
    backing = backing_file(str(tmp_path), vid, 16 * MiB)
    flow = make_flow(store, libvirt_host, iscsi_target=target)
    checker = leak_checker(tgtd=tgtd, target=target, libvirt_host=libvirt_host, domain=libvirt_domain, store=store)

    def cycle(i: int) -> None:
        att = flow.attach_volume(spec(vid, "iscsi", device_path=backing), libvirt_domain.name())
        assert any(s.initiator for t in tgtd.admin.show_targets() for s in t.sessions)  # QEMU logged in
        flow.detach_volume(att.id)

    soak("attach flow: iscsi native (libvirt, CHAP)", checker, cycle)
