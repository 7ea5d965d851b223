"""The attach flow with file-backed fakes: success, a failure injected at every step, detach, reconcile
after a process killed between steps (a real fork + os._exit)."""

import json
import os

import pytest

from blocklink.attach.flow import STEPS, AttachFailed, AttachFlow, VolumeSpec
from blocklink.attach.records import AttachmentStore
from blocklink.connection import AttachedDevice, IscsiInfo
from tests.harness import children


class State:
    """All fake components keep their state in one JSON file, so a forked child's changes persist."""

    def __init__(self, path):
        self.path = path
        if not os.path.exists(path):
            self.save({"exports": [], "acls": [], "sessions": [], "disks": {}, "secrets": []})

    def load(self):
        with open(self.path) as f:
            return json.load(f)

    def save(self, s):
        with open(self.path, "w") as f:
            json.dump(s, f)

    def change(self, fn):
        s = self.load()
        fn(s)
        self.save(s)


class Boom(RuntimeError):
    pass


class Faults:
    def __init__(self, where=None):
        self.where = where

    def check(self, name):
        if self.where == name:
            raise Boom(f"injected failure in {name}")


class FakeTarget:
    def __init__(self, st, faults):
        self.st, self.faults = st, faults

    def get_export(self, vid):
        return vid if vid in self.st.load()["exports"] else None

    def create_export(self, vid, device_path, size=None):
        self.st.change(lambda s: s["exports"].append(vid))
        self.faults.check("create_export")

    def remove_export(self, vid):  # idempotent, like the real helpers
        self.st.change(lambda s: vid in s["exports"] and s["exports"].remove(vid))

    def initialize_connection(self, vid, connector, *, access_mode="rw"):
        self.st.change(lambda s: s["acls"].append([vid, connector["initiator"]]))
        self.faults.check("initialize_connection")
        return IscsiInfo.from_dict({"target_portal": "127.0.0.1:3260", "target_iqn": f"iqn.2010-10.org.test:{vid}",
                                    "target_lun": 0, "auth_method": "CHAP", "auth_username": "u",
                                    "auth_password": "chap-secret-xyz", "volume_id": vid})

    def terminate_connection(self, vid, connector):
        acl = [vid, connector["initiator"]]
        self.st.change(lambda s: acl in s["acls"] and s["acls"].remove(acl))


class FakeConnector:
    def __init__(self, st, faults):
        self.st, self.faults = st, faults

    def connect_volume(self, info):
        self.st.change(lambda s: s["sessions"].append(info.volume_id))
        self.faults.check("connect_volume")
        return AttachedDevice(protocol="iscsi", path=f"/dev/fake-{info.volume_id}")

    def disconnect_volume(self, info, device, force=False):
        self.st.change(lambda s: info.volume_id in s["sessions"] and s["sessions"].remove(info.volume_id))


class FakeHypervisor:
    def __init__(self, st, faults):
        self.st, self.faults = st, faults

    def next_device_name(self, domain, bus, reserved=()):
        used = set(self.st.load()["disks"].get(domain, [])) | set(reserved)
        return next(f"vd{c}" for c in "bcdefgh" if f"vd{c}" not in used)

    def attach_volume(self, domain, info, device, bus="virtio", target_dev=None, **opts):
        def add(s):
            s["disks"].setdefault(domain, []).append(target_dev)
            s["secrets"].append(target_dev)
        self.st.change(add)
        try:
            self.faults.check("attach_volume")
        except Boom:  # like LibvirtHost: a failed attach removes the secret it defined (the disk may stay)
            self.st.change(lambda s: s["secrets"].remove(target_dev))
            raise

        class Att:
            secret_uuid = target_dev
            xml = "<disk/>"
        return Att()

    def find_disk(self, domain, target_dev):
        return target_dev if target_dev in self.st.load()["disks"].get(domain, []) else None

    def detach_volume(self, domain, att):
        def rm(s):
            if att.target_dev in s["disks"].get(domain, []):
                s["disks"][domain].remove(att.target_dev)
            if att.secret_uuid in s["secrets"]:
                s["secrets"].remove(att.secret_uuid)
        self.st.change(rm)


CONNECTOR = {"host": "h1", "initiator": "iqn.1993-08.org.debian:01:h1", "multipath": False}


def make_flow(tmp_path, fault=None, on_step=None):
    st = State(str(tmp_path / "state.json"))
    faults = Faults(fault)
    store = AttachmentStore(str(tmp_path / "att.db"))
    flow = AttachFlow(store=store, targets={"iscsi": FakeTarget(st, faults)}, hypervisor=FakeHypervisor(st, faults),
                      connector_factory=lambda p: FakeConnector(st, faults),
                      connector_properties=lambda: (faults.check("connector_properties"), dict(CONNECTOR))[1],
                      on_step=on_step)
    return flow, st, store


def empty(st):
    s = st.load()
    return not s["exports"] and not s["acls"] and not s["sessions"] and not any(s["disks"].values()) \
        and not s["secrets"]


SPEC = VolumeSpec(volume_id="vol1", protocol="iscsi", device_path="/dev/vg/vol1", host_attach=True)


def test_attach_and_detach(tmp_path):
    steps = []
    flow, st, store = make_flow(tmp_path, on_step=lambda n, a: steps.append(n))
    att = flow.attach_volume(SPEC, "inst1")
    assert att.status == "attached" and att.device_name == "vdb" and att.host_device == "/dev/fake-vol1"
    assert steps == list(STEPS)
    assert att.connection_info["data"]["auth_password"] == "***"
    s = st.load()
    assert s["exports"] == ["vol1"] and s["sessions"] == ["vol1"] and s["disks"] == {"inst1": ["vdb"]}
    done = flow.detach_volume(att.id)
    assert done.status == "detached" and empty(st)


@pytest.mark.parametrize("fault", ["connector_properties", "create_export", "initialize_connection",
                                   "connect_volume", "attach_volume"])
def test_failure_at_each_step_leaves_nothing(tmp_path, fault):
    flow, st, store = make_flow(tmp_path, fault=fault)
    with pytest.raises(AttachFailed) as ei:
        flow.attach_volume(SPEC, "inst1")
    assert ei.value.step in STEPS and ei.value.undo_failures == ()
    assert "chap-secret-xyz" not in str(ei.value)
    assert empty(st), st.load()
    assert [a.status for a in store.list()] == ["error"]
    # the volume is free again
    flow2, _, _ = make_flow(tmp_path)
    assert flow2.attach_volume(SPEC, "inst1").status == "attached"


def test_step_names_in_error(tmp_path):
    flow, st, _ = make_flow(tmp_path, fault="initialize_connection")
    with pytest.raises(AttachFailed) as ei:
        flow.attach_volume(SPEC, "inst1")
    assert ei.value.step == "initialize" and "initialize" in str(ei.value)


def test_existing_export_is_kept_on_rollback(tmp_path):
    flow, st, _ = make_flow(tmp_path, fault="attach_volume")
    st.change(lambda s: s["exports"].append("vol1"))  # exported before this attach
    with pytest.raises(AttachFailed):
        flow.attach_volume(SPEC, "inst1")
    assert st.load()["exports"] == ["vol1"] and not st.load()["acls"]


def test_device_names_not_reused_across_records(tmp_path):
    flow, st, _ = make_flow(tmp_path)
    a = flow.attach_volume(SPEC, "inst1")
    b = flow.attach_volume(VolumeSpec(volume_id="vol2", protocol="iscsi", host_attach=True), "inst1")
    assert (a.device_name, b.device_name) == ("vdb", "vdc")


def _killed_child(tmp_path, kill_after):
    def on_step(name, att):
        if name == kill_after:
            os._exit(9)  # like SIGKILL: no rollback, no final record update
    flow, _, _ = make_flow(tmp_path, on_step=on_step)
    flow.attach_volume(SPEC, "inst1")
    os._exit(0)


@pytest.mark.parametrize("kill_after", list(STEPS))
def test_reconcile_after_kill(tmp_path, kill_after):
    assert children.join([children.start(_killed_child, tmp_path, kill_after)], 60) == [9]
    flow, st, store = make_flow(tmp_path)
    (rec,) = store.list()
    assert rec.status == "attaching"
    report = flow.reconcile()
    (after,) = store.list()
    if kill_after == "hypervisor":  # everything was done: reconcile completes the attach
        assert report[0]["action"] == "completed" and after.status == "attached"
        flow.detach_volume(after.id)
    else:
        assert report[0]["action"] == "rolled back" and after.status == "error"
    assert empty(st), st.load()
    assert flow.reconcile() == []
