"""blocklink doctor on a fake host: each check's severity from real files and command answers, the
multipath.conf rules, fleet uniqueness through a real SQLite store, portal reachability on loopback."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Dict, Iterator, Optional

import pytest

from blocklink import cli
from blocklink.attach.records import AttachmentStore
from blocklink.doctor import Doctor, check_multipath_conf, parse_multipath_conf
from blocklink.testing.fakes import FakeExecutor
from blocklink.testing.hosttree import FakeHostTree

IQN = "iqn.1993-08.org.debian:01:abcdef"
NQN = "nqn.2014-08.org.nvmexpress:uuid:4da9538e-1579-4473-87a9-aa1e9b046bf3"
HOSTID = "4da9538e-1579-4473-87a9-aa1e9b046bf3"
GOOD_CONF = """defaults {
    user_friendly_names no
    find_multipaths no
}
blacklist {
    devnode "^(ram|loop|fd|md|dm-|sr|nbd|rbd)[0-9]*"
}
"""


def healthy_tree(tmp_path: Any) -> FakeHostTree:
    tree = FakeHostTree(str(tmp_path / "host"))
    tree.set_initiator_name(IQN)
    tree._write(tree.p("etc", "nvme", "hostnqn"), NQN + "\n")
    tree._write(tree.p("etc", "nvme", "hostid"), HOSTID + "\n")
    tree._write(tree.p("etc", "multipath.conf"), GOOD_CONF)
    for mod in ("iscsi_tcp", "dm_multipath", "scsi_transport_fc", "nvme_tcp", "nvme_fabrics", "rbd"):
        os.makedirs(tree.p("sys", "module", mod), exist_ok=True)
    tree._write(tree.p("sys", "module", "nvme_core", "parameters", "multipath"), "Y\n")
    return tree


@pytest.fixture(autouse=True)
def iscsid_socket() -> Iterator[str]:
    """A listening abstract unix socket standing in for iscsid's (unique per test)."""
    name = f"blocklink-test-iscsid-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind("\0" + name)
        s.listen(4)
        yield name


def healthy_executor(conf: str = GOOD_CONF) -> FakeExecutor:
    ex = FakeExecutor()
    ex.on(("iscsiadm", "--version"), "iscsiadm version 2.1.8\n")
    ex.on(("multipathd", "show", "status"), "path checker states:\nup 0\n")
    ex.on(("multipath", "-t"), conf)
    return ex


ISCSID = {"name": ""}


def doctor(tree: FakeHostTree, ex: FakeExecutor, **kw: Any) -> Doctor:
    kw.setdefault("which", lambda name: f"/usr/sbin/{name}")
    kw.setdefault("iscsid_socket", ISCSID["name"])
    return Doctor(executor=ex, paths=tree.paths, **kw)


@pytest.fixture(autouse=True)
def _use_socket(iscsid_socket: str) -> None:
    ISCSID["name"] = iscsid_socket


def severities(report: Any, check: str) -> list:
    return [f.severity for f in report.by_check(check)]


def test_healthy_host_is_all_clear(tmp_path) -> None:
    report = doctor(healthy_tree(tmp_path), healthy_executor()).run()
    assert report.problems() == [] and report.exit_status == 0
    assert report.human().endswith("all clear")
    assert {f.check for f in report.findings} >= {"binary", "kernel_module", "iscsid", "iscsi_manual_scan",
                                                  "multipathd", "multipath_conf", "nvme_multipath", "initiator_iqn",
                                                  "hostnqn"}


def test_iscsid_not_reachable_is_critical(tmp_path) -> None:
    report = doctor(healthy_tree(tmp_path), healthy_executor(), iscsid_socket=f"nobody-listens-{uuid.uuid4()}").run()
    assert severities(report, "iscsid") == ["critical"] and report.exit_status == 2
    assert "not running or not reachable" in report.by_check("iscsid")[0].message


def test_old_open_iscsi_without_manual_scan_is_critical(tmp_path) -> None:
    ex = healthy_executor()
    ex.rules.insert(0, (("iscsiadm", "--version"), "iscsiadm version 2.0.873\n"))
    assert severities(doctor(healthy_tree(tmp_path), ex).run(), "iscsi_manual_scan") == ["critical"]


def test_multipathd_down_is_a_warning(tmp_path) -> None:
    ex = healthy_executor()
    ex.rules.insert(0, (("multipathd", "show", "status"), (1, "", "can't connect to multipathd")))
    report = doctor(healthy_tree(tmp_path), ex).run()
    assert severities(report, "multipathd") == ["warning"] and report.exit_status == 1


@pytest.mark.parametrize("conf, worst", [
    ('blacklist {\n  devnode ".*"\n}\n', "critical"),
    ('blacklist {\n  devnode "^sd[a-z]+"\n}\n', "critical"),
    ('blacklist {\n  wwid ".*"\n}\n', "critical"),
    ('blacklist {\n  wwid ".*"\n}\nblacklist_exceptions {\n  wwid "3600a0980.*"\n}\n', "warning"),
    ('blacklist {\n  device {\n    vendor ".*"\n    product ".*"\n  }\n}\n', "critical"),
    ('blacklist {\n  device {\n    vendor "NETAPP"\n    product ".*"\n  }\n}\n', "ok"),
    ('blacklist {\n  devnode "!^(sd[a-z]|dasd[a-z]|nvme[0-9])"\n}\n', "ok"),
    ('defaults {\n  find_multipaths smart\n}\n', "warning"),
    ('defaults {\n  find_multipaths "strict"\n  user_friendly_names yes\n}\n', "ok"),
])
def test_multipath_conf_rules(conf, worst) -> None:
    found = check_multipath_conf(parse_multipath_conf(conf), "test")
    order = ("ok", "info", "warning", "critical")
    assert max((f.severity for f in found), key=order.index) == worst


def test_multipath_t_output_is_parsed_with_subsections() -> None:
    conf = parse_multipath_conf('defaults {\n\tfind_multipaths "strict"\n}\nblacklist {\n\tdevnode "^nbd"\n'
                                '\tdevice {\n\t\tvendor "SGI"\n\t\tproduct "Universal Xport"\n\t}\n}\n'
                                "# comment\nblacklist_exceptions {\n}\n")
    assert conf["defaults"] == [("find_multipaths", "strict")]
    assert conf["blacklist"] == [("devnode", "^nbd"), ("device", {"vendor": "SGI", "product": "Universal Xport"})]
    assert conf["blacklist_exceptions"] == []


def test_the_conf_file_is_read_when_multipath_t_fails(tmp_path) -> None:
    tree = healthy_tree(tmp_path)
    tree._write(tree.p("etc", "multipath.conf"), 'blacklist {\n  devnode "sd.*"\n}\n')
    ex = healthy_executor()
    ex.rules.insert(0, (("multipath", "-t"), (1, "", "multipath: error")))
    found = doctor(tree, ex).run().by_check("multipath_conf")
    assert found[0].severity == "critical" and found[0].detail["source"].endswith("multipath.conf")


@pytest.mark.parametrize("name, sev", [(None, "critical"), ("not-an-iqn", "critical"), ("iqn.2004-10.com.ubuntu", "ok"),
                                       ("eui.02004567A425678D", "ok"), ("iqn.1993-08.org.debian:01:x y", "critical")])
def test_initiator_name_is_present_and_well_formed(tmp_path, name, sev) -> None:
    tree = healthy_tree(tmp_path)
    if name is None:
        os.unlink(tree.p("etc", "iscsi", "initiatorname.iscsi"))
    else:
        tree.set_initiator_name(name)
    assert severities(doctor(tree, healthy_executor()).run(), "initiator_iqn") == [sev]


def test_bad_hostnqn_and_hostid_are_critical_and_a_missing_hostid_a_warning(tmp_path) -> None:
    tree = healthy_tree(tmp_path)
    tree._write(tree.p("etc", "nvme", "hostnqn"), "nqn-without-date\n")
    tree._write(tree.p("etc", "nvme", "hostid"), "12345\n")
    report = doctor(tree, healthy_executor()).run()
    assert severities(report, "hostnqn") == ["critical"] and severities(report, "hostid") == ["critical"]
    os.unlink(tree.p("etc", "nvme", "hostid"))
    assert severities(doctor(tree, healthy_executor()).run(), "hostid") == ["warning"]


def test_missing_binaries_and_modules(tmp_path) -> None:
    tree = healthy_tree(tmp_path)
    os.rmdir(tree.p("sys", "module", "rbd"))
    ex = healthy_executor().on(("modinfo",), (1, "", "modinfo: ERROR: Module rbd not found."))
    report = doctor(tree, ex, which=lambda n: None if n in ("rbd", "nvme") else f"/usr/bin/{n}").run()
    binaries = {f.detail.get("binary"): f.severity for f in report.by_check("binary")}
    assert binaries["rbd"] == "critical" and binaries["nvme"] == "info"
    mods = report.by_check("kernel_module")
    assert [(f.detail["module"], f.severity) for f in mods] == [("rbd", "critical")]
    os.makedirs(tree.p("sys", "module", "rbd"))
    ex2 = healthy_executor()
    assert doctor(tree, ex2, protocols=("iscsi",)).run().exit_status == 0
    assert not [c for c in ex2.calls if c.argv[0] == "modinfo"]  # loaded modules are not probed


def store_with(tmp_path: Any, name: str = "fleet.db") -> AttachmentStore:
    return AttachmentStore(str(tmp_path / name))


def test_two_hosts_with_one_iqn_in_the_store_is_critical(tmp_path) -> None:
    store = store_with(tmp_path)
    tree = healthy_tree(tmp_path)
    assert doctor(tree, healthy_executor(), store=store, host="h1").run().exit_status == 0
    assert [h.host for h in store.hosts()] == ["h1"] and store.hosts()[0].iqn == IQN
    other = store_with(tmp_path)  # another host, same shared store (same file), same cloned IQN
    other.register_host("h2", iqn=IQN, hostnqn="nqn.2014-08.org.nvmexpress:uuid:other", hostid=None)
    report = doctor(tree, healthy_executor(), store=store, host="h1").run()
    dup = report.by_check("identity_unique")
    assert [(f.severity, f.detail.get("hosts")) for f in dup] == [("critical", ["h2"])] and "iqn" in dup[0].detail
    other.register_host("h2", iqn="iqn.1993-08.org.debian:01:h2", hostnqn=NQN, hostid=None)
    dup = doctor(tree, healthy_executor(), store=store, host="h1").run().by_check("identity_unique")
    assert [f.detail.get("hostnqn") for f in dup] == [NQN]


def _record(store: AttachmentStore, vid: str, status: str, portal: str, portals: Optional[list] = None) -> None:
    rec = store.reserve(vid, "inst")
    data: Dict[str, Any] = {"target_portal": portal, "target_iqn": "iqn.2003-01.org.x:t", "target_lun": 0,
                            "auth_password": "sekrit-123"}
    if portals:
        data["target_portals"] = portals
    store.record_step(rec.id, "initialize", connection_info={"driver_volume_type": "iscsi", "data": data},
                      protocol="iscsi")
    if status != "attaching":
        store.transition(rec.id, ["attaching"], status)


def test_unreachable_portals_by_record_status(tmp_path) -> None:
    store = store_with(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        up = f"127.0.0.1:{listener.getsockname()[1]}"
        with socket.socket() as s:  # a port nobody listens on: bind, then close
            s.bind(("127.0.0.1", 0))
            down = f"127.0.0.1:{s.getsockname()[1]}"
        _record(store, "v1", "attached", up, [up, down])
        _record(store, "v2", "detached", "127.0.0.1:1")
        report = doctor(healthy_tree(tmp_path), healthy_executor(), store=store, portal_timeout=1).run()
    found = {f.detail["portal"]: f.severity for f in report.by_check("portal")}
    assert found == {up: "ok", down: "critical", "127.0.0.1:1": "warning"}
    assert "sekrit" not in report.human() + str(report.to_dict())


def test_cli_doctor_exit_status_and_outputs(tmp_path, monkeypatch, capsys) -> None:
    tree = healthy_tree(tmp_path)
    ex = healthy_executor()
    ex.rules.insert(0, (("multipathd", "show", "status"), (1, "", "no daemon")))
    import blocklink.doctor as doc

    real = doc.Doctor

    def fake(**kw: Any) -> Doctor:
        return real(executor=ex, paths=tree.paths, which=lambda n: "/bin/" + n, iscsid_socket=ISCSID["name"], **kw)

    monkeypatch.setattr(doc, "Doctor", fake)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[WARN] multipathd:" in out and out.strip().endswith("1 problem(s); worst: warning")
    assert cli.main(["doctor", "--json", "--protocol", "rbd"]) == 0
    import json

    doc_json = json.loads(capsys.readouterr().out)
    assert doc_json["worst"] == "ok" and doc_json["exit_status"] == 0
