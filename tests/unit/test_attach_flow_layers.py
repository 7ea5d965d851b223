"""The attach flow's optional host-side layers with file-backed fakes: host-side LUKS (encrypt step),
staging (stage/publish, no hypervisor), QEMU-native LUKS for network disks. Ordering of attach, detach
and rollback, what the records keep, a layer that cannot be undone, reconcile after a kill."""

import os

import pytest

from blocklink.attach.flow import ALL_STEPS, AttachFailed, AttachFlow, VolumeSpec
from blocklink.attach.records import AttachmentStore
from blocklink.connection import AttachedDevice
from blocklink.encryption import InvalidEncryption, KeyNotFound, StaticKeyManager
from blocklink.errors import DetachFailed, InvalidOption
from blocklink.masking import Secret
from tests.harness import children
from tests.unit.test_attach_flow import CONNECTOR, Boom, Faults, FakeHypervisor, FakeTarget, State

PASSPHRASE = "luks-passphrase-0123456789abcdef"
ENCRYPTION = {"provider": "luks2", "control_location": "front-end", "encryption_key_id": "k1"}


def log(st, *event):
    st.change(lambda s: s.setdefault("events", []).append(list(event)))


class Connector:
    def __init__(self, st, faults):
        self.st, self.faults = st, faults

    def connect_volume(self, info):
        self.st.change(lambda s: s["sessions"].append(info.volume_id))
        log(self.st, "connect", info.volume_id)
        self.faults.check("connect_volume")
        return AttachedDevice(protocol="iscsi", path=f"/dev/sd-{info.volume_id}", wwn="wwn-" + info.volume_id)

    def disconnect_volume(self, info, device, force=False):
        log(self.st, "disconnect", device.path if device else None)
        self.st.change(lambda s: info.volume_id in s["sessions"] and s["sessions"].remove(info.volume_id))


class Encryptor:
    """Like LuksEncryptor: attach opens (idempotent) and returns the dm-crypt device; detach closes."""

    def __init__(self, spec, st, faults):
        self.spec, self.st, self.faults = spec, st, faults

    def attach(self, device, key, *, volume_id, new_volume=False):
        assert isinstance(key, Secret) and key.reveal() == PASSPHRASE
        name = f"crypt-{volume_id}"
        self.st.change(lambda s: s.setdefault("mappings", {}).__setitem__(name, device.path))
        log(self.st, "encrypt", device.path, new_volume)
        self.faults.check("encrypt")  # after opening: a half-happened step
        return AttachedDevice(protocol=device.protocol, path=f"/dev/mapper/{name}", wwn=device.wwn)

    def detach(self, volume_id, force=False):
        name = f"crypt-{volume_id}"
        log(self.st, "close", name)
        self.faults.check("close")
        self.st.change(lambda s: s.get("mappings", {}).pop(name, None))


class Staged:
    def __init__(self, device):
        self.device, self.fs_uuid, self.formatted = device, "uuid-1", True


class Stager:
    def __init__(self, st, faults):
        self.st, self.faults = st, faults

    def stage(self, device, path, fs_type="ext4", mount_options=(), mkfs_options=()):
        log(self.st, "stage", device.path, path, fs_type)
        self.faults.check("stage")
        self.st.change(lambda s: s.setdefault("mounts", {}).__setitem__(path, device.path))
        return Staged(device.path)

    def publish(self, staging_path, target, readonly=False):
        log(self.st, "publish", staging_path, target, readonly)
        self.faults.check("publish")
        self.st.change(lambda s: s["mounts"].__setitem__(target, s["mounts"][staging_path]))

    def unpublish(self, target, force=False):
        log(self.st, "unpublish", target)
        self.st.change(lambda s: s.get("mounts", {}).pop(target, None))

    def unstage(self, path, force=False):
        log(self.st, "unstage", path)
        self.faults.check("unstage")
        self.st.change(lambda s: s.get("mounts", {}).pop(path, None))


class Hypervisor(FakeHypervisor):
    def attach_volume(self, domain, info, device, bus="virtio", target_dev=None, **opts):
        log(self.st, "plug", device.path if device else None, "encryption_passphrase" in opts)
        att = super().attach_volume(domain, info, device, bus=bus, target_dev=target_dev, **opts)
        if "encryption_passphrase" in opts:
            att.encryption_secret_uuid = "luks-" + target_dev
        att.xml = f"<disk><source dev='{device.path if device else ''}'/></disk>"
        return att

    def detach_volume(self, domain, att):
        log(self.st, "unplug", att.target_dev, att.encryption_secret_uuid)
        super().detach_volume(domain, att)


def make(tmp_path, fault=None, on_step=None, hypervisor=True, keys=True):
    st = State(str(tmp_path / "state.json"))
    faults = Faults(fault)
    store = AttachmentStore(str(tmp_path / "att.db"))
    flow = AttachFlow(store=store, targets={"iscsi": FakeTarget(st, faults)},
                      hypervisor=Hypervisor(st, faults) if hypervisor else None,
                      connector_factory=lambda p: Connector(st, faults),
                      connector_properties=lambda: dict(CONNECTOR), on_step=on_step,
                      key_manager=StaticKeyManager({"k1": Secret(PASSPHRASE)}) if keys else None,
                      encryptor_factory=lambda spec: Encryptor(spec, st, faults), stager=Stager(st, faults))
    return flow, st, store


def events(st):
    return [e[0] for e in st.load().get("events", [])]


def nothing_left(st):
    s = st.load()
    return not (s["exports"] or s["acls"] or s["sessions"] or any(s["disks"].values()) or s["secrets"]
                or s.get("mappings") or s.get("mounts"))


ENC = VolumeSpec(volume_id="vol1", protocol="iscsi", host_attach=True, encryption=ENCRYPTION, new_volume=True)
STAGED = VolumeSpec(volume_id="vol1", protocol="iscsi", host_attach=True, encryption=ENCRYPTION, new_volume=True,
                    staging_path="/srv/stage/vol1", fs_type="xfs", publish_path="/srv/pods/p1/vol1")


def test_plan_per_volume():
    assert ENC.plan() == ("reserve", "device_name", "connector", "export", "initialize", "connect", "encrypt",
                          "hypervisor")
    assert STAGED.plan() == ("reserve", "connector", "export", "initialize", "connect", "encrypt", "stage",
                             "publish")
    plain = VolumeSpec(volume_id="v", protocol="rbd")
    assert plain.plan() == ("reserve", "device_name", "connector", "export", "initialize", "hypervisor")
    back_end = VolumeSpec(volume_id="v", protocol="iscsi", host_attach=True,
                          encryption=dict(ENCRYPTION, control_location="back-end"))
    assert "encrypt" not in back_end.plan() and back_end.encryption_spec() is None
    assert set(STAGED.plan()) | set(ENC.plan()) == set(ALL_STEPS)


def test_encrypted_attach_and_detach_order(tmp_path):
    steps = []
    flow, st, store = make(tmp_path, on_step=lambda n, a: steps.append(n))
    att = flow.attach_volume(ENC, "inst1")
    assert steps == list(ENC.plan())
    assert events(st) == ["connect", "encrypt", "plug"]
    s = st.load()
    assert s["events"][1] == ["encrypt", "/dev/sd-vol1", True]
    assert s["events"][2] == ["plug", "/dev/mapper/crypt-vol1", False]  # the domain gets the dm-crypt device
    assert s["mappings"] == {"crypt-vol1": "/dev/sd-vol1"}
    # the record: the connector's device (audits check its WWN), the mapping, no key
    assert att.host_device == "/dev/sd-vol1"
    enc = att.extra["encryption"]
    assert enc["mapping"] == "crypt-vol1" and enc["device"] == "/dev/mapper/crypt-vol1" and enc["host_side"]
    assert enc["lower_path"] == "/dev/sd-vol1" and enc["key_id"] == "k1"
    assert "/dev/mapper/crypt-vol1" in att.extra["disk_xml"]
    assert PASSPHRASE not in repr(store.list())
    st.change(lambda s: s.__setitem__("events", []))
    done = flow.detach_volume(att.id)
    assert done.status == "detached"
    assert events(st) == ["unplug", "close", "disconnect"]  # domain → dm-crypt → connector
    assert st.load()["events"][2] == ["disconnect", "/dev/sd-vol1"]  # the device below the mapping
    assert nothing_left(st)


@pytest.mark.parametrize("fault", ["encrypt", "attach_volume"])
def test_rollback_closes_the_mapping_before_disconnecting(tmp_path, fault):
    flow, st, store = make(tmp_path, fault=fault)
    with pytest.raises(AttachFailed) as ei:
        flow.attach_volume(ENC, "inst1")
    assert ei.value.step == ("encrypt" if fault == "encrypt" else "hypervisor") and ei.value.undo_failures == ()
    ev = events(st)
    assert ev.index("close") < ev.index("disconnect")
    assert nothing_left(st), st.load()
    assert [a.status for a in store.list()] == ["error"]


def test_missing_key_fails_before_anything(tmp_path):
    flow, st, store = make(tmp_path, keys=False)
    with pytest.raises(InvalidEncryption):
        flow.attach_volume(ENC, "inst1")
    flow2, _, _ = make(tmp_path)
    with pytest.raises(KeyNotFound):
        flow2.attach_volume(VolumeSpec(volume_id="v2", protocol="iscsi", host_attach=True,
                                       encryption=dict(ENCRYPTION, encryption_key_id="nope")), "inst1")
    assert store.list() == [] and events(st) == [] and nothing_left(st)


def test_staged_attach_without_hypervisor(tmp_path):
    flow, st, store = make(tmp_path, hypervisor=False)
    att = flow.attach_volume(STAGED, "node1")
    assert att.status == "attached" and att.device_name is None
    assert list(att.steps) == list(STAGED.plan())
    assert events(st) == ["connect", "encrypt", "stage", "publish"]
    assert st.load()["events"][2][1] == "/dev/mapper/crypt-vol1"  # staged on the decrypted device
    stg = att.extra["staging"]
    assert stg["staging_path"] == "/srv/stage/vol1" and stg["publish_path"] == "/srv/pods/p1/vol1"
    assert stg["fs_type"] == "xfs" and stg["fs_uuid"] == "uuid-1" and stg["formatted"] is True
    st.change(lambda s: s.__setitem__("events", []))
    flow.detach_volume(att.id)
    assert events(st) == ["unpublish", "unstage", "close", "disconnect"]
    assert nothing_left(st)


@pytest.mark.parametrize("fault", ["stage", "publish"])
def test_staging_failure_rolls_back(tmp_path, fault):
    flow, st, store = make(tmp_path, fault=fault, hypervisor=False)
    with pytest.raises(AttachFailed) as ei:
        flow.attach_volume(STAGED, "node1")
    assert ei.value.step == fault and ei.value.undo_failures == ()
    ev = events(st)
    # a failed stage/publish is undone by the stager itself (the flow never unmounts what may not be ours)
    assert ev[-2:] == ["close", "disconnect"] and "unpublish" not in ev
    assert ("unstage" in ev) == (fault == "publish")
    assert nothing_left(st), st.load()


def test_a_layer_that_stays_keeps_what_is_beneath(tmp_path):
    """A staging mount that cannot be unmounted: the mapping, the session, the ACL and the export stay."""
    flow, st, store = make(tmp_path, hypervisor=False)

    def fail_publish(name, att):
        if name == "stage":
            flow.stager.faults.where = "unstage"
            raise Boom("injected after stage")

    flow.on_step = fail_publish
    with pytest.raises(AttachFailed) as ei:
        flow.attach_volume(STAGED, "node1")
    failures = ei.value.undo_failures
    assert failures[0].startswith("stage: Boom")
    assert [f.split(":")[0] for f in failures[1:]] == ["encrypt", "connect", "initialize", "export"]
    assert all("stage is still in place" in f for f in failures[1:])
    s = st.load()
    assert s["mappings"] and s["sessions"] and s["acls"] and s["exports"]
    assert "close" not in events(st) and "disconnect" not in events(st)


def test_network_disk_encrypted_by_qemu(tmp_path):
    flow, st, store = make(tmp_path)
    spec = VolumeSpec(volume_id="vol1", protocol="iscsi", encryption=ENCRYPTION)
    att = flow.attach_volume(spec, "inst1")
    assert "encrypt" not in att.steps and st.load()["events"] == [["plug", None, True]]
    assert att.extra["encryption_secret_uuid"] == "luks-vdb" and not att.extra["encryption"]["host_side"]
    flow.detach_volume(att.id)
    assert st.load()["events"][-1] == ["unplug", "vdb", "luks-vdb"]  # the LUKS secret goes with the disk
    assert nothing_left(st)


def test_invalid_combinations(tmp_path):
    flow, st, store = make(tmp_path, hypervisor=False)
    with pytest.raises(InvalidOption):
        flow.attach_volume(VolumeSpec(volume_id="v", protocol="iscsi", staging_path="/srv/s"), "n")
    with pytest.raises(InvalidOption):  # not staged: needs a hypervisor
        flow.attach_volume(VolumeSpec(volume_id="v", protocol="iscsi", host_attach=True), "n")
    with pytest.raises(InvalidOption):
        flow.attach_volume(VolumeSpec(volume_id="v", protocol="iscsi", host_attach=True,
                                      publish_path="/srv/p"), "n")
    assert store.list() == []


def test_detach_rerun_after_a_failure_is_safe(tmp_path):
    flow, st, store = make(tmp_path, hypervisor=False)
    att = flow.attach_volume(STAGED, "node1")
    flow.stager.faults.where = "close"
    with pytest.raises(DetachFailed) as ei:
        flow.detach_volume(att.id)
    assert ei.value.step == "encrypt"
    assert st.load()["sessions"] == ["vol1"]  # not disconnected under the open mapping
    flow.stager.faults.where = None
    rec = store.get(att.id)
    assert rec.status == "detaching"
    done = flow._detach(rec)  # what reconcile does with a detaching record: every undo again
    assert done.status == "detached" and nothing_left(st)


def _killed_child(tmp_path, spec, kill_after, hypervisor):
    def on_step(name, att):
        if name == kill_after:
            os._exit(9)
    flow, _, _ = make(tmp_path, on_step=on_step, hypervisor=hypervisor)
    flow.attach_volume(spec, "inst1")
    os._exit(0)


@pytest.mark.parametrize("spec,kill_after", [(ENC, s) for s in ENC.plan()] + [(STAGED, s) for s in STAGED.plan()],
                         ids=[f"enc-{s}" for s in ENC.plan()] + [f"staged-{s}" for s in STAGED.plan()])
def test_reconcile_after_kill(tmp_path, spec, kill_after):
    hv = not spec.staged
    assert children.join([children.start(_killed_child, tmp_path, spec, kill_after, hv)], 60) == [9]
    flow, st, store = make(tmp_path, hypervisor=hv)
    report = flow.reconcile()
    (after,) = store.list()
    if kill_after == "hypervisor":
        assert report[0]["action"] == "completed" and after.status == "attached"
        flow.detach_volume(after.id)
    else:  # a fake staging mount is no real mount: a staged volume killed at the end is rolled back too
        assert report[0]["action"] == "rolled back" and after.status == "error", report
    assert nothing_left(st), st.load()
    ev = events(st)
    if "close" in ev and "disconnect" in ev:
        assert ev.index("close") < ev.index("disconnect")
    assert flow.reconcile() == []
