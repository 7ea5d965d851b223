"""The attach flow on real components: Ceph (RBD network disk), tgtd (QEMU-native iSCSI with CHAP, and
userspace host attach), a private libvirtd + QEMU domain; rollback after every step; the race."""

import os
import threading
import uuid

import pytest

import blocklink
from blocklink.attach.flow import STEPS, AttachFailed, AttachFlow, VolumeSpec
from blocklink.attach.records import AttachmentStore, VolumeBusy

MiB = 1 << 20


@pytest.fixture
def store(tmp_path):
    s = AttachmentStore(str(tmp_path / "attachments.db"))
    yield s
    s.close()


@pytest.fixture
def iscsi_target(tgtd, tmp_path):
    t = tgtd.target(backing_dir=str(tmp_path / "backing"))
    yield t
    for vid in t.list_exports():
        t.remove_export(vid)


def _props():
    return blocklink.get_connector_properties(ip="127.0.0.1")


def _flow(store, libvirt_host, ceph_cluster=None, iscsi_target=None, on_step=None, userspace_dir=None):
    targets = {}
    if ceph_cluster is not None:
        targets["rbd"] = ceph_cluster.rbd_target(include_keyring=True)
    if iscsi_target is not None:
        targets["iscsi"] = iscsi_target

    def connectors(protocol):
        return blocklink.connector_for(protocol, attach="userspace", run_dir=userspace_dir)

    return AttachFlow(store=store, targets=targets, hypervisor=libvirt_host, connector_properties=_props,
                      connector_factory=connectors, on_step=on_step)


def _secrets(libvirt_host):
    return set(libvirt_host.connection.listSecrets())


def _tgt_state(tgtd):
    return tgtd.admin.show_targets() if hasattr(tgtd.admin, "show_targets") else tgtd.admin.run("show", "target")


def _disk_devs(libvirt_host, dom):
    return [d.target_dev for d in libvirt_host.disks(dom)]


def test_rbd_network_disk_attach_detach(ceph_cluster, rbd_volume, store, libvirt_host, libvirt_domain):
    secrets_before = _secrets(libvirt_host)
    flow = _flow(store, libvirt_host, ceph_cluster=ceph_cluster)
    att = flow.attach_volume(VolumeSpec(volume_id=rbd_volume, protocol="rbd", bus="scsi"), libvirt_domain.name())
    assert att.status == "attached" and att.device_name == "sda"
    xml = libvirt_host.domain_xml(libvirt_domain)
    assert f"volumes/volume-{rbd_volume}" in xml and "protocol=\"rbd\"" in xml.replace("'", '"')
    assert len(_secrets(libvirt_host) - secrets_before) == 1  # the ceph secret made for this attach
    assert len(ceph_cluster.watchers(f"volume-{rbd_volume}")) == 1  # QEMU has the image open
    assert att.connection_info["data"]["keyring"] == "***"
    flow.detach_volume(att.id)
    assert _disk_devs(libvirt_host, libvirt_domain) == []
    assert _secrets(libvirt_host) == secrets_before
    assert ceph_cluster.watchers(f"volume-{rbd_volume}") == []
    assert store.get(att.id).status == "detached"


def test_iscsi_native_disk_with_chap(tgtd, iscsi_target, store, libvirt_host, libvirt_domain, tmp_path):
    backing = str(tmp_path / "vol-i1.img")
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    secrets_before = _secrets(libvirt_host)
    flow = _flow(store, libvirt_host, iscsi_target=iscsi_target)
    vid = "i" + uuid.uuid4().hex[:8]
    att = flow.attach_volume(VolumeSpec(volume_id=vid, protocol="iscsi", device_path=backing, bus="scsi"),
                             libvirt_domain.name())
    assert att.status == "attached"
    info = att.connection_info["data"]
    assert info["auth_method"] == "CHAP" and info["auth_password"] == "***"
    assert iscsi_target.get_export(vid) is not None
    xml = libvirt_host.domain_xml(libvirt_domain)
    assert info["target_iqn"] in xml and "<auth" in xml
    flow.detach_volume(att.id)
    assert iscsi_target.get_export(vid) is None  # created by this attach, removed by its detach
    assert _disk_devs(libvirt_host, libvirt_domain) == [] and _secrets(libvirt_host) == secrets_before


def test_iscsi_userspace_host_attach(tgtd, iscsi_target, store, libvirt_host, libvirt_domain, tmp_path):
    backing = str(tmp_path / "vol-u1.img")
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    run_dir = str(tmp_path / "qsd")
    flow = _flow(store, libvirt_host, iscsi_target=iscsi_target, userspace_dir=run_dir)
    vid = "u" + uuid.uuid4().hex[:8]
    att = flow.attach_volume(VolumeSpec(volume_id=vid, protocol="iscsi", device_path=backing, host_attach=True,
                                        bus="scsi"), libvirt_domain.name())
    assert att.host_device and os.path.isfile(att.host_device)
    assert "type=\"file\"" in libvirt_host.domain_xml(libvirt_domain).replace("'", '"')
    flow.detach_volume(att.id)
    assert not os.path.exists(att.host_device)
    assert iscsi_target.get_export(vid) is None
    assert not [ln for ln in open("/proc/mounts") if run_dir in ln]


ROLLBACK_CASES = [(step, False) for step in STEPS if step != "connect"] + [("connect", True), ("hypervisor", True)]


@pytest.mark.parametrize("fail_after,host_attach", ROLLBACK_CASES,
                         ids=[f"{s}-{'host' if h else 'native'}" for s, h in ROLLBACK_CASES])
def test_rollback_after_each_step(fail_after, host_attach, tgtd, iscsi_target, store, libvirt_host, libvirt_domain,
                                  tmp_path):
    backing = str(tmp_path / "vol-r.img")
    with open(backing, "wb") as f:
        f.truncate(32 * MiB)

    class Injected(RuntimeError):
        pass

    def on_step(name, att):
        if name == fail_after:
            raise Injected(f"injected after {name}")

    secrets_before = _secrets(libvirt_host)
    run_dir = str(tmp_path / "qsd")
    flow = _flow(store, libvirt_host, iscsi_target=iscsi_target, on_step=on_step, userspace_dir=run_dir)
    vid = "r" + uuid.uuid4().hex[:8]
    with pytest.raises(AttachFailed) as ei:
        flow.attach_volume(VolumeSpec(volume_id=vid, protocol="iscsi", device_path=backing, bus="scsi",
                                      host_attach=host_attach), libvirt_domain.name())
    assert ei.value.step == fail_after and ei.value.undo_failures == ()
    assert iscsi_target.get_export(vid) is None
    assert _disk_devs(libvirt_host, libvirt_domain) == [] and _secrets(libvirt_host) == secrets_before
    assert [a.status for a in store.list(volume_id=vid)] == ["error"]
    assert not [ln for ln in open("/proc/mounts") if run_dir in ln]
    assert not os.path.exists(run_dir) or not [n for n in os.listdir(run_dir) if n.startswith("iscsi-")]


def test_concurrent_attach_of_one_volume_has_one_winner(ceph_cluster, rbd_volume, store, libvirt_host,
                                                         libvirt_domain):
    second = libvirt_host.connection.defineXML(
        __import__("blocklink.testing.libvirtd", fromlist=["tiny_domain_xml"]).tiny_domain_xml(
            f"bl-{uuid.uuid4().hex[:10]}"))
    second.create()
    try:
        flow = _flow(store, libvirt_host, ceph_cluster=ceph_cluster)
        results = {}
        barrier = threading.Barrier(2)

        def go(dom):
            barrier.wait()
            try:
                results[dom] = flow.attach_volume(VolumeSpec(volume_id=rbd_volume, protocol="rbd", bus="scsi"), dom)
            except VolumeBusy as e:
                results[dom] = e

        threads = [threading.Thread(target=go, args=(d.name(),)) for d in (libvirt_domain, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        winners = [r for r in results.values() if not isinstance(r, Exception)]
        losers = [r for r in results.values() if isinstance(r, VolumeBusy)]
        assert len(winners) == 1 and len(losers) == 1, results
        flow.detach_volume(winners[0].id)
        assert ceph_cluster.watchers(f"volume-{rbd_volume}") == []
    finally:
        second.destroy()
        second.undefine()


CHILD = r"""
import os, signal, sys, blocklink
from blocklink.attach.flow import AttachFlow, VolumeSpec
from blocklink.attach.records import AttachmentStore
from blocklink.hypervisor.live import LibvirtHost
from blocklink.target.tgt import TgtTarget
db, uri, cport, portal, backing_dir, config_dir, lock_path, vid, backing, dom, kill_after = sys.argv[1:]
target = TgtTarget(portals=[portal], control_port=int(cport), backing_dir=backing_dir, config_dir=config_dir,
                   lock_path=lock_path)
def on_step(name, att):
    if name == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
flow = AttachFlow(store=AttachmentStore(db), targets={"iscsi": target}, hypervisor=LibvirtHost(uri),
                  connector_properties=lambda: blocklink.get_connector_properties(ip="127.0.0.1"), on_step=on_step)
flow.attach_volume(VolumeSpec(volume_id=vid, protocol="iscsi", device_path=backing, bus="scsi"), dom)
"""


@pytest.mark.parametrize("kill_after", ["export", "initialize", "hypervisor"])
def test_killed_process_then_reconcile(kill_after, tgtd, iscsi_target, store, libvirtd, libvirt_host, libvirt_domain,
                                       tmp_path):
    import subprocess
    import sys

    backing = str(tmp_path / "vol-k.img")
    with open(backing, "wb") as f:
        f.truncate(32 * MiB)
    vid = "k" + uuid.uuid4().hex[:8]
    db = store.url[len("sqlite:///"):]
    secrets_before = _secrets(libvirt_host)
    p = subprocess.run([sys.executable, "-c", CHILD, db, libvirtd.uri, str(tgtd.control_port), tgtd.portal,
                        iscsi_target.backing_dir, iscsi_target.store.directory, iscsi_target.locks.lock_path, vid,
                        backing,
                        libvirt_domain.name(), kill_after], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr[-2000:]
    (rec,) = store.list(volume_id=vid)
    assert rec.status == "attaching" and rec.steps[-1] == kill_after
    flow = _flow(store, libvirt_host, iscsi_target=iscsi_target)
    report = flow.reconcile()
    assert [r["volume_id"] for r in report] == [vid]
    if kill_after == "hypervisor":  # all done but the final record: completed, then detach normally
        assert report[0]["action"] == "completed"
        flow.detach_volume(rec.id)
    else:
        assert report[0]["action"] == "rolled back" and store.get(rec.id).status == "error"
    assert iscsi_target.get_export(vid) is None
    assert _disk_devs(libvirt_host, libvirt_domain) == [] and _secrets(libvirt_host) == secrets_before
