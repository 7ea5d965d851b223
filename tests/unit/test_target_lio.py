"""LioTarget's logic over an in-memory stand-in for rtslib-fb (the real kernel runs in
tests/functional/kernel/test_lio_target.py). The stand-in keeps rtslib's object model and the
rules these tests rely on: unique names, wwn normalisation errors, portal bind failures, dump/restore."""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Dict, Iterator, List, Optional

import pytest

from blocklink.errors import ExportNotFound, InvalidConnectionInfo, TargetError
from blocklink.target import lio
from blocklink.target.lio import LioTarget

HOST_A = "iqn.1994-05.com.redhat:a"
HOST_B = "iqn.1994-05.com.redhat:b"


class RTSLibError(Exception):
    pass


class FakeConfig:
    def __init__(self) -> None:
        self.sos: List["SO"] = []
        self.targets: List["Target"] = []
        self.bad_portals: set = set()
        self.iser_ok = False


CFG = FakeConfig()


class SO:
    plugin = ""

    def __init__(self, name: str, dev: str, size: Optional[int] = None, **kw: Any) -> None:
        if any(so.name == name for so in CFG.sos):
            raise RTSLibError(f"storage object {name} exists")
        self.name, self.udev_path, self.size, self.attributes = name, dev, size, {}  # type: ignore[var-annotated]
        CFG.sos.append(self)

    def set_attribute(self, k: str, v: str) -> None:
        self.attributes[k] = v

    def delete(self) -> None:
        CFG.sos.remove(self)

    def dump(self) -> Dict[str, Any]:
        return {"name": self.name, "plugin": self.plugin, "dev": self.udev_path, "size": self.size}


class BlockStorageObject(SO):
    plugin = "block"


class FileIOStorageObject(SO):
    plugin = "fileio"


class FabricModule:
    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def targets(self) -> List["Target"]:
        return list(CFG.targets)


class Target:
    def __new__(cls, fm: FabricModule, wwn: str, mode: str = "any") -> "Target":
        found = next((t for t in CFG.targets if t.wwn == wwn), None)
        if mode == "lookup":
            if found is None:
                raise RTSLibError(f"No such Target in configfs: {wwn}")
            return found
        if found is not None:
            raise RTSLibError("This Target already exists in configFS")
        if not wwn.startswith("iqn.") or "_" in wwn:
            raise RTSLibError("WWN not valid as: iqn")
        t = super().__new__(cls)
        t.wwn, t.tpgs = wwn, []
        CFG.targets.append(t)
        return t

    def __init__(self, fm: FabricModule, wwn: str, mode: str = "any") -> None:
        pass

    def delete(self) -> None:
        CFG.targets.remove(self)

    def dump(self) -> Dict[str, Any]:
        return {"wwn": self.wwn, "fabric": "iscsi", "tpgs": [RTSRoot._tpg(g) for g in self.tpgs]}


class TPG:
    def __new__(cls, target: Target, tag: int, mode: str = "any") -> "TPG":
        found = next((g for g in target.tpgs if g.tag == tag), None)
        if mode == "lookup":
            if found is None:
                raise RTSLibError(f"No such TPG in configfs: {tag}")
            return found
        if found is not None:
            if mode == "create":
                raise RTSLibError("This TPG already exists in configFS")
            return found
        g = super().__new__(cls)
        g.tag, g.luns, g.node_acls, g.network_portals = tag, [], [], []
        g.attributes = {}
        g.enable = False
        g.chap_userid = g.chap_password = g.chap_mutual_userid = g.chap_mutual_password = ""
        target.tpgs.append(g)
        return g

    def __init__(self, target: Target, tag: int, mode: str = "any") -> None:
        pass

    def set_attribute(self, k: str, v: str) -> None:
        self.attributes[k] = v


class LUN:
    def __init__(self, tpg: TPG, lun: int, storage_object: SO) -> None:
        self.lun, self.storage_object = lun, storage_object
        tpg.luns.append(self)


class NetworkPortal:
    def __init__(self, tpg: TPG, ip: str, port: int, mode: str = "any") -> None:
        if (ip, port) in CFG.bad_portals:
            raise RTSLibError(f"cannot bind {ip}:{port}")
        self.ip_address, self.port, self._iser = ip, port, False
        tpg.network_portals.append(self)

    @property
    def iser(self) -> bool:
        return self._iser

    @iser.setter
    def iser(self, v: bool) -> None:
        if not CFG.iser_ok:
            raise RTSLibError("Cannot change iser")
        self._iser = v


class NodeACL:
    def __new__(cls, tpg: TPG, wwn: str, mode: str = "any") -> "NodeACL":
        wwn = wwn.lower()  # rtslib normalises iSCSI names
        found = next((a for a in tpg.node_acls if a.node_wwn == wwn), None)
        if mode == "lookup":
            if found is None:
                raise RTSLibError(f"No such NodeACL in configfs: {wwn}")
            return found
        if found is not None:
            raise RTSLibError("This NodeACL already exists in configFS")
        a = super().__new__(cls)
        a.node_wwn, a.tpg, a.mapped_luns = wwn, tpg, []
        a.chap_userid = a.chap_password = a.chap_mutual_userid = a.chap_mutual_password = ""
        tpg.node_acls.append(a)
        return a

    def __init__(self, tpg: TPG, wwn: str, mode: str = "any") -> None:
        pass

    def dump(self) -> Dict[str, Any]:
        return {"node_wwn": self.node_wwn, "mapped_luns": [list(m) for m in self.mapped_luns],
                "chap": [self.chap_userid, self.chap_password, self.chap_mutual_userid, self.chap_mutual_password]}

    def delete(self) -> None:
        self.tpg.node_acls.remove(self)


class MappedLUN:
    def __init__(self, acl: NodeACL, mapped_lun: int, tpg_lun: int) -> None:
        acl.mapped_luns.append((mapped_lun, tpg_lun))


class RTSRoot:
    @property
    def targets(self) -> List[Target]:
        return list(CFG.targets)

    @property
    def storage_objects(self) -> List[SO]:
        return list(CFG.sos)

    def dump(self) -> Dict[str, Any]:
        return {"storage_objects": [s.dump() for s in CFG.sos], "targets": [t.dump() for t in CFG.targets]}

    @staticmethod
    def _tpg(g: TPG) -> Dict[str, Any]:
        return {"tag": g.tag, "attributes": g.attributes, "enable": g.enable,
                "chap": [g.chap_userid, g.chap_password, g.chap_mutual_userid, g.chap_mutual_password],
                "luns": [{"index": lun.lun, "so": lun.storage_object.name} for lun in g.luns],
                "portals": [[p.ip_address, p.port] for p in g.network_portals],
                "node_acls": [a.dump() for a in g.node_acls]}

    def save_to_file(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.dump(), f)

    def restore(self, config: Dict[str, Any], clear_existing: bool = False, abort_on_error: bool = False) -> None:
        for s in config["storage_objects"]:
            (BlockStorageObject if s["plugin"] == "block" else FileIOStorageObject)(s["name"], s["dev"], s["size"])
        for t in config["targets"]:
            target = Target(FabricModule("iscsi"), t["wwn"], "create")
            for gd in t["tpgs"]:
                g = TPG(target, gd["tag"])
                g.attributes, g.enable = dict(gd["attributes"]), gd["enable"]
                g.chap_userid, g.chap_password, g.chap_mutual_userid, g.chap_mutual_password = gd["chap"]
                for ld in gd["luns"]:
                    LUN(g, ld["index"], next(s for s in CFG.sos if s.name == ld["so"]))
                for ip, port in gd["portals"]:
                    NetworkPortal(g, ip, port)
                for ad in gd["node_acls"]:
                    a = NodeACL(g, ad["node_wwn"], "create")
                    a.chap_userid, a.chap_password, a.chap_mutual_userid, a.chap_mutual_password = ad["chap"]
                    a.mapped_luns = [tuple(m) for m in ad["mapped_luns"]]


class FakeRtslib:
    RTSLibError = RTSLibError
    RTSRoot = RTSRoot
    BlockStorageObject = BlockStorageObject
    FileIOStorageObject = FileIOStorageObject
    FabricModule = FabricModule
    Target = Target
    TPG = TPG
    LUN = LUN
    NetworkPortal = NetworkPortal
    NodeACL = NodeACL
    MappedLUN = MappedLUN


@pytest.fixture
def helper(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[LioTarget]:
    global CFG
    CFG = FakeConfig()
    yield LioTarget(portals=["10.0.0.1:3260", "[fd00::1]:3260"], backing_dir=str(tmp_path),
                    save_file=str(tmp_path / "etc" / "saveconfig.json"), lock_path=str(tmp_path / "locks"),
                    rtslib=FakeRtslib)


def conn(initiator: str) -> Dict[str, Any]:
    return {"host": "h", "initiator": initiator}


def test_create_export_builds_a_closed_chap_target(helper: LioTarget, tmp_path: Any) -> None:
    e = helper.create_export("v1", size=8 << 20, mutual_chap=True)
    (t,) = CFG.targets
    (tpg,) = t.tpgs
    assert t.wwn == "iqn.2010-10.org.openstack:volume-v1" == e.iqn and e.lun == 0
    assert tpg.attributes == {"authentication": "1", "generate_node_acls": "0", "demo_mode_write_protect": "1"}
    assert tpg.enable and tpg.node_acls == [] and [lun.lun for lun in tpg.luns] == [0]
    assert [(p.ip_address, p.port) for p in tpg.network_portals] == [("10.0.0.1", 3260), ("[fd00::1]", 3260)]
    (so,) = CFG.sos
    assert (so.name, so.plugin, so.udev_path, so.size) == ("volume-v1", "fileio", str(tmp_path / "volume-v1"), 8 << 20)
    assert (tpg.chap_userid, tpg.chap_password) == (e.chap.username, e.chap.password.reveal())
    assert tpg.chap_mutual_password == e.mutual_chap.password.reveal()
    assert stat.S_IMODE(os.stat(helper.save_file).st_mode) == 0o600


def test_acl_per_initiator_with_the_volume_credentials(helper: LioTarget) -> None:
    e = helper.create_export("v1", size=1 << 20, mutual_chap=True)
    data = helper.initialize_connection("v1", conn(HOST_A)).data_dict()
    helper.initialize_connection("v1", conn(HOST_A))  # idempotent
    helper.initialize_connection("v1", conn(HOST_B))
    acls = CFG.targets[0].tpgs[0].node_acls
    assert [a.node_wwn for a in acls] == [HOST_A, HOST_B]
    for a in acls:
        assert (a.chap_userid, a.chap_password) == (e.chap.username, e.chap.password.reveal())
        assert (a.chap_mutual_userid, a.chap_mutual_password) == (e.mutual_chap.username,
                                                                 e.mutual_chap.password.reveal())
        assert a.mapped_luns == [(0, 0)]
    assert data["target_lun"] == 0 and data["auth_password"] == e.chap.password.reveal()
    assert data["target_portals"] == ["10.0.0.1:3260", "[fd00::1]:3260"]
    helper.terminate_connection("v1", conn(HOST_A))
    assert [a.node_wwn for a in CFG.targets[0].tpgs[0].node_acls] == [HOST_B]
    with open(helper.save_file) as f:
        assert HOST_A not in f.read()


def test_export_without_chap(helper: LioTarget) -> None:
    e = helper.create_export("v1", size=1 << 20, chap=False)
    assert e.chap is None and CFG.targets[0].tpgs[0].attributes["authentication"] == "0"
    helper.initialize_connection("v1", conn(HOST_A))
    assert CFG.targets[0].tpgs[0].node_acls[0].chap_userid == ""
    with pytest.raises(InvalidConnectionInfo):
        helper.create_export("v2", size=1 << 20, chap=False, mutual_chap=True)


def test_remove_export_leaves_nothing(helper: LioTarget) -> None:
    helper.create_export("v1", size=1 << 20)
    helper.create_export("v2", size=1 << 20)
    helper.initialize_connection("v1", conn(HOST_A))
    helper.remove_export("v1")
    helper.remove_export("v1")
    assert [t.wwn for t in CFG.targets] == [helper.target_iqn("v2")] and [s.name for s in CFG.sos] == ["volume-v2"]
    assert helper.list_exports() == ["v2"] and helper.get_export("v1") is None
    with open(helper.save_file) as f:
        assert "volume-v1" not in f.read()


def test_failed_create_rolls_back(helper: LioTarget, tmp_path: Any) -> None:
    CFG.bad_portals.add(("[fd00::1]", 3260))
    with pytest.raises(TargetError) as ei:
        helper.create_export("v1", size=1 << 20)
    assert "cannot bind" in str(ei.value)
    assert CFG.targets == [] and CFG.sos == [] and not os.path.exists(tmp_path / "volume-v1")


def test_iser_failure_is_reported_and_rolled_back(tmp_path: Any, helper: LioTarget) -> None:
    h = LioTarget(portals=["10.0.0.1:3260"], backing_dir=str(tmp_path), iser=True, lock_path=str(tmp_path / "l"),
                  rtslib=FakeRtslib)
    with pytest.raises(TargetError):
        h.create_export("v1", size=1 << 20)
    assert CFG.targets == [] and CFG.sos == []
    CFG.iser_ok = True
    h.create_export("v1", size=1 << 20)
    assert all(p.iser for p in CFG.targets[0].tpgs[0].network_portals)


def test_block_devices_get_the_block_backstore(helper: LioTarget, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    dev = tmp_path / "fake-dev"
    dev.write_bytes(b"")
    real_stat = os.stat

    class BlockStat:
        st_mode = stat.S_IFBLK | 0o660
        st_size = 0

    monkeypatch.setattr(lio.os, "stat", lambda p, *a, **k: BlockStat() if p == str(dev) else real_stat(p, *a, **k))
    e = helper.create_export("v1", str(dev))
    assert e.backstore == "block" and CFG.sos[0].plugin == "block" and CFG.sos[0].size is None


def test_ensure_export_restores_one_volume_from_the_save_file(helper: LioTarget) -> None:
    e1 = helper.create_export("v1", size=1 << 20, mutual_chap=True)
    helper.create_export("v2", size=1 << 20)
    helper.initialize_connection("v1", conn(HOST_A))
    helper.lio.delete(e1.iqn, "volume-v1")  # lost: only this volume
    again = helper.ensure_export("v1")
    assert again.chap == e1.chap and again.mutual_chap == e1.mutual_chap and again.initiators == (HOST_A,)
    assert sorted(t.wwn for t in CFG.targets) == sorted([e1.iqn, helper.target_iqn("v2")])
    assert helper.ensure_export("v1").chap == e1.chap  # already there: unchanged
    CFG.targets.clear()
    CFG.sos.clear()  # a reboot
    assert sorted(helper.restore_all()) == ["v1", "v2"]
    assert helper.get_export("v2") is not None


def test_ensure_export_without_record_creates(helper: LioTarget, tmp_path: Any) -> None:
    e = helper.ensure_export("v9", size=1 << 20)
    assert e.chap is not None and helper.list_exports() == ["v9"]


def test_errors_name_what_failed(helper: LioTarget) -> None:
    with pytest.raises(ExportNotFound):
        helper.initialize_connection("v1", conn(HOST_A))
    helper.terminate_connection("v1", conn(HOST_A))  # nothing exported: nothing to do
    helper.create_export("v1", size=1 << 20)
    with pytest.raises(TargetError):
        helper.create_export("v1", size=1 << 20)
    with pytest.raises(InvalidConnectionInfo):
        LioTarget(portals=["10.0.0.1:3260"], backstore="rbd")
    with pytest.raises(InvalidConnectionInfo):
        LioTarget(portals=["10.0.0.1:3260"], save_file="relative.json")
    for outside in ("/etc/target/saveconfig.json", "/etc/rtslib-fb-target/backup/x.json",
                    "/etc/rtslib-fb-target/saveconfig.txt", "/etc/rtslib-fb-target-evil/saveconfig.json"):
        with pytest.raises(InvalidConnectionInfo) as ei:  # the privileged functions would refuse it
            LioTarget(portals=["10.0.0.1:3260"], save_file=outside)
        assert ei.value.field == "save_file" and "/etc/rtslib-fb-target" in str(ei.value)
    assert LioTarget(portals=["10.0.0.1:3260"], save_file="/etc/rtslib-fb-target/cinder.json").save_file


def test_creating_an_existing_export_changes_nothing(helper: LioTarget, tmp_path: Any) -> None:
    """The target is made first: when it exists already, no storage object is made (or removed) and
    the first export, with its credentials and ACLs, stays as it was."""
    e = helper.create_export("v1", size=1 << 20)
    helper.initialize_connection("v1", conn(HOST_A))
    before = [(so.name, so.udev_path) for so in CFG.sos]
    with pytest.raises(TargetError, match="already exported"):
        helper.create_export("v1", str(tmp_path / "other"), size=1 << 20)
    assert [(so.name, so.udev_path) for so in CFG.sos] == before and len(CFG.targets) == 1
    assert not os.path.exists(tmp_path / "other")  # the backing file this call made is gone again
    again = helper.get_export("v1")
    assert again is not None and again.chap == e.chap and again.initiators == (HOST_A,)


def test_missing_rtslib_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from blocklink.errors import MissingDependency

    real_import = builtins.__import__

    def no_rtslib(name: str, *a: Any, **k: Any) -> Any:
        if name == "rtslib_fb":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(lio, "_HOST", None)  # this process's LioConfig, created (rtslib imported) at first use
    monkeypatch.setattr(builtins, "__import__", no_rtslib)
    with pytest.raises(MissingDependency):
        LioTarget(portals=["10.0.0.1:3260"]).list_exports()
    with pytest.raises(lio.LioError) as ei:
        lio.LioConfig().list("iqn.")
    assert ei.value.kind == "missing"


def test_seal_round_trip() -> None:
    pad = lio.new_pad()
    sealed = lio._seal("Sup3r-Secret-Value", pad)
    assert "Sup3r" not in sealed and lio._unseal(sealed, pad).reveal() == "Sup3r-Secret-Value"


def test_through_privsep_no_secret_in_its_logs(tmp_path: Any) -> None:
    """As a non-root caller: LIO calls cross oslo.privsep (msgpack), whose debug log of every reply
    must not show the CHAP secrets read back from the configuration."""
    import subprocess
    import sys

    code = (
        "import json, logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
        "import blocklink.privileged as p\n"
        "from oslo_privsep import priv_context\n"
        "from blocklink.target import lio\n"
        "from tests.unit import test_target_lio as t\n"
        "sys.modules['rtslib_fb'] = t.FakeRtslib  # what the forked daemon imports\n"
        "p.context.start(priv_context.Method.FORK)\n"
        "h = lio.LioTarget(portals=['10.0.0.1:3260'], backing_dir=sys.argv[1], lock_path=sys.argv[1] + '/l')\n"
        "e = h.create_export('v1', size=1 << 20, mutual_chap=True)\n"
        "d = h.initialize_connection('v1', {'host': 'h', 'initiator': t.HOST_A}).data_dict()\n"
        "again = h.get_export('v1')\n"
        "print(json.dumps([e.chap.password.reveal(), e.mutual_chap.password.reveal(), d['auth_password'],\n"
        "                  again.chap.password.reveal(), p.privsep_started()]))\n"
        "p.context.stop()\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=root,
                         env=dict(os.environ, BLOCKLINK_PRIVSEP="force"), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    pw, mutual, info_pw, again_pw, started = json.loads(out.stdout.strip().splitlines()[-1])
    assert started is True and pw == info_pw == again_pw
    assert "privsep: reply" in out.stderr  # the daemon did log its replies ...
    assert pw not in out.stderr and mutual not in out.stderr  # ... without the secrets


def test_save_file_is_updated_per_volume(helper: LioTarget) -> None:
    os.makedirs(os.path.dirname(helper.save_file), exist_ok=True)
    foreign = {"storage_objects": [{"name": "theirs", "plugin": "ramdisk"}],
               "targets": [{"wwn": "iqn.2024-01.other:t1", "fabric": "iscsi", "tpgs": []}],
               "fabric_modules": [{"name": "iscsi", "discovery_enable_auth": True}]}
    with open(helper.save_file, "w") as f:
        json.dump(foreign, f)
    helper.create_export("v1", size=1 << 20)
    helper.create_export("v2", size=1 << 20)
    helper.initialize_connection("v1", conn(HOST_A))
    with open(helper.save_file) as f:
        saved = json.load(f)
    assert [t["wwn"] for t in saved["targets"]] == ["iqn.2024-01.other:t1", helper.target_iqn("v1"),
                                                  helper.target_iqn("v2")]
    assert saved["fabric_modules"] == foreign["fabric_modules"]
    assert saved["targets"][1]["tpgs"][0]["node_acls"][0]["node_wwn"] == HOST_A
    assert stat.S_IMODE(os.stat(helper.save_file).st_mode) == 0o600
    CFG.targets.clear()
    CFG.sos.clear()  # a reboot, then the volume is deleted before anyone restored it
    helper.remove_export("v1")
    with open(helper.save_file) as f:
        saved = json.load(f)
    assert helper.target_iqn("v1") not in {t["wwn"] for t in saved["targets"]}
    assert "volume-v1" not in {s["name"] for s in saved["storage_objects"]}
    assert helper.restore_all() == ["v2"]  # v1 is not revived
    helper.save()  # the full dump (cinder-rtstool save)
    with open(helper.save_file) as f:
        assert [t["wwn"] for t in json.load(f)["targets"]] == [helper.target_iqn("v2")]


def test_storage_object_removal_walks_luns_only_when_the_kernel_refuses(tmp_path: Any) -> None:
    """rtslib's StorageObject.delete() walks every LUN on the host; an object no LUN maps is removed
    directly (its directory, then its HBA directory), and a refused rmdir (EBUSY in configfs while a
    LUN maps it) falls back to rtslib's walk."""
    calls: List[str] = []

    class Backstore:
        def delete(self) -> None:
            calls.append("hba")

    class StorageObj:
        def __init__(self, path: str, hba: bool = True) -> None:
            self.path = path
            if hba:
                self._backstore = Backstore()

        def delete(self) -> None:
            calls.append("rtslib-walk")

    free = tmp_path / "free"
    free.mkdir()
    lio._delete_so(StorageObj(str(free)))
    assert not free.exists() and calls == ["hba"]
    calls.clear()
    busy = tmp_path / "busy"
    (busy / "mapped").mkdir(parents=True)  # rmdir refused (ENOTEMPTY here; EBUSY in configfs)
    lio._delete_so(StorageObj(str(busy)))
    assert busy.exists() and calls == ["rtslib-walk"]
    calls.clear()
    lio._delete_so(StorageObj(str(tmp_path / "gone")))  # already gone: only its HBA directory is left
    assert calls == ["hba"]
    calls.clear()
    lio._delete_so(StorageObj(str(free), hba=False))  # an rtslib without the HBA handle: its own delete
    assert calls == ["rtslib-walk"]


def test_changes_take_one_lock_and_read_nothing_back(helper: LioTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call is one privileged check-and-change under the host's LIO lock: no per-volume lock on
    top, no existence probe before create/initialize, no read-back of what lio_create made."""
    taken: List[str] = []
    real_lock = helper.locks.lock

    def lock(name: str) -> Any:
        taken.append(name)
        return real_lock(name)

    finds: List[str] = []
    real_find = helper.lio.find
    monkeypatch.setattr(helper.locks, "lock", lock)
    monkeypatch.setattr(helper.lio, "find", lambda iqn, pad: finds.append(iqn) or real_find(iqn, pad))
    e = helper.create_export("v1", size=1 << 20, mutual_chap=True)
    data = helper.initialize_connection("v1", conn(HOST_A)).data_dict()
    helper.terminate_connection("v1", conn(HOST_A))
    assert taken == ["lio-config"] * 3 and finds == []
    read = helper.get_export("v1")  # what was described without reading back is what is there
    assert read == e and read.extra == e.extra
    helper.remove_export("v1")
    assert data["auth_password"] == e.chap.password.reveal() and data["auth_password_in"] == e.mutual_chap.password.reveal()
    assert (e.device_path, e.backstore, e.initiators, e.extra["enabled"]) == (helper.device_path_for("v1"), "fileio",
                                                                              (), True)
    assert e.extra["portals_live"] == (("10.0.0.1", 3260, False), ("[fd00::1]", 3260, False))
    assert CFG.targets == [] and CFG.sos == []


def test_acl_changes_patch_the_saved_target_to_what_a_full_dump_gives(helper: LioTarget,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """initialize/terminate_connection update only the initiator's ACL in the save file (no dump of
    the whole target); the result is what dumping the target would have written."""
    e = helper.create_export("v1", size=1 << 20, mutual_chap=True)
    helper.create_export("v2", size=1 << 20)
    dumps: List[str] = []
    real_dump = Target.dump
    monkeypatch.setattr(Target, "dump", lambda self: dumps.append(self.wwn) or real_dump(self))
    helper.initialize_connection("v1", conn(HOST_A))
    helper.initialize_connection("v1", conn(HOST_B))
    helper.initialize_connection("v1", conn(HOST_A))  # nothing new: nothing saved
    helper.terminate_connection("v1", conn(HOST_A))
    helper.initialize_connection("v1", conn(HOST_A.upper().replace("IQN.", "iqn.")))  # names compare lowercased
    assert dumps == []
    with open(helper.save_file) as f:
        saved = json.load(f)
    (entry,) = [t for t in saved["targets"] if t["wwn"] == e.iqn]
    full = json.loads(json.dumps(real_dump(CFG.targets[0])))
    key = lambda a: a["node_wwn"]  # noqa: E731
    assert sorted(entry["tpgs"][0]["node_acls"], key=key) == sorted(full["tpgs"][0]["node_acls"], key=key)
    assert [a["node_wwn"] for a in full["tpgs"][0]["node_acls"]] == [HOST_B, HOST_A]
    entry["tpgs"][0]["node_acls"] = full["tpgs"][0]["node_acls"] = []
    assert entry == full
    # a saved file without this target (lost, or written by someone else): the whole target is dumped
    with open(helper.save_file, "w") as f:
        json.dump({"storage_objects": [], "targets": []}, f)
    helper.terminate_connection("v1", conn(HOST_B))
    assert dumps == [e.iqn]
    with open(helper.save_file) as f:
        assert [a["node_wwn"] for a in json.load(f)["targets"][0]["tpgs"][0]["node_acls"]] == [HOST_A]
