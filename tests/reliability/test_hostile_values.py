"""Hostile values through every public entry point that builds a path, an argv, a config line or XML.

Values with ``/``, ``..``, spaces, quotes, newlines, ``;``, XML metacharacters and NUL go into IQNs,
portals, CHAP user names and passwords, pool/image/user names, volume ids, NQNs, WWNs, serials and
device names. Each must be refused with a typed error (BlocklinkError) or handled safely; in every
case nothing is left: no new file anywhere under the test's roots (node records, run dirs, locks,
configfs, backing files), no target on tgtd, no command that carried the raw value, no process.
"""

from __future__ import annotations

# the lambdas handed to expect_refused_or_safe() run before the loop moves on
# ruff: noqa: B023

import copy
import json
import os
from typing import Any, Callable, Dict, List

import pytest

from blocklink.errors import BlocklinkError, InvalidConnectionInfo
from blocklink.testing.fakes import FakeExecutor
from tests.harness.leaks import LeakChecker
from tests.reliability.results import RESULTS

HOSTILE = ["a/b", "../../../etc/evil", "..", "a b", "a'b", 'a"b', "a\nnode.startup = automatic", "a;reboot",
           "<x>&amp;", "a\x00b", "", " ", "$(touch /tmp/pwned)", "-rf", "a\tb", "x" * 300]
SECRET_HOSTILE = ["pw\nnode.session.auth.username = evil", "pw\x00tail", "pw;id", "p'w\"<&>", "pw word with spaces"]


# directories a host has anyway (iscsiadm's databases, run/lock dirs): their existence is not a leak
_INFRA = {"nodes", "send_targets", "iscsi", "locks", "tlocks", "run", "qsd", "nvme", "backing", "config"}


def _files(root: str) -> List[str]:
    """Files and non-infrastructure directories below ``root``; lock files (oslo keeps them by design)
    only checked to stay flat inside their lock directory."""
    out = []
    for p in LeakChecker.files_in([root]):
        parent, name = os.path.split(p)
        if os.path.basename(parent) in ("locks", "tlocks") and os.path.isfile(p):
            assert name.startswith(("blocklink-", "bl-")) or "lock" in name, p
            continue
        if os.path.isdir(p) and name in _INFRA:
            continue
        out.append(p)
    return out


def _raw_in_argv(calls: Any, value: str) -> List[Any]:
    """Commands whose argv carries ``value`` unescaped (only meaningful for values no valid input has).

    A JSON argument (qemu-storage-daemon's ``--blockdev {...}``) escapes its strings: it is safe when it
    parses back and the value is one whole string in it."""
    if not value.strip() or len(value) < 3:
        return []
    out = []
    for c in calls:
        for a in c.argv:
            if value not in a:
                continue
            if a.startswith("{"):
                try:
                    leaves = _json_strings(json.loads(a))
                except ValueError:
                    leaves = []
                if value in leaves:
                    continue
            out.append(c.argv)
    return out


def _json_strings(v: Any) -> List[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [s for x in v.values() for s in _json_strings(x)]
    if isinstance(v, list):
        return [s for x in v for s in _json_strings(x)]
    return []


def expect_refused_or_safe(entry: str, value: str, call: Callable[[], Any], root: str,
                           executor: Any = None, undo: Callable[[Any], None] = lambda r: None) -> Any:
    """Run ``call``; a typed error with nothing left, or (accepted) a result that undoes cleanly."""
    RESULTS.hostile_value(entry)
    before = _files(root)
    try:
        result = call()
    except BlocklinkError as e:
        if isinstance(e, InvalidConnectionInfo):
            assert e.field, e
        new = sorted(set(_files(root)) - set(before))
        assert not new, f"{entry}={value!r} was refused ({e}) but left {new}"
        if executor is not None and any(c in value for c in "\n\x00;/ '\"<-"):
            assert not _raw_in_argv(executor.calls, value), f"{entry}={value!r} reached a command"
        return e
    undo(result)
    new = sorted(set(_files(root)) - set(before))
    assert not new, f"{entry}={value!r} was accepted and left {new} after detach"
    if executor is not None and any(c in value for c in "\n\x00"):
        assert not _raw_in_argv(executor.calls, value), f"{entry}={value!r} reached a command"
    return result


# ------------------------------------------------------------------ initiator side, on fake hosts
def _set(info: Dict[str, Any], key: str, value: Any) -> Dict[str, Any]:
    info = copy.deepcopy(info)
    info["data"][key] = value
    return info


ISCSI = {"driver_volume_type": "iscsi", "data": {
    "target_portal": "10.0.0.1:3260", "target_iqn": "iqn.2010-10.org.openstack:volume-shared", "target_lun": 1,
    "auth_method": "CHAP", "auth_username": "user", "auth_password": "chap-secret-123", "volume_id": "vol-1"}}
ISCSI_FIELDS = ["target_iqn", "target_portal", "target_lun", "auth_username", "auth_method", "volume_id",
                "discovery_auth_username"]


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize("key", ISCSI_FIELDS)
def test_kernel_iscsi_connector(key: str, value: str, tmp_path: Any) -> None:
    from blocklink.initiator.iscsi import ISCSIConnector
    from blocklink.testing.fakeiscsi import FakeIscsiKernel
    from blocklink.testing.hosttree import FakeHostTree, FakeLun, naa_wwid

    kernel = FakeIscsiKernel(FakeHostTree(str(tmp_path / "host")))
    kernel.add_target(ISCSI["data"]["target_iqn"], ["10.0.0.1:3260"], {1: FakeLun(1, naa_wwid(101))},
                      chap=("user", "chap-secret-123"))
    conn = ISCSIConnector(executor=kernel.executor, paths=kernel.tree.paths, lock_path=str(tmp_path / "locks"),
                          timeout=0.3, flush_timeout=0.3)
    info = _set(ISCSI, key, value)
    expect_refused_or_safe(f"iscsi connect_volume data.{key}", value, lambda: conn.connect_volume(info),
                           str(tmp_path), kernel.executor, undo=lambda dev: conn.disconnect_volume(info, dev))


@pytest.mark.parametrize("value", SECRET_HOSTILE, ids=repr)
def test_kernel_iscsi_chap_password_never_breaks_the_node_record(value: str, tmp_path: Any) -> None:
    from blocklink.initiator.iscsi import ISCSIConnector
    from blocklink.testing.fakeiscsi import FakeIscsiKernel
    from blocklink.testing.hosttree import FakeHostTree, FakeLun, naa_wwid

    kernel = FakeIscsiKernel(FakeHostTree(str(tmp_path / "host")))
    kernel.add_target(ISCSI["data"]["target_iqn"], ["10.0.0.1:3260"], {1: FakeLun(1, naa_wwid(101))},
                      chap=("user", value))
    conn = ISCSIConnector(executor=kernel.executor, paths=kernel.tree.paths, lock_path=str(tmp_path / "locks"),
                          timeout=0.3, flush_timeout=0.3)
    info = _set(ISCSI, "auth_password", value)
    expect_refused_or_safe("iscsi connect_volume data.auth_password", value, lambda: conn.connect_volume(info),
                           str(tmp_path), kernel.executor, undo=lambda dev: conn.disconnect_volume(info, dev))
    for c in kernel.executor.calls:  # the password reaches iscsiadm through no argv, hostile or not
        assert not any(value in a for a in c.argv)


RBD = {"driver_volume_type": "rbd", "data": {"name": "volumes/volume-1", "hosts": ["127.0.0.1"], "ports": ["6789"],
                                             "auth_enabled": True, "auth_username": "cinder",
                                             "keyring": "[client.cinder]\n\tkey = AQBtHwdqAAAAABAAZmFrZWtleWZha2VrZXlmYWtlaw==\n",
                                             "volume_id": "v1"}}


def _rbd_variants(value: str) -> List[Any]:
    # "pool/ns/image" is valid syntax: a value with one "/" in the pool part names a namespace
    names = [] if value.count("/") == 1 and ".." not in value else [
        ("name(pool)", _set(RBD, "name", f"{value}/volume-1")), ("name(image)", _set(RBD, "name", f"volumes/{value}"))]
    return names + [
            ("auth_username", _set(RBD, "auth_username", value)), ("hosts", _set(RBD, "hosts", [value])),
            ("ports", _set(RBD, "ports", [value])), ("cluster_name", _set(RBD, "cluster_name", value))]


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_krbd_and_userspace_rbd_connectors(value: str, tmp_path: Any) -> None:
    from blocklink.initiator.rbd import RBDConnector
    from blocklink.initiator.userspace import UserspaceRBDConnector

    for where, info in _rbd_variants(value):
        ex = FakeExecutor(default=(1, "", "refused by the fake host"))
        krbd = RBDConnector(do_local_attach=True, executor=ex, run_dir=str(tmp_path / "run"),
                            lock_path=str(tmp_path / "locks"))
        expect_refused_or_safe(f"rbd (krbd) connect_volume data.{where}", value, lambda: krbd.connect_volume(info),
                               str(tmp_path), ex, undo=lambda dev: krbd.disconnect_volume(info, dev))
        ex2 = FakeExecutor(default=(1, "", "refused by the fake host"))
        us = UserspaceRBDConnector(run_dir=str(tmp_path / "qsd"), executor=ex2, timeout=1)
        expect_refused_or_safe(f"rbd (userspace) connect_volume data.{where}", value, lambda: us.connect_volume(info),
                               str(tmp_path), ex2, undo=lambda dev: us.disconnect_volume(info, dev))


@pytest.mark.parametrize("value", HOSTILE + SECRET_HOSTILE, ids=repr)
def test_userspace_iscsi_connector(value: str, tmp_path: Any) -> None:
    from blocklink.initiator.userspace import UserspaceISCSIConnector

    for key in ("target_iqn", "target_portal", "auth_username", "auth_password"):
        ex = FakeExecutor(default=(1, "", "refused by the fake host"))
        conn = UserspaceISCSIConnector(run_dir=str(tmp_path / "qsd"), executor=ex, timeout=1,
                                       initiator_name="iqn.2024-01.test:h")
        info = _set(ISCSI, key, value)
        expect_refused_or_safe(f"iscsi (userspace) connect_volume data.{key}", value,
                               lambda: conn.connect_volume(info), str(tmp_path), ex,
                               undo=lambda dev: conn.disconnect_volume(info, dev))
    if value:  # an empty name means "unset": the host's /etc/iscsi/initiatorname.iscsi is used
        with pytest.raises(BlocklinkError):
            UserspaceISCSIConnector(run_dir=str(tmp_path / "qsd"), initiator_name=value).initiator()


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_nvme_connector(value: str, tmp_path: Any) -> None:
    from blocklink.initiator.nvmeof import NVMeOFConnector
    from blocklink.testing.hosttree_nvme import FakeNvmeKernel

    kernel = FakeNvmeKernel(str(tmp_path / "root"))
    ex = kernel.install()
    conn = NVMeOFConnector(paths=kernel.paths, executor=ex, run_dir=str(tmp_path / "run"), timeout=0.3)
    base = {"driver_volume_type": "nvmeof", "data": {
        "target_nqn": "nqn.2014-08.org.x:sub1", "vol_uuid": "11111111-2222-3333-4444-555555555555",
        "portals": [["127.0.0.1", 4420, "tcp"]], "host_nqn": kernel.hostnqn}}
    variants = [(k, _set(base, k, value)) for k in ("target_nqn", "vol_uuid", "host_nqn", "volume_nguid")]
    variants += [("portals[0].address", _set(base, "portals", [[value, 4420, "tcp"]])),
                 ("portals[0].transport", _set(base, "portals", [["127.0.0.1", 4420, value]]))]
    for where, info in variants:
        expect_refused_or_safe(f"nvmeof connect_volume data.{where}", value, lambda: conn.connect_volume(info),
                               str(tmp_path), ex, undo=lambda dev: conn.disconnect_volume(info, dev))


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_fc_connector(value: str, tmp_path: Any) -> None:
    from blocklink.initiator.fc import FibreChannelConnector
    from blocklink.testing.fakeiscsi import FakeIscsiKernel
    from blocklink.testing.hosttree_fc import FakeFcTree

    tree = FakeFcTree(str(tmp_path / "root"))
    kernel = FakeIscsiKernel(tree)
    conn = FibreChannelConnector(executor=kernel.executor, paths=tree.paths, lock_path=str(tmp_path / "locks"),
                                 timeout=0.3, flush_timeout=0.3)
    base = {"driver_volume_type": "fibre_channel", "data": {"target_wwn": ["500a098280feeba5"], "target_lun": 1}}
    variants = [("target_wwn", _set(base, "target_wwn", [value])), ("target_lun", _set(base, "target_lun", value)),
                ("initiator_target_map", _set(base, "initiator_target_map", {value: ["500a098280feeba5"]}))]
    for where, info in variants:
        expect_refused_or_safe(f"fc connect_volume data.{where}", value, lambda: conn.connect_volume(info),
                               str(tmp_path), kernel.executor, undo=lambda dev: conn.disconnect_volume(info, dev))


# ------------------------------------------------------------------ ceph.conf / keyring files
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_ceph_files(value: str, tmp_path: Any) -> None:
    from blocklink.ceph_client import CephFiles, ClusterSpec
    from blocklink.masking import Secret

    for where, spec in (("mon_host", lambda: ClusterSpec(user="cinder", monitors=((value, 6789),))),
                        ("user", lambda: ClusterSpec(user=value, monitors=(("127.0.0.1", 6789),))),
                        ("key", lambda: ClusterSpec(user="cinder", monitors=(("127.0.0.1", 6789),),
                                                    key=Secret("AQB" + value)))):
        def make(spec: Any = spec) -> Any:
            with CephFiles(spec(), base_dir=str(tmp_path / "run")) as files:
                texts = [open(os.path.join(files.dir, n)).read() for n in os.listdir(files.dir)]
            for text in texts:  # accepted: one value never makes a second line or a second section
                assert "\x00" not in text and "evil" not in text and "node.startup" not in text
            return texts

        expect_refused_or_safe(f"ceph.conf/keyring ({where})", value, make, str(tmp_path))


# ------------------------------------------------------------------ target side
@pytest.mark.tgt
def test_tgt_target_refuses_hostile_names_and_creates_nothing(tgtd: Any, tmp_path: Any) -> None:
    os.makedirs(tmp_path / "backing")
    target = tgtd.target(backing_dir=str(tmp_path / "backing"), config_dir=str(tmp_path / "config"),
                         lock_path=str(tmp_path / "locks"))
    target.create_export("good-1", size=1 << 20)
    backing2 = str(tmp_path / "backing" / "good-2.img")
    with open(backing2, "wb") as f:
        f.truncate(1 << 20)
    before_tgt = LeakChecker.tgt_state(tgtd.admin)
    host = {"host": "h1", "initiator": "iqn.2024-01.test:h1"}
    for value in HOSTILE:
        expect_refused_or_safe("tgt create_export volume_id", value,
                               lambda: target.create_export(value, size=1 << 20), str(tmp_path),
                               undo=lambda e: target.remove_export(value))
        expect_refused_or_safe("tgt create_export chap user", value,
                               lambda: target.create_export("good-2", backing2, chap=(value, "secret-12345678")),
                               str(tmp_path), undo=lambda e: target.remove_export("good-2"))
        for key in ("initiator", "host"):
            expect_refused_or_safe(f"tgt initialize_connection connector.{key}", value,
                                   lambda: target.initialize_connection("good-1", dict(host, **{key: value})),
                                   str(tmp_path), undo=lambda i: target.terminate_connection("good-1", host))
        assert LeakChecker.tgt_state(tgtd.admin) == before_tgt
    target.remove_export("good-1")


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_nvmet_target(value: str, tmp_path: Any) -> None:
    from blocklink.target.nvmet import NvmetTarget
    from blocklink.testing.hosttree_nvme import FakeNvmeKernel

    kernel = FakeNvmeKernel(str(tmp_path / "root"))
    os.makedirs(tmp_path / "backing")
    target = NvmetTarget(portals=["127.0.0.1:4420"], paths=kernel.paths, configfs=kernel.configfs,
                         backing_dir=str(tmp_path / "backing"), lock_path=str(tmp_path / "tlocks"), buffered_io=True)
    expect_refused_or_safe("nvmet create_export volume_id", value, lambda: target.create_export(value, size=1 << 20),
                           str(tmp_path), undo=lambda e: target.remove_export(value))
    target.create_export("11111111-2222-3333-4444-555555555555", size=1 << 20)
    expect_refused_or_safe("nvmet initialize_connection connector.nqn", value,
                           lambda: target.initialize_connection("11111111-2222-3333-4444-555555555555",
                                                                {"host": "h", "nqn": value}),
                           str(tmp_path), undo=lambda i: target.terminate_connection(
                               "11111111-2222-3333-4444-555555555555", {"host": "h", "nqn": value}))


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_rbd_target_names(value: str, tmp_path: Any) -> None:
    from blocklink.target.rbd import RbdTarget

    RESULTS.hostile_value("rbd target pool/user/volume_id")
    for make in (lambda: RbdTarget(pool=value), lambda: RbdTarget(user=value)):
        with pytest.raises(BlocklinkError):
            make()
    t = RbdTarget(pool="volumes", conffile=str(tmp_path / "absent.conf"))
    # a bad id is refused before any image is named to the cluster (here: the cluster is unreachable)
    for call in (lambda: t.create_volume(value, 1 << 20), lambda: t.delete_volume(value),
                 lambda: t.initialize_connection(value)):
        with pytest.raises(BlocklinkError):
            call()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ hypervisor XML
@pytest.mark.parametrize("value", HOSTILE + ["vd<b>", "sda' onload='x", "a&b"], ids=repr)
def test_disk_xml_escapes_or_refuses(value: str) -> None:
    import xml.etree.ElementTree as ET

    from blocklink.hypervisor import disk_xml
    from blocklink.hypervisor.schema import validate_disk_xml

    local = {"driver_volume_type": "local", "data": {"device_path": "/dev/sdz"}}
    rbd = {"driver_volume_type": "rbd", "data": dict(RBD["data"], keyring=None)}
    calls = {"target_dev": lambda: disk_xml(local, target_dev=value), "serial": lambda: disk_xml(
        local, target_dev="vdb", serial=value), "device_path": lambda: disk_xml(
        {"driver_volume_type": "local", "data": {"device_path": value}}, target_dev="vdb"),
        "rbd_user": lambda: disk_xml(rbd, target_dev="vdb", rbd_user=value, rbd_secret_uuid=None),
        "initiator_iqn": lambda: disk_xml(ISCSI, target_dev="vdb", initiator_iqn=value),
        "secret_usage": lambda: disk_xml(ISCSI, target_dev="vdb", secret_uuid=None, secret_usage=value)}
    for where, call in calls.items():
        RESULTS.hostile_value(f"disk_xml {where}")
        try:
            xml = call()
        except BlocklinkError:
            continue
        validate_disk_xml(xml)
        root = ET.fromstring(xml)  # one element, the value only as text/attribute content
        assert root.tag == "disk" and len(root.findall(".//disk")) == 0


@pytest.mark.libvirt
def test_libvirt_secret_and_attach_refuse_hostile_values(libvirt_host: Any, libvirt_domain: Any) -> None:
    from blocklink.hypervisor.secrets import define_secret

    conn = libvirt_host.connection
    before = LeakChecker.libvirt_secrets(conn), LeakChecker.libvirt_disks(conn, [libvirt_domain.name()])
    local = {"driver_volume_type": "local", "data": {"device_path": "/dev/null"}}
    for value in HOSTILE:
        RESULTS.hostile_value("libvirt define_secret usage")
        try:
            uuid = define_secret(conn, "ceph", value, "AQBtHwdqAAAAABAAZmFrZWtleWZha2VrZXlmYWtlaw==")
        except BlocklinkError:
            pass
        else:
            conn.secretLookupByUUIDString(uuid).undefine()
        RESULTS.hostile_value("libvirt attach_volume target_dev")
        with pytest.raises(BlocklinkError):
            libvirt_host.attach_volume(libvirt_domain, local, None, target_dev=value, bus="scsi")
    after = LeakChecker.libvirt_secrets(conn), LeakChecker.libvirt_disks(conn, [libvirt_domain.name()])
    assert after == before


def test_every_hostile_value_is_checked() -> None:
    # keep the lists honest: each class of character named in the brief is present
    joined = "".join(HOSTILE)
    for ch in ("/", "..", " ", "'", '"', "\n", ";", "<", "&", "\x00"):
        assert ch in joined
