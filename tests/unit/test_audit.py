"""blocklink audit on a fake host (FakeHostTree + simulated open-iscsi/multipathd) with a real SQLite
store: orphans of an attach nobody recorded, explained state, ghosts, mismatches, and a clean that
removes only what it proves safe."""

from __future__ import annotations

import os
from typing import Any

from blocklink import cli
from blocklink.attach.records import AttachmentStore
from blocklink.audit import Auditor
from blocklink.connection import parse_connection_info
from tests.unit.test_iscsi_connector import assert_clean, kernel, make, multi, tree  # noqa: F401

HOST = "h1"


def auditor(kernel: Any, store: AttachmentStore) -> Auditor:  # noqa: F811
    return Auditor(store, executor=kernel.executor, paths=kernel.tree.paths, host=HOST)


def kinds(objs: Any) -> list:
    return sorted((o.kind, o.name) for o in objs)


def record(store: AttachmentStore, info: Any, dev: Any, wwn: Any = None) -> str:
    rec = store.reserve("vol-0", "inst")
    store.record_step(rec.id, "initialize", protocol="iscsi", connection_info=info, host=HOST)
    store.record_step(rec.id, "connect", host_device=dev.path, extra={"device_wwn": wwn or dev.wwn})
    store.transition(rec.id, ["attaching"], "attached")
    return rec.id


def test_an_unrecorded_multipath_attach_is_all_orphans_and_clean_removes_it(tree, kernel, tmp_path) -> None:  # noqa: F811
    store = AttachmentStore(str(tmp_path / "a.db"))
    dev = make(kernel, tmp_path, use_multipath=True).connect_volume(multi(0))
    report = auditor(kernel, store).audit()
    iqn = multi()["data"]["target_iqn"]
    mp = [o for o in report.orphans if o.kind == "multipath_map"][0]
    assert kinds(report.orphans) == [("iscsi_node", f"{iqn} 10.0.0.1:3260"), ("iscsi_node", f"{iqn} 10.0.0.2:3260"),
                                     ("iscsi_session", "session1"), ("iscsi_session", "session2"),
                                     ("multipath_map", mp.name), ("scsi_disk", "sda"), ("scsi_disk", "sdb")]
    assert mp.device == "dm-0" == os.path.basename(dev.path) and mp.wwn == dev.wwn
    assert report.ghosts == [] and report.mismatches == [] and not report.clean
    cleaned = auditor(kernel, store).clean(report)
    assert cleaned.refused == [] and len(cleaned.removed) == 7
    assert_clean(tree, kernel)
    assert auditor(kernel, store).audit().clean


def test_recorded_state_is_explained_and_ghosts_and_mismatches_are_found(tree, kernel, tmp_path) -> None:  # noqa: F811
    store = AttachmentStore(str(tmp_path / "a.db"))
    conn = make(kernel, tmp_path, use_multipath=True)
    info = parse_connection_info(multi(0)).to_dict()
    dev = conn.connect_volume(info)
    rid = record(store, info, dev)
    report = auditor(kernel, store).audit()
    assert report.clean and len(report.explained) == 7
    assert "***" in str(store.get(rid).connection_info)  # the record keeps no CHAP secret
    other = store.reserve("vol-ghost", "inst")
    store.record_step(other.id, "connect", host_device="/dev/sdz", protocol="iscsi", host=HOST)
    store.transition(other.id, ["attaching"], "attached")
    wrong = store.reserve("vol-wrong", "inst", multiattach=True)
    store.record_step(wrong.id, "connect", host_device="/dev/sda", extra={"device_wwn": "36001405deadbeef"},
                      protocol="iscsi", host=HOST)
    store.transition(wrong.id, ["attaching"], "attached")
    report = auditor(kernel, store).audit()
    assert [(g.volume_id, g.device) for g in report.ghosts] == [("vol-ghost", "/dev/sdz")]
    assert [(m.volume_id, m.device) for m in report.mismatches] == [("vol-wrong", "/dev/sda")]
    assert "36001405deadbeef" in report.mismatches[0].message
    assert report.orphans == []
    conn.disconnect_volume(info, dev)
    report = auditor(kernel, store).audit()
    assert {g.volume_id for g in report.ghosts} == {"vol-0", "vol-ghost", "vol-wrong"}  # every device gone


def test_records_of_other_hosts_explain_nothing_here(tree, kernel, tmp_path) -> None:  # noqa: F811
    store = AttachmentStore(str(tmp_path / "a.db"))
    info = parse_connection_info(multi(0)).to_dict()
    dev = make(kernel, tmp_path, use_multipath=True).connect_volume(info)
    record(store, info, dev)
    report = Auditor(store, executor=kernel.executor, paths=kernel.tree.paths, host="elsewhere").audit()
    assert len(report.orphans) == 7
    make(kernel, tmp_path, use_multipath=True).disconnect_volume(info, dev)


def test_clean_refuses_what_is_in_use_or_changed_and_says_why(tree, kernel, tmp_path) -> None:  # noqa: F811
    store = AttachmentStore(str(tmp_path / "a.db"))
    conn = make(kernel, tmp_path)
    info = parse_connection_info(multi(0)).to_dict()
    dev = conn.connect_volume(info)  # single path: sda on one session, no map
    report = auditor(kernel, store).audit()
    disk = [o for o in report.orphans if o.kind == "scsi_disk"][0]
    os.makedirs(tree.p("proc", "self"), exist_ok=True)
    with open(tree.p("sys", "block", "sda", "dev"), "w") as f:
        f.write("8:0\n")
    with open(tree.p("proc", "self", "mountinfo"), "w") as f:
        f.write("36 25 8:0 / /mnt/data rw,relatime shared:1 - ext4 /dev/sda rw\n")
    cleaned = auditor(kernel, store).clean(report)
    refused = {o.kind: why for o, why in cleaned.refused}
    assert refused["scsi_disk"] == "mounted on /mnt/data"
    assert refused["iscsi_session"] == "LUN device(s) sda still on the session"
    assert "a session uses the record" in refused["iscsi_node"]
    assert os.path.exists(tree.p("sys", "block", "sda")) and kernel.session_ids()  # all left in place
    os.unlink(tree.p("proc", "self", "mountinfo"))
    # a record appearing between audit and clean protects everything it names
    rid = record(store, info, dev)
    cleaned = auditor(kernel, store).clean(auditor(kernel, store.__class__(str(tmp_path / "empty.db"))).audit())
    assert cleaned.removed == [] and {why for _, why in cleaned.refused} == {"a record names it now"}
    store.transition(rid, ["attached"], "detached")
    # a disk whose LU changed since the audit is not removed on the audit's word
    stale = type(disk)(disk.kind, disk.name, disk.device, "36001405feedface", disk.ids)
    report = auditor(kernel, store).audit()
    report.orphans = [stale]
    assert [why for _, why in auditor(kernel, store).clean(report).refused][0].startswith("WWN changed since the audit")
    final = auditor(kernel, store).clean()
    assert final.refused == [] and auditor(kernel, store).audit().clean
    assert_clean(tree, kernel)


def test_cli_audit_json_and_exit_status(tree, kernel, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    import json

    import blocklink.audit as audit_mod

    real = audit_mod.Auditor
    monkeypatch.setattr(audit_mod, "Auditor", lambda store, host=None, **kw: real(store, executor=kernel.executor,
                                                                                  paths=kernel.tree.paths, host=HOST))
    db = str(tmp_path / "cli.db")
    assert cli.main(["audit", "--store", db]) == 0
    assert json.loads(capsys.readouterr().out)["orphans"] == []
    make(kernel, tmp_path).connect_volume(multi(0))
    assert cli.main(["audit", "--store", db]) == 1
    assert {o["kind"] for o in json.loads(capsys.readouterr().out)["orphans"]} == {"iscsi_session", "scsi_disk",
                                                                                 "iscsi_node"}
    assert cli.main(["audit", "--store", db, "--clean"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["removed"]) == 3 and out["refused"] == []
    assert_clean(tree, kernel)


def test_nvme_and_rbd_records_explain_their_kernel_objects(tmp_path) -> None:
    from blocklink.audit import KernelObject, _Known

    store = AttachmentStore(str(tmp_path / "a.db"))
    for vid, proto, data in (("n1", "nvmeof", {"target_nqn": "nqn.2014-08.org.x:a", "portals": [["10.0.0.1", 4420,
                                                                                              "tcp"]]}),
                             ("n2", "nvmeof", {"nqn": "nqn.2014-08.org.x:legacy", "target_portal": "10.0.0.1",
                                               "target_port": 4420}),
                             ("r1", "rbd", {"name": "volumes/vol-r1", "hosts": ["127.0.0.1"], "ports": ["6789"]})):
        rec = store.reserve(vid, "vm")
        store.record_step(rec.id, "initialize", protocol=proto, host=HOST,
                          connection_info={"driver_volume_type": proto, "data": data})
    a = Auditor(store, host=HOST)
    k = a._known(a.records())
    assert isinstance(k, _Known)

    def verdict(obj: KernelObject) -> object:
        return a._explained(obj, k, set())

    assert verdict(KernelObject("nvme_controller", "nvme1", ids={"nqn": "nqn.2014-08.org.x:a"})) is True
    assert verdict(KernelObject("nvme_controller", "nvme2", ids={"nqn": "nqn.2014-08.org.x:legacy"})) is True
    assert verdict(KernelObject("nvme_controller", "nvme3", ids={"nqn": "nqn.2014-08.org.x:other"})) is False
    assert verdict(KernelObject("rbd_mapping", "rbd0", "rbd0", ids={"image": "volumes/vol-r1", "id": "0"})) is True
    assert verdict(KernelObject("rbd_mapping", "rbd1", "rbd1", ids={"image": "volumes/other", "id": "1"})) is False
    assert verdict(KernelObject("nbd_mapping", "nbd0", "nbd0", ids={"pid": "1"})) is False
    # a crypt mapping over a local disk is the host's business; over a transport disk it is judged
    assert a._explained(KernelObject("dm_crypt", "root", "dm-9", ids={"slaves": "vda2"}), k, {"sda"}) is None
    assert a._explained(KernelObject("dm_crypt", "vol", "dm-8", ids={"slaves": "sda"}), k, {"sda"}) is False


def test_an_nbd_mapping_is_not_in_use_by_the_process_serving_it(tmp_path) -> None:
    from blocklink.audit import KernelObject
    from blocklink.testing.fakes import FakeExecutor
    from blocklink.testing.hosttree import FakeHostTree

    fake = FakeHostTree(str(tmp_path / "host"))
    fake._write(fake.p("sys", "block", "nbd0", "pid"), "489\n")
    fake._write(fake.p("sys", "block", "nbd0", "dev"), "43:0\n")
    os.makedirs(fake.p("sys", "block", "nbd0", "holders"))
    fake._write(fake.p("proc", "489", "status"), "Name:\tqemu-nbd\nTgid:\t487\nPid:\t489\n")
    fake._write(fake.p("proc", "487", "comm"), "qemu-nbd\n")
    os.makedirs(fake.p("proc", "487", "fd"))
    os.symlink("/dev/nbd0", fake.p("proc", "487", "fd", "9"))
    ex = FakeExecutor().on(("qemu-nbd", "--disconnect", "/dev/nbd0"), "")
    a = Auditor(AttachmentStore(str(tmp_path / "a.db")), executor=ex, paths=fake.paths, host=HOST)
    report = a.audit()
    assert kinds(report.orphans) == [("nbd_mapping", "nbd0")]
    os.makedirs(fake.p("proc", "600", "fd"))
    fake._write(fake.p("proc", "600", "comm"), "dd\n")
    os.symlink("/dev/nbd0", fake.p("proc", "600", "fd", "3"))
    refused = a.clean(a.audit()).refused
    assert [(o.name, why) for o, why in refused] == [("nbd0", "open by pid 600 (dd)")]
    os.unlink(fake.p("proc", "600", "fd", "3"))
    cleaned = a.clean(a.audit())
    assert cleaned.refused == [] and [o.name for o in cleaned.removed] == ["nbd0"]
    assert ex.argvs(("qemu-nbd",)) == [("qemu-nbd", "--disconnect", "/dev/nbd0")]
    assert isinstance(report.orphans[0], KernelObject)


# ---------------------------------------------------------------------------------------------
# userspace daemons and libvirt secrets
RUN = "/run/blocklink/qsd/iscsi-0123456789abcdef"


def fake_process(host: Any, pid: int, *argv: str) -> None:
    d = host.p("proc", str(pid))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "cmdline"), "wb") as f:
        f.write(b"\0".join(a.encode() for a in argv) + b"\0")
    with open(os.path.join(d, "stat"), "w") as f:
        f.write(f"{pid} ({os.path.basename(argv[0])[:15]}) S 1 {pid} {pid} 0 -1\n")


def test_userspace_daemons_without_a_record_are_orphans_clean_leaves_them(tree, kernel, tmp_path) -> None:  # noqa: F811
    store = AttachmentStore(str(tmp_path / "a.db"))
    fake_process(tree, 101, "/usr/bin/qemu-storage-daemon", "--chardev",
                 f"socket,id=qmp,path={RUN}/qmp.sock,server=on,wait=off", "--pidfile", f"{RUN}/qsd.pid")
    fake_process(tree, 102, "/usr/bin/nbdfuse", "-P", f"{RUN}/nbdfuse.ready", f"{RUN}/disk",
                 f"nbd+unix:///vol?socket={RUN}/nbd.sock")
    fake_process(tree, 103, "qemu-storage-daemon", "--chardev", "socket,id=qmp,path=/tmp/other/qmp.sock")  # not ours
    fake_process(tree, 104, "/bin/cat", f"{RUN}/disk")  # names the run dir, is no daemon of ours
    report = auditor(kernel, store).audit()
    assert kinds(report.orphans) == [("userspace_daemon", "nbdfuse 102"), ("userspace_daemon", "qemu-storage-daemon 101")]
    assert {o.ids["run_dir"] for o in report.orphans} == {RUN}
    cleaned = auditor(kernel, store).clean(report)
    assert cleaned.removed == [] and all("cannot be proven" in why for _, why in cleaned.refused)
    rec = store.reserve("vol-u", "inst")
    store.record_step(rec.id, "connect", host_device=f"{RUN}/disk", protocol="iscsi", host=HOST)
    store.transition(rec.id, ["attaching"], "attached")
    report = auditor(kernel, store).audit()
    assert report.orphans == [] and len(report.explained) == 2


class FakeSecret:
    def __init__(self, lv: "FakeLibvirt", uuid: str, usage_type: str, usage: str) -> None:
        self.lv, self.uuid, self.usage_type, self.usage = lv, uuid, usage_type, usage

    def XMLDesc(self, flags: int = 0) -> str:
        element = {"ceph": "name", "iscsi": "target", "volume": "volume"}[self.usage_type]
        return (f"<secret ephemeral='no' private='yes'><uuid>{self.uuid}</uuid><usage type='{self.usage_type}'>"
                f"<{element}>{self.usage}</{element}></usage></secret>")

    def undefine(self) -> None:
        del self.lv.secrets[self.uuid]


class FakeDomain:
    def __init__(self, name: str, secret: str) -> None:
        self._name, self.secret = name, secret

    def name(self) -> str:
        return self._name

    def XMLDesc(self, flags: int = 0) -> str:
        return (f"<domain><devices><disk type='network'><auth username='admin'><secret type='ceph' "
                f"uuid='{self.secret}'/></auth></disk></devices></domain>")


class FakeLibvirt:
    def __init__(self) -> None:
        self.secrets: dict = {}
        self.domains: list = []

    def add(self, uuid: str, usage_type: str, usage: str) -> None:
        self.secrets[uuid] = FakeSecret(self, uuid, usage_type, usage)

    def listSecrets(self) -> list:
        return list(self.secrets)

    def secretLookupByUUIDString(self, uuid: str) -> FakeSecret:
        return self.secrets[uuid]

    def listAllDomains(self, flags: int = 0) -> list:
        return self.domains


def test_libvirt_secrets_blocklink_defined_without_a_record(tree, kernel, tmp_path) -> None:  # noqa: F811
    store = AttachmentStore(str(tmp_path / "a.db"))
    lv = FakeLibvirt()
    u = [f"0000000{i}-0000-4000-8000-000000000000" for i in range(6)]
    lv.add(u[0], "iscsi", f"blocklink iqn.2010-10.org.openstack:volume-1 lun 0 {u[0]}")  # orphan, unused
    lv.add(u[1], "ceph", f"blocklink client.admin {u[1]}")  # orphan, but a domain still names it
    lv.add(u[2], "ceph", "client.nova secret")  # the operator's own: not ours to judge
    lv.add(u[3], "iscsi", f"blocklink iqn.2010-10.org.openstack:volume-2 lun 0 {u[3]}")  # a record holds it
    lv.add(u[4], "volume", f"/blocklink/luks/vol-luks/{u[5]}")  # LUKS secret of an attached volume
    lv.domains.append(FakeDomain("vm1", u[1]))
    rec = store.reserve("vol-2", "inst")
    store.record_step(rec.id, "hypervisor", extra={"secret_uuid": u[3]}, protocol="iscsi", host=HOST)
    store.transition(rec.id, ["attaching"], "attached")
    rec = store.reserve("vol-luks", "inst")
    store.record_step(rec.id, "hypervisor", protocol="iscsi", host=HOST)
    store.transition(rec.id, ["attaching"], "attached")
    a = Auditor(store, executor=kernel.executor, paths=kernel.tree.paths, host=HOST, libvirt=lv)
    report = a.audit()
    assert kinds(report.orphans) == [("libvirt_secret", u[0]), ("libvirt_secret", u[1])]
    assert sorted(o.name for o in report.explained) == [u[3], u[4]]
    cleaned = a.clean(report)
    assert [o.name for o in cleaned.removed] == [u[0]] and sorted(lv.secrets) == [u[1], u[2], u[3], u[4]]
    assert [(o.name, why) for o, why in cleaned.refused] == [(u[1], "used by domain(s) vm1")]
    # without a libvirt connection nothing of libvirt is audited
    assert auditor(kernel, store).audit().orphans == []
