"""iscsiadm / multipath output parsers and WWN decoding.

One parametrised test runs every iscsiadm/multipath(d) output in tests/vectors/command_outputs.json
through our parser and compares with what os-brick extracts (the ``expected`` field). Further tests
cover what os-brick gets wrong or never saw: eui./naa. names, IPv6, newer log prefixes, wrapped
and coloured ``multipath`` output, and real outputs recorded in the kernel test guest.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List

import pytest

from blocklink.errors import AuthenticationFailed, CommandFailed, ConnectionFailed, VolumeNotFound
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host import iscsiadm as ia
from blocklink.initiator.host.multipath import Multipath, parse_multipath
from blocklink.initiator.host.wwn import parse_vpd_pg83, same_wwn, wwid_from_sysfs_attr, wwid_from_vpd
from blocklink.initiator.properties import read_initiator_name
from blocklink.testing.fakes import FakeExecutor
from tests.conftest import VECTORS

with open(os.path.join(VECTORS, "command_outputs.json")) as _f:
    CASES: List[Dict[str, Any]] = json.load(_f)


# ------------------------------------------------------------------ what each os-brick parser is, in our terms
def _sessions_full(c: Dict[str, Any]) -> Any:
    return [[s.transport + ":", s.sid, s.portal, s.tpgt, s.iqn] for s in ia.parse_sessions(c["output"])]


def _sessions(c: Dict[str, Any]) -> Any:
    return [s.portal for s in ia.parse_sessions(c["output"])]


def _csi_sessions(c: Dict[str, Any]) -> Any:
    ours = ia.parse_sessions(c["output"])
    return {
        "csi-lib-iscsi parseSessions": [
            {"Protocol": s.transport, "ID": int(s.sid), "Portal": s.portal, "IQN": s.iqn,
             "Name": s.iqn.split(":", 1)[1]} for s in ours],
        "os-brick _get_iscsi_sessions_full (derived by running os-brick code on this output)":
            [[s.transport + ":", s.sid, s.portal, s.tpgt, s.iqn] for s in ours]}


def _nodes(c: Dict[str, Any]) -> Any:
    return [[n.portal, n.iqn] for n in ia.parse_nodes(c["output"])]


def _discoverydb(c: Dict[str, Any]) -> Any:
    props = c["connection_properties"]
    iface = "iser" if c.get("connector_transport") == "iser" else "default"
    found = ia.discoverydb_portals(c["output"], props["target_portal"], iface)
    if not found:
        return {"raises": "TargetPortalsNotFound"}
    return [[p, q, props["target_lun"]] for p, q in found]


def _sendtargets(c: Dict[str, Any]) -> Any:
    found = ia.parse_discovery(c["output"])
    return {"ips": [n.portal for n in found], "iqns": [n.iqn for n in found]}


def _startup(c: Dict[str, Any]) -> Any:
    return {r["node.name"]: r["node.startup"] for r in ia.parse_records(c["output"])}


def _iface(c: Dict[str, Any]) -> Any:
    return ia.iface_transport(c["output"], c["command"].split()[-1])


def _initiator(c: Dict[str, Any], tmp_path: Any) -> Any:
    os.makedirs(tmp_path / "etc" / "iscsi")
    (tmp_path / "etc" / "iscsi" / "initiatorname.iscsi").write_text(c["output"])
    return read_initiator_name(HostPaths.under(str(tmp_path)))


def _multipath_l(c: Dict[str, Any]) -> Any:
    m = parse_multipath(c["output"])[0]
    return {"device": m.device, "id": m.wwid, "name": m.name,
            "devices": [dict(zip(("host", "channel", "id", "lun"), p.hctl.split(":")), device=f"/dev/{p.device}")
                        for p in m.paths]}


def _multipathd_status(c: Dict[str, Any]) -> Any:
    return Multipath(FakeExecutor().on(("multipathd",), (0, c["output"], "")), HostPaths()).running()


def _multipath_c(c: Dict[str, Any]) -> Any:
    return {"ready": Multipath(FakeExecutor().on(("multipath",), (0, c["output"], "")), HostPaths()).usable("dm-7")}


CHECKERS: Dict[str, Callable[..., Any]] = {
    "ISCSIConnector._get_iscsi_sessions_full": _sessions_full,
    "ISCSIConnector._get_iscsi_sessions (portal column of _get_iscsi_sessions_full)": _sessions,
    "ISCSIConnector._get_iscsi_nodes": _nodes,
    "ISCSIConnector._get_discoverydb_portals": _discoverydb,
    "ISCSIConnector._get_target_portals_from_iscsiadm_output": _sendtargets,
    "ISCSIConnector._get_node_startup_values": _startup,
    "ISCSIConnector._validate_iface_transport": _iface,
    "ISCSIConnector.get_initiator": _initiator,
    "LinuxSCSI.find_multipath_device": _multipath_l,
    "LinuxSCSI.is_multipath_running": _multipathd_status,
    "LinuxSCSI.wait_for_mpath_device": _multipath_c,
}
OURS = ("iscsiadm", "multipath", "multipathd", "cat /etc/iscsi")


def _checker(c: Dict[str, Any]) -> Callable[..., Any]:
    if "parser" not in c and c["command"].startswith("iscsiadm -m session"):
        return _csi_sessions
    return CHECKERS[c["parser"]]


VECTOR_CASES = [c for c in CASES if c["command"].startswith(OURS)]


def test_every_iscsiadm_and_multipath_vector_has_a_checker() -> None:
    assert len(VECTOR_CASES) >= 25
    for c in VECTOR_CASES:
        assert _checker(c) is not None


@pytest.mark.parametrize("case", VECTOR_CASES, ids=[c["source"].rsplit("::", 1)[-1] for c in VECTOR_CASES])
def test_vector(case: Dict[str, Any], tmp_path: Any) -> None:
    fn = _checker(case)
    got = fn(case, tmp_path) if fn is _initiator else fn(case)
    assert got == case["expected"]


# ------------------------------------------------------------------ beyond os-brick
def test_sessions_ipv6_eui_naa_and_flash() -> None:
    out = ("tcp: [3] [fd00::1]:3260,1 eui.0123456789abcdef (non-flash)\n"
           "iser: [4] 10.0.0.1:3260,-1 naa.600140512345678 (flash)\n"
           "garbage line\n")
    s = ia.parse_sessions(out)
    assert [(x.transport, x.sid, x.portal, x.tpgt, x.iqn, x.flash) for x in s] == [
        ("tcp", "3", "[fd00::1]:3260", "1", "eui.0123456789abcdef", False),
        ("iser", "4", "10.0.0.1:3260", "-1", "naa.600140512345678", True)]
    assert ia.split_portal("[fd00::1]:3260") == ("fd00::1", "3260")


def test_sendtargets_keeps_eui_and_naa_targets_and_ipv6() -> None:
    out = ("iscsiadm: some warning\n10.0.0.1:3260,1 eui.0123456789abcdef\n[fd00::2]:3260,2 naa.6001405abcdef\n"
           "10.0.0.1:3260,1 iqn.2010-10.org.openstack:volume-1\n")
    assert [(n.portal, n.tpgt, n.iqn) for n in ia.parse_discovery(out)] == [
        ("10.0.0.1:3260", "1", "eui.0123456789abcdef"), ("[fd00::2]:3260", "2", "naa.6001405abcdef"),
        ("10.0.0.1:3260", "1", "iqn.2010-10.org.openstack:volume-1")]


# recorded in the kernel guest (multipath-tools 0.9.4 on a tty: bold names, monotonic log prefix)
GUEST_MULTIPATH_LL = (
    "283.261570 | 360014053dd9f0fb50e844579e28b0367: adding new path sda\n"
    "\x1b[1m360014053dd9f0fb50e844579e28b0367 dm-0 LIO-ORG,FILEIO\x1b[0m\n"
    "size=64M features='1 queue_if_no_path' hwhandler='1 alua' wp=rw\n"
    "`-+- policy='service-time 0' prio=50 status=active\n"
    "  |- 0:0:0:0 sda 8:0  active ready running\n"
    "  `- 1:0:0:0 sdb 8:16 active ready running\n")


def test_multipath_guest_output_with_log_prefix_and_colour() -> None:
    (m,) = parse_multipath(GUEST_MULTIPATH_LL)
    assert (m.name, m.wwid, m.dm, m.vendor_product, m.size) == (
        "360014053dd9f0fb50e844579e28b0367", "360014053dd9f0fb50e844579e28b0367", "dm-0", "LIO-ORG,FILEIO", "64M")
    assert [(p.hctl, p.device, p.dm_state, p.checker_state, p.dev_state) for p in m.paths] == [
        ("0:0:0:0", "sda", "active", "ready", "running"), ("1:0:0:0", "sdb", "active", "ready", "running")]


def test_multipath_two_maps_friendly_names_and_wrapped_lines() -> None:
    out = ("Oct 13 10:24:01 | sdx: path wwid appears to have changed\n"
           "mpatha (3600a0980383041334a3f4d5a43354c4d) dm-3 NETAPP  ,LUN C-Mode\n"
           "size=1.0G features='3 queue_if_no_path pg_init_retries 50'\n"
           " hwhandler='1 alua' wp=rw\n"
           "|-+- policy='service-time 0' prio=50 status=active\n"
           "| `- 3:0:0:2 sdc 8:32 active ready running\n"
           "`-+- policy='service-time 0' prio=10 status=enabled\n"
           "  `- 4:0:0:2 sdd 8:48 failed faulty offline\n"
           "reload: 36001405aaaa dm-7 LIO-ORG,FILEIO\n"
           "size=2.0G features='0' hwhandler='0' wp=rw\n"
           "`-+- policy='round-robin 0' prio=1 status=active\n"
           "  `- 5:0:1:10 sdaa 65:160 active ready running\n")
    a, b = parse_multipath(out)
    assert (a.name, a.wwid, a.dm, a.vendor_product) == ("mpatha", "3600a0980383041334a3f4d5a43354c4d", "dm-3",
                                                        "NETAPP  ,LUN C-Mode")
    assert [(p.device, p.dev_state) for p in a.paths] == [("sdc", "running"), ("sdd", "offline")]
    assert (b.action, b.name, b.dm, [p.hctl for p in b.paths]) == ("reload", "36001405aaaa", "dm-7", ["5:0:1:10"])


GUEST_SESSION_P3 = """iSCSI Transport Class version 2.0-870
version 2.1.8
Target: iqn.2003-01.org.example:shared (non-flash)
\tCurrent Portal: 127.0.0.1:3260,1
\tPersistent Portal: 127.0.0.1:3260,1
\t\tIface Name: default
\t\tSID: 1
\t\tiSCSI Connection State: LOGGED IN
\t\tiSCSI Session State: LOGGED_IN
\t\tpassword: ********
\t\tHost Number: 0\tState: running
\t\tscsi0 Channel 00 Id 0 Lun: 1
\t\t\tAttached scsi disk sda\t\tState: running
\t\tscsi0 Channel 00 Id 0 Lun: 2
\tCurrent Portal: 127.0.0.2:3260,1
\tPersistent Portal: 127.0.0.2:3260,1
\t\tSID: 2
\t\tiSCSI Session State: FAILED
\t\tHost Number: 1\tState: running
"""


def test_session_details_p3() -> None:
    a, b = ia.parse_session_details(GUEST_SESSION_P3)
    assert (a.iqn, a.portal, a.tpgt, a.sid, a.iface, a.session_state, a.host) == (
        "iqn.2003-01.org.example:shared", "127.0.0.1:3260", "1", "1", "default", "LOGGED_IN", 0)
    assert a.devices == [("0:0:0:1", "sda", "running"), ("0:0:0:2", None, "")]
    assert (b.sid, b.portal, b.session_state, b.host, b.devices) == ("2", "127.0.0.2:3260", "FAILED", 1, [])


def test_records_and_rewrite_keep_unknown_keys_and_end_marker() -> None:
    text = "# BEGIN RECORD 2.1.8\nnode.name = iqn.x:y\nnode.session.scan = auto\nnode.custom = 7\n# END RECORD\n"
    out = ia.rewrite_record(text, {"node.session.scan": "manual", "node.session.auth.password": "pw-secret"})
    assert ia.parse_records(out) == [{"node.name": "iqn.x:y", "node.session.scan": "manual", "node.custom": "7",
                                      "node.session.auth.password": "pw-secret"}]
    assert out.rstrip().endswith("# END RECORD")
    with pytest.raises(ValueError):
        ia.rewrite_record(text, {"node.session.auth.password": "a\nnode.session.scan = auto"})


# ------------------------------------------------------------------ WWN
# the raw VPD page 0x83 of a LIO fileio LUN, read in the kernel guest; udev's scsi_id printed the id
LIO_VPD83 = bytes.fromhex(
    "008300b401030010" "6001405b177c7b35b2e4e99bc14c1c49" "02010034" + b"LIO-ORG FILEIO:b177c7b3-5b2e-4e99-bc14-c1c49243a321\x00".hex()
    + "5194000400000001" "5195000400000000" "0106000400000000" "53980028"
    + b"iqn.2003-01.org.example:shared,t,0x0001\x00".hex() + "53a80020" + b"iqn.2003-01.org.example:shared\x00\x00".hex())


def test_vpd_page_83_of_lio_gives_scsi_id_output() -> None:
    kinds = [(d.type, d.association) for d in parse_vpd_pg83(LIO_VPD83)]
    assert (3, 0) in kinds and (8, 1) in kinds  # the LU's NAA and the target port's name
    assert wwid_from_vpd(LIO_VPD83) == "36001405b177c7b35b2e4e99bc14c1c49"


def test_vpd_preferences_and_truncation() -> None:
    eui = bytes([0x01, 0x02, 0x00, 0x08]) + bytes.fromhex("0011223344556677")
    naa5 = bytes([0x01, 0x03, 0x00, 0x08]) + bytes.fromhex("5000c50012345678")
    t10 = bytes([0x02, 0x01, 0x00, 0x10]) + b"ATA     DISK  X1"

    def page(*ds: bytes) -> bytes:
        body = b"".join(ds)
        return bytes([0, 0x83]) + len(body).to_bytes(2, "big") + body

    assert wwid_from_vpd(page(t10, eui, naa5)) == "35000c50012345678"  # NAA wins over EUI-64 and T10
    assert wwid_from_vpd(page(t10, eui)) == "20011223344556677"
    assert wwid_from_vpd(page(t10)) == "1ATA_DISK_X1"
    assert wwid_from_vpd(page(naa5)[:-3]) is None  # truncated descriptor ignored
    assert wwid_from_vpd(b"\x00\x80\x00\x00") is None


def test_sysfs_wwid_attribute_and_wwn_comparison() -> None:
    assert wwid_from_sysfs_attr("naa.6001405B177C7B35") == "36001405b177c7b35"
    assert wwid_from_sysfs_attr("eui.0011223344556677") == "20011223344556677"
    assert wwid_from_sysfs_attr("t10.ATA     QEMU HARDDISK   QM00001") == "1ATA_QEMU_HARDDISK_QM00001"
    assert same_wwn("36001405b177c7b35", "6001405B177C7B35")
    assert same_wwn("naa.6001405b177c7b35", "36001405b177c7b35")
    assert same_wwn("0x6001405b177c7b35", "mpath-36001405b177c7b35")
    assert not same_wwn("36001405b177c7b35", "36001405b177c7b36")


# ------------------------------------------------------------------ command wrappers: exit codes and answers
def test_multipath_commands_turn_answers_into_results() -> None:
    ex = (FakeExecutor()
          .on(("multipath", "-a"), (0, "wwid '36001405aa' added\n", ""))
          .on(("multipath", "-f", "busy"), (1, "", "123.4 | busy: map in use\n"))
          .on(("multipath", "-f"), (0, "", ""))
          .on(("multipathd", "resize", "map", "bad"), (0, "fail\n", ""))
          .on(("multipathd",), (0, "ok\n", "")))
    m = Multipath(ex, HostPaths())
    assert m.add_wwid("36001405aa") is True and m.add_path("/dev/sda") is True
    m.flush("36001405aa")
    with pytest.raises(CommandFailed) as exc:
        m.flush("busy")
    assert "in use" in exc.value.stderr
    m.resize("good")
    with pytest.raises(CommandFailed):
        m.resize("bad")  # multipathd says "fail" with exit 0
    assert [c.argv for c in ex.calls][:2] == [("multipath", "-a", "36001405aa"), ("multipathd", "add", "path", "/dev/sda")]


@pytest.mark.parametrize("code, stderr, error, text", [
    (24, "iscsiadm: initiator reported error (24 - iSCSI login failed due to authorization failure)\n",
     AuthenticationFailed, "CHAP"),
    (19, "iscsiadm: initiator reported error (19 - encountered non-retryable iSCSI login failure)\n",
     VolumeNotFound, "non-retryable"),
    (8, "iscsiadm: initiator reported error (8 - connection timed out)\n", ConnectionFailed, "timed out"),
    (20, "iscsiadm: can not connect to iSCSI daemon (111)!\n", ConnectionFailed, "iscsid is not running"),
])
def test_login_exit_codes_become_typed_errors(code: int, stderr: str, error: type, text: str) -> None:
    from blocklink.connection import Portal

    ex = FakeExecutor().on(("iscsiadm",), (code, "", stderr + "iscsiadm: Could not log into all portals\n"))
    with pytest.raises(error) as exc:
        ia.Iscsiadm(ex, HostPaths(), db_retries=1).login("iqn.2003-01.x:y", Portal.parse("10.0.0.1:3260"))
    assert text in str(exc.value) and "iqn.2003-01.x:y at 10.0.0.1:3260" in str(exc.value)
    ok = FakeExecutor().on(("iscsiadm",), (15, "", "iscsiadm: default: 1 session requested, but 1 already present.\n"))
    ia.Iscsiadm(ok, HostPaths()).login("iqn.2003-01.x:y", Portal.parse("10.0.0.1:3260"))  # exists: fine
