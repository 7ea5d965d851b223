"""Property-based fuzzing of every parser of command output (and of the remaining from_dict inputs).

Each parser is a :class:`~tests.reliability.fuzzing.Target` with VALID seeds (recorded real outputs
from tests/vectors/command_outputs.json, the kernel guest and the unit tests) and the known-correct
result of each. Each parser gets those seeds mutated, grammar-built outputs and random text. The
property: a valid seed parses to its known result (a parser that always raises fails); anything
else gives a well-formed result (every entry complete and typed as documented: no half-built entry)
or a :class:`~blocklink.errors.BlocklinkError` subclass, never another exception; parsing is
deterministic (the same text parses to the same result twice).

Short mode: a few hundred cases per target; ``BLOCKLINK_LONG=1``: 10,000 per target.
"""

from __future__ import annotations

import errno
import json
import re
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocklink.connection import AttachedDevice
from blocklink.errors import ConnectionFailed
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host import iscsiadm as ia
from blocklink.initiator.host import nvme
from blocklink.initiator.host.multipath import Multipath, parse_multipath
from blocklink.initiator.qsd import daemon_message
from blocklink.initiator.rbd import RBDConnector
from blocklink.masking import Secret
from blocklink.target import persistence
from blocklink.target.chap import ChapCredentials
from blocklink.target.tgtadm import TgtAdmin, parse_show_accounts, parse_show_targets
from blocklink.testing.fakes import FakeExecutor
from tests.reliability import strategies as S
from tests.reliability.fuzzing import Target, check, check_valid_seeds, strs
from tests.reliability.strategies import FUZZ, field, iqn, num, portal
from tests.unit.test_host_parsers import GUEST_MULTIPATH_LL, GUEST_SESSION_P3
from tests.unit.test_nvme_host import ID_NS_64MIB, LIST_SUBSYS_TWO_PATHS
from tests.unit.test_target_tgtadm import SHOW as TGT_SHOW

_HCTL = re.compile(r"^\d+:\d+:\d+:\d+$")
TARGETS: List[Target] = []


def target(*args: Any, **kw: Any) -> Target:
    t = Target(*args, **kw)
    TARGETS.append(t)
    return t


def vectors(prefix: str, parser: Optional[str] = None) -> List[Dict[str, Any]]:
    """The recorded cases of a command (and os-brick parser) that have an output."""
    return [c for c in S.VECTOR_OUTPUTS if c["command"].startswith(prefix) and c.get("output")
            and (parser is None or c.get("parser") == parser)]


# ================================================================== iscsiadm
def _session_rows(expected: Any) -> List[List[str]]:
    """os-brick's rows ["tcp:", sid, portal, tpgt, iqn] (or the csi-lib-iscsi case's os-brick rows)."""
    if isinstance(expected, dict):
        expected = next(v for k, v in expected.items() if k.startswith("os-brick"))
    return [[r[0].rstrip(":"), *r[1:]] for r in expected if isinstance(r, list)]


SESSION_VALID = [(c["output"], _session_rows(c["expected"])) for c in vectors("iscsiadm -m session")
                 if _session_rows(c["expected"])] + [
    ("tcp: [3] [fd00::1]:3260,1 eui.0123456789abcdef (non-flash)\niser: [4] 10.0.0.1:3260,-1 naa.600140512345678 "
     "(flash)\n", [["tcp", "3", "[fd00::1]:3260", "1", "eui.0123456789abcdef"],
                   ["iser", "4", "10.0.0.1:3260", "-1", "naa.600140512345678"]])]
SESSION_SEEDS = S.vector_outputs("iscsiadm -m session") + [SESSION_VALID[-1][0]]
session_line = st.tuples(field(st.sampled_from(["tcp", "iser", "be2iscsi"])), field(num), portal, field(num),
                         field(iqn), st.sampled_from(["", " (non-flash)", " (flash)", " (other)"])).map(
    lambda t: f"{t[0]}: [{t[1]}] {t[2]},{t[3]} {t[4]}{t[5]}")


def _valid_sessions(out: Any) -> None:
    for s in out:
        strs(s.transport, s.sid, s.portal, s.tpgt, s.iqn)
        check(s.transport and s.sid and s.portal and s.iqn and re.fullmatch(r"-?\d+", s.tpgt), "incomplete session", s)
        check(not any(c.isspace() for c in s.portal + s.iqn), "whitespace in portal or iqn", s)
        check(s.flash in (None, True, False), "flash is not a bool or None", s)


SESSIONS = target("iscsiadm -m session", ia.parse_sessions, SESSION_VALID, _valid_sessions,
                  lambda out: [[s.transport, s.sid, s.portal, s.tpgt, s.iqn] for s in out])


@FUZZ
@given(S.output_strategy(SESSION_SEEDS, session_line))
def test_iscsiadm_sessions(text: str) -> None:
    SESSIONS.fuzz(text)


NODE_SEEDS = S.vector_outputs("iscsiadm -m node") + S.vector_outputs("iscsiadm -m discovery")
node_line = st.tuples(portal, field(num), field(iqn)).map(lambda t: f"{t[0]},{t[1]} {t[2]}")


def _valid_nodes(out: Any) -> None:
    for n in out:
        strs(n.portal, n.tpgt, n.iqn)
        check(n.portal and n.iqn and re.fullmatch(r"-?\d+", n.tpgt) and not n.portal.startswith("[]"),
              "incomplete node entry", n)


NODES = target("iscsiadm -m node", ia.parse_nodes,
               [(c["output"], c["expected"]) for c in vectors("iscsiadm -m node", "ISCSIConnector._get_iscsi_nodes")],
               _valid_nodes, lambda out: [[n.portal, n.iqn] for n in out])


@FUZZ
@given(S.output_strategy(NODE_SEEDS, node_line))
def test_iscsiadm_nodes(text: str) -> None:
    NODES.fuzz(text)


def _valid_discovery(out: Any) -> None:
    for n in out:
        strs(n.portal, n.tpgt, n.iqn)
        check(n.portal and n.iqn.startswith(("iqn.", "eui.", "naa.")) and re.fullmatch(r"-?\d+", n.tpgt),
              "incomplete discovered entry", n)
    for p, name in ia.iter_portals(out):  # what the connector does next: bad portals are skipped
        check(0 <= p.port < 65536 and p.host and name, "a bad portal was not skipped", (p, name))


DISCOVERY = target("iscsiadm -m discovery", ia.parse_discovery,
                   [(c["output"], c["expected"]) for c in vectors("iscsiadm -m discovery ")],
                   _valid_discovery, lambda out: {"ips": [n.portal for n in out], "iqns": [n.iqn for n in out]})


@FUZZ
@given(S.output_strategy(NODE_SEEDS, node_line, st.just("iscsiadm: No portals found")))
def test_iscsiadm_discovery(text: str) -> None:
    DISCOVERY.fuzz(text)


DISCDB = vectors("iscsiadm -m discoverydb")
DISCDB_SEEDS = [c["output"] for c in DISCDB]
discdb_line = st.one_of(
    st.sampled_from(["SENDTARGETS:", "iSNS:", "STATIC:", "FIRMWARE:", "No targets found.", "DiscoveryAddress:"]),
    st.tuples(field(st.sampled_from(["DiscoveryAddress", "Target", "Portal", "Iface Name"])),
              st.one_of(portal, iqn, S.token, portal.map(lambda p: p.replace(":", ",", 1) + ",1"))).map(
        lambda t: f"{t[0]}: {t[1]}"))
_QNAP = "iqn.2004-04.com.qnap:ts-831x:iscsi.cinder-2017.9ef"


def _valid_discoverydb(out: Any) -> None:
    for addr, entries in out.items():
        strs(addr)
        for e in entries:
            check(len(e) == 3, "an entry is not (target, portal, iface)", e)
            strs(*e)
            check(e[0] and e[1], "an entry without target or portal", e)


DISCOVERYDB = target("iscsiadm -m discoverydb", ia.parse_discoverydb, [(DISCDB_SEEDS[0], {
    "192.168.1.33,3260": [], "192.168.1.38,3260": [],
    "ip1,port1": [["192.168.1.3:3260", "tgt1", "default"], ["ip1:port1", "tgt1", "default"],
                  ["ip1:port1", "tgt1", "iser"], ["192.168.1.3:3260", _QNAP, "default"],
                  ["ip1:port1", _QNAP, "default"]]})],
    _valid_discoverydb, lambda out: {a: [list(e) for e in es] for a, es in out.items()})


def _nonempty_strs(values: Any) -> None:
    for v in values:
        strs(v)
        check(v and v == v.strip(), "an empty or padded value", v)


def _discdb_case(c: Dict[str, Any]) -> Tuple[Tuple[str, str, str], List[List[str]]]:
    """(output, discovery address, iface) and os-brick's portals ([] where it raises TargetPortalsNotFound)."""
    props = c["connection_properties"]
    arg = (c["output"], props["target_portal"], "iser" if c.get("connector_transport") == "iser" else "default")
    return arg, [] if isinstance(c["expected"], dict) else [[p, q] for p, q, _ in c["expected"]]


DISCDB_PORTALS = target("iscsiadm -m discoverydb (portals)", lambda a: ia.discoverydb_portals(*a),
                        [_discdb_case(c) for c in DISCDB],
                        lambda out: _nonempty_strs([x for pq in out for x in pq]),
                        lambda out: [list(x) for x in out])


@FUZZ
@given(S.output_strategy(DISCDB_SEEDS, discdb_line), field(portal), st.sampled_from(["default", "iser", ""]))
def test_iscsiadm_discoverydb(text: str, discovery: str, iface: str) -> None:
    DISCOVERYDB.fuzz(text)
    DISCDB_PORTALS.fuzz((text, discovery, iface))


SCAN_RECORD = "# BEGIN RECORD 2.1.8\nnode.name = iqn.x:y\nnode.session.scan = auto\nnode.custom = 7\n# END RECORD\n"
RECORD_SEEDS = S.vector_outputs("iscsiadm -m node --op show") + S.vector_outputs("iscsiadm -m iface") + [SCAN_RECORD]
record_line = st.one_of(st.tuples(st.from_regex(r"\A[a-z._\[\]0-9]{1,30}\Z"), S.token).map(lambda t: f"{t[0]} = {t[1]}"),
                        st.sampled_from(["# BEGIN RECORD 2.1.8", "# END RECORD", "#", " = ", "a = b = c"]))


def _node_show(n: int, startup: str) -> Dict[str, str]:
    return {"node.name": f"iqn.2010-10.org.openstack:volume-00000001-{n}", "node.tpgt": "1", "node.startup": startup,
            "iface.hwaddress": "<empty>"}


_C_BLANKS = " \t\r\v\f"  # what iscsid trims (C isspace)


def _valid_records(out: Any) -> None:
    for rec in out:
        check(isinstance(rec, dict), "a record is not a dict", rec)
        for k, v in rec.items():
            strs(k, v)
            check(k == k.strip(_C_BLANKS) and v == v.strip(_C_BLANKS), "a key or value keeps surrounding blanks", (k, v))


RECORDS = target("iscsiadm node/iface records", ia.parse_records, [
    (RECORD_SEEDS[0], [_node_show(1, "manual"), _node_show(2, "automatic"), _node_show(3, "manual")]),
    (S.vector_outputs("iscsiadm -m iface")[0], [{
        "iface.iscsi_ifacename": "bnx2i.fake_suffix", "iface.net_ifacename": "<empty>", "iface.ipaddress": "<empty>",
        "iface.hwaddress": "00:53:00:00:53:00", "iface.transport_name": "bnx2i", "iface.initiatorname": "<empty>"}]),
    (SCAN_RECORD, [{"node.name": "iqn.x:y", "node.session.scan": "auto", "node.custom": "7"}])], _valid_records)
IFACE = target("iscsiadm -m iface (transport)", lambda t: ia.iface_transport(t, "bnx2i.fake_suffix"),
               [(c["output"], c["expected"]) for c in vectors("iscsiadm -m iface")] + [("", "default")],
               lambda out: check(out in ("bnx2i.fake_suffix", "default"), "not the iface nor default", out))
REWRITE = target("iscsiadm record rewrite",
                 lambda t: ia.parse_records(ia.rewrite_record(t, {"node.session.scan": "manual"})),
                 [(SCAN_RECORD, [{"node.name": "iqn.x:y", "node.session.scan": "manual", "node.custom": "7"}])],
                 # a rewritten record keeps what it had and gains exactly what was set
                 lambda out: check({k: v for r in out for k, v in r.items()}.get("node.session.scan") == "manual",
                                   "the rewritten record lost the setting", out))


@FUZZ
@given(S.output_strategy(RECORD_SEEDS, record_line))
def test_iscsiadm_records_and_rewrite(text: str) -> None:
    check(RECORDS.fuzz(text) is not None, "iscsiadm records raised on text that is not a record", text)
    IFACE.fuzz(text)
    check(REWRITE.fuzz(text) is not None, "rewriting a record raised", text)


P3_SEEDS = [GUEST_SESSION_P3]
p3_line = st.one_of(
    st.tuples(st.sampled_from(["Target", "Current Portal", "Persistent Portal", "Iface Name", "SID",
                               "iSCSI Connection State", "iSCSI Session State", "Host Number", "password"]),
              st.one_of(iqn, portal.map(lambda p: p + ",1"), S.token)).map(lambda t: f"\t\t{t[0]}: {t[1]}"),
    st.tuples(*[field(num)] * 4).map(lambda t: f"\t\tscsi{t[0]} Channel {t[1]} Id {t[2]} Lun: {t[3]}"),
    st.tuples(field(S.sd), S.token).map(lambda t: f"\t\t\tAttached scsi disk {t[0]}\t\tState: {t[1]}"))


def _valid_p3(out: Any) -> None:
    for d in out:
        strs(d.iqn, d.portal, d.tpgt, d.sid, d.iface, d.connection_state, d.session_state)
        check(d.iqn, "a session without target", d)
        check(d.host is None or (isinstance(d.host, int) and d.host >= 0), "a bad host number", d)
        for h, disk, state in d.devices:
            check(_HCTL.match(h) and (disk is None or isinstance(disk, str)) and isinstance(state, str),
                  "a bad device entry", (h, disk, state))


_SHARED = "iqn.2003-01.org.example:shared"
P3 = target("iscsiadm -m session -P 3", ia.parse_session_details, [(GUEST_SESSION_P3, [
    [_SHARED, "127.0.0.1:3260", "1", "1", "default", "LOGGED IN", "LOGGED_IN", 0,
     [["0:0:0:1", "sda", "running"], ["0:0:0:2", None, ""]]],
    [_SHARED, "127.0.0.2:3260", "1", "2", "", "", "FAILED", 1, []]])], _valid_p3,
    lambda out: [[d.iqn, d.portal, d.tpgt, d.sid, d.iface, d.connection_state, d.session_state, d.host,
                  [list(x) for x in d.devices]] for d in out])


@FUZZ
@given(S.output_strategy(P3_SEEDS, p3_line))
def test_iscsiadm_session_p3(text: str) -> None:
    P3.fuzz(text)


# ================================================================== multipath
MP_SEEDS = S.vector_outputs("multipath -l") + [GUEST_MULTIPATH_LL]
mp_line = st.one_of(
    st.tuples(field(st.sampled_from(["", "create: ", "reload: "])), field(S.sd), field(st.from_regex(r"\A3[0-9a-f]{8,32}\Z")),
              field(st.from_regex(r"\Adm-[0-9]{1,3}\Z")), S.token).map(lambda t: f"{t[0]}{t[1]} ({t[2]}) {t[3]} {t[4]}"),
    st.tuples(field(S.token), S.token).map(lambda t: f"size={t[0]} features='0' hwhandler='{t[1]}' wp=rw"),
    st.tuples(st.sampled_from(["|-+- ", "`-+- ", "  "]), S.token).map(lambda t: f"{t[0]}policy='{t[1]}' prio=1 status=active"),
    st.tuples(st.sampled_from(["  |- ", "  `- ", "| `- "]), field(S.hctl), field(S.sd), field(st.just("8:0")),
              S.token).map(lambda t: f"{t[0]}{t[1]} {t[2]} {t[3]} active ready {t[4]}"))


def _valid_maps(out: Any) -> None:
    for m in out:
        strs(m.name, m.wwid, m.dm, m.vendor_product, m.size, m.action)
        check(m.name and m.wwid and (m.dm == "undef" or re.fullmatch(r"dm-\d+", m.dm)), "an incomplete map", m)
        check(m.device == f"/dev/mapper/{m.name}", "the map device is not /dev/mapper/<name>", m)
        for p in m.paths:
            check(_HCTL.match(p.hctl) and p.device and re.fullmatch(r"\d+:\d+", p.majmin), "a bad path", p)


def _map_view(out: Any) -> Any:
    """os-brick's find_multipath_device dict of each map."""
    return [{"device": m.device, "id": m.wwid, "name": m.name,
             "devices": [dict(zip(("host", "channel", "id", "lun"), p.hctl.split(":")), device=f"/dev/{p.device}")
                         for p in m.paths]} for m in out]


_GUEST_WWID = "360014053dd9f0fb50e844579e28b0367"
MULTIPATH = target("multipath -ll", parse_multipath, [(c["output"], [c["expected"]]) for c in vectors("multipath -l ")] + [
    (GUEST_MULTIPATH_LL, [{"device": f"/dev/mapper/{_GUEST_WWID}", "id": _GUEST_WWID, "name": _GUEST_WWID, "devices": [
        {"host": "0", "channel": "0", "id": "0", "lun": "0", "device": "/dev/sda"},
        {"host": "1", "channel": "0", "id": "0", "lun": "0", "device": "/dev/sdb"}]}])], _valid_maps, _map_view)


@FUZZ
@given(S.output_strategy(MP_SEEDS, mp_line))
def test_multipath_ll(text: str) -> None:
    MULTIPATH.fuzz(text)


def _multipath(text: str, rc: int) -> Multipath:
    return Multipath(FakeExecutor().on(("multipathd",), (rc, text, "")).on(("multipath",), (rc, text, "")), HostPaths())


def _bool(out: Any) -> None:
    check(isinstance(out, bool), "not a bool", out)


MPD_STATUS = target("multipathd show status", lambda a: _multipath(*a).running(),
                    [((c["output"], 0), c["expected"]) for c in S.VECTOR_OUTPUTS
                     if c["command"] == "multipathd show status"] + [(("", 1), False)], _bool)
MP_READY = target("multipath -C", lambda a: _multipath(*a).usable("dm-7"),
                  [((c["output"], 0), c["expected"]["ready"]) for c in vectors("multipath -C")] + [(("", 1), False)],
                  _bool)


@FUZZ
@given(S.output_strategy(S.vector_outputs("multipathd show status") + S.vector_outputs("multipath -C"),
                         st.sampled_from(["path checker states:", "up 2", "paths: 2", "busy: False", "idle"])),
       st.integers(-1, 2))
def test_multipathd_status_and_ready(text: str, rc: int) -> None:
    MPD_STATUS.fuzz((text, rc))
    MP_READY.fuzz((text, rc))


# ================================================================== tgtadm (show target / account / sys)
SYS_SHOW = ("System:\n    State: ready\n    debug: off\nLLDs:\n    iscsi: ready\n    iser: error\n"
            "Backing stores:\n    rdwr (bsoflags sync:direct)\n    aio\n    null\nDevice types:\n    disk\n"
            "iSNS:\n    iSNS=Off\n")
ACCOUNTS = "Account list:\n    user-a\n    user-b\n    out-c (outgoing)\n"
tgt_line = st.one_of(
    st.tuples(field(num), field(iqn)).map(lambda t: f"Target {t[0]}: {t[1]}"),
    st.sampled_from(["    System information:", "    I_T nexus information:", "    LUN information:",
                     "    Account information:", "    ACL information:", "    Bogus section:"]),
    st.tuples(st.sampled_from(["I_T nexus", "Initiator", "Connection", "IP Address", "LUN", "Type", "SCSI ID",
                               "Size", "Readonly", "Backing store path", "Backing store type"]),
              st.one_of(num, iqn, S.token, num.map(lambda n: f"{n} MB, Block size: 512"))).map(
        lambda t: f"        {t[0]}: {t[1]}"),
    st.one_of(iqn, S.token, st.just("ALL"), st.just("10.0.0.0/8")).map(lambda v: f"        {v}"),
    st.one_of(S.token).map(lambda u: f"        {u} (outgoing)"))


def _valid_tgt_targets(out: Any) -> None:
    for t in out:
        check(isinstance(t.tid, int) and t.iqn and isinstance(t.iqn, str), "a target without tid or iqn", t)
        for n, lun in t.luns.items():
            check(isinstance(n, int) and lun.lun == n and isinstance(lun.size_mb, int), "a bad LUN", lun)
            check(lun.path is None or isinstance(lun.path, str), "a bad LUN path", lun)
        for s in t.sessions:
            check(isinstance(s.sid, int) and isinstance(s.initiator, str), "a bad session", s)
            check(all(isinstance(c, int) and isinstance(a, str) for c, a in s.connections), "a bad connection", s)
        strs(*t.incoming, *t.outgoing, *t.acl_names, *t.acl_addresses)


def _tgt_view(out: Any) -> Any:
    return [[t.tid, t.iqn, {n: [x.type, x.path, x.bstype, x.scsi_id, x.size_mb, x.readonly] for n, x in t.luns.items()},
             list(t.incoming), list(t.outgoing), list(t.acl_names), list(t.acl_addresses),
             [[s.sid, s.initiator, [list(c) for c in s.connections]] for s in t.sessions]] for t in out]


_RH = "iqn.1994-05.com.redhat:host"
TGT_TARGETS = target("tgtadm show target", parse_show_targets, [(TGT_SHOW, [
    [1, "iqn.2010-10.org.openstack:volume-abc",
     {0: ["controller", None, "null", "IET     00010000", 0, False], 1: ["disk", "/tmp/tgtexp/lun.img", "rdwr", "abc", 67, False]},
     ["u1"], ["m1"], [f"{_RH}1"], ["ALL", "10.0.0.0/24"],
     [[4, f"{_RH}1", [[0, "127.0.0.1"]]], [9, f"{_RH}2", [[1, "10.77.0.2"]]]]],
    [2, "iqn.2010-10.org.openstack:volume-x2", {0: ["controller", None, "null", "IET     00020000", 0, False]},
     [], [], [], [], []]])], _valid_tgt_targets, _tgt_view)


@FUZZ
@given(S.output_strategy([TGT_SHOW], tgt_line))
def test_tgtadm_show_target(text: str) -> None:
    TGT_TARGETS.fuzz(text)


class _SysAdmin(TgtAdmin):
    """TgtAdmin.ready over a given "show sys" reply."""

    def __init__(self, reply: str) -> None:
        self.reply = reply

    def request(self, *a: Any, **k: Any) -> str:
        return self.reply


# tgtd's account list names each account once; "(outgoing)" marks only a target's own account lines
TGT_ACCOUNTS = target("tgtadm show account", parse_show_accounts,
                      [("Account list:\n    m1\n    u1\n", ["m1", "u1"]), ("Account list:\n", []), ("", [])],
                      _nonempty_strs)
TGT_SYS = target("tgtadm show sys", lambda text: _SysAdmin(text).ready(),
                 [(SYS_SHOW, True), (SYS_SHOW.replace("State: ready", "State: offline"), False)], _bool)


@FUZZ
@given(S.output_strategy([ACCOUNTS, SYS_SHOW], tgt_line))
def test_tgtadm_show_account_and_sys(text: str) -> None:
    TGT_ACCOUNTS.fuzz(text)
    TGT_SYS.fuzz(text)


# ================================================================== tgt export records (targets.conf syntax)
RECORD_OBJ = persistence.TgtRecord(
    iqn="iqn.2010-10.org.openstack:volume-v1", device_path="/dev/vg/volume-v1", bstype="aio", scsi_id="v1",
    incoming=ChapCredentials("user1", Secret("secret-123456")), initiators=("iqn.1994-05.com.redhat:h1",))
RECORD = persistence.render(RECORD_OBJ)
rec_line = st.one_of(st.tuples(st.sampled_from(["backing-store", "bs-type", "bsoflags", "scsi_id", "incominguser",
                                                "outgoinguser", "initiator-name", "params", "driver", "bogus"]),
                               S.token).map(lambda t: f"    {t[0]} {t[1]}"),
                     st.one_of(iqn, S.token).map(lambda t: f"<target {t}>"), st.just("</target>"))
# whatever parses renders and parses back to the same record
TGT_RECORD = target("tgt export record (targets.conf)", persistence.parse, [(RECORD, RECORD_OBJ)],
                    lambda rec: check(persistence.parse(persistence.render(rec)) == rec,
                                      "the record does not survive render + parse", rec))


@FUZZ
@given(S.output_strategy([RECORD], rec_line))
def test_tgt_export_record(text: str) -> None:
    TGT_RECORD.fuzz(text)


# ================================================================== rbd / ceph JSON
NBD_LIST = [[{"id": "1234", "pool": "volumes", "namespace": "", "image": "volume-1", "snap": "-",
              "device": "/dev/nbd0"}], []]
KRBD_LIST = [[{"id": "0", "pool": "volumes", "namespace": "", "name": "volume-1", "snap": "-", "device": "/dev/rbd0"}]]
RBD_STATUS = [{"watchers": [{"address": "127.0.0.1:0/3121", "client": 4123, "cookie": 94}]}, {"watchers": []}]
RBD_INFO = {"name": "volumes/volume-1", "hosts": ["127.0.0.1"], "ports": ["6789"], "auth_enabled": False}


def _nbd_paths(arg: Tuple[str, int]) -> Any:
    text, rc = arg
    conn = RBDConnector(device_type="nbd", executor=FakeExecutor().on(("rbd-nbd",), (rc, text, "")))
    return conn.get_volume_paths(RBD_INFO)


NBD_MAPPED = target("rbd-nbd list-mapped --format json", _nbd_paths,
                    [((json.dumps(NBD_LIST[0]), 0), ["/dev/nbd0"]), ((json.dumps(NBD_LIST[1]), 0), []),
                     ((json.dumps([dict(NBD_LIST[0][0], image="volume-2")]), 0), [])],
                    lambda out: check(isinstance(out, list) and all(isinstance(p, str) and p for p in out),
                                      "not a list of device paths", out))


@FUZZ
@given(S.mutated_json(NBD_LIST + KRBD_LIST + RBD_STATUS, ["pool", "image", "namespace", "snap", "device"]),
       st.integers(0, 1))
def test_rbd_nbd_list_mapped(text: str, rc: int) -> None:
    NBD_MAPPED.fuzz((text, rc))


_MON_VECTOR = next(c for c in S.VECTOR_OUTPUTS if c["command"].startswith("ceph mon dump"))
MON_DUMP = json.loads(_MON_VECTOR["output"].split("\n", 1)[1])
MON_DUMP_V2 = {"epoch": 2, "mons": [{"rank": 0, "name": "a", "public_addrs": {"addrvec": [
    {"type": "v2", "addr": "127.0.0.1:3300", "nonce": 0}, {"type": "v1", "addr": "127.0.0.1:6789", "nonce": 0}]},
    "addr": "127.0.0.1:6789/0", "public_addr": "127.0.0.1:6789/0"}]}


class _MonCluster:
    """A rados.Rados stand-in answering ``mon dump`` with fuzzed bytes (RbdTarget.monitors parses them)."""

    def __init__(self, out: bytes) -> None:
        self.out = out

    def mon_command(self, cmd: str, inbuf: bytes) -> Any:
        return 0, self.out, ""


def _monitors(t: str) -> Any:
    from blocklink.target.rbd import RbdTarget

    rbd_target = RbdTarget(pool="volumes")
    rbd_target._cluster = _MonCluster(t.encode("utf-8", "surrogatepass"))
    return rbd_target.monitors()


MONS = target("ceph mon dump --format json", _monitors, [
    (json.dumps(MON_DUMP), [list(hp) for hp in zip(_MON_VECTOR["expected"]["hosts"], _MON_VECTOR["expected"]["ports"])]),
    (json.dumps(MON_DUMP_V2), [["127.0.0.1", "6789"]])],
    lambda out: check(all(isinstance(h, str) and isinstance(p, str) for h, p in out), "not (host, port) strings", out),
    lambda out: [list(x) for x in out])


@FUZZ
@given(S.mutated_json([MON_DUMP, MON_DUMP_V2], ["mons", "addr", "public_addr", "public_addrs", "addrvec", "type"]))
def test_ceph_mon_dump(text: str) -> None:
    MONS.fuzz(text)


# ================================================================== nvme-cli
ID_NS = target("nvme id-ns -o json", nvme.parse_id_ns_size, [(ID_NS_64MIB, 64 << 20)],
               lambda out: check(out is None or (isinstance(out, int) and out >= 0), "not a size or None", out))


@FUZZ
@given(S.mutated_json([json.loads(ID_NS_64MIB)], ["nsze", "flbas", "lbafs", "ds"]))
def test_nvme_id_ns(text: str) -> None:
    ID_NS.fuzz(text)


def _valid_subsys(out: Any) -> None:
    for s in out:
        check(set(s) == {"name", "nqn", "paths"} and isinstance(s["paths"], list), "an incomplete subsystem", s)
        for p in s["paths"]:
            check(set(p) == {"name", "transport", "address", "state"}, "an incomplete path", p)


def _nvme_path(n: int) -> Dict[str, str]:
    return {"name": f"nvme{n}", "transport": "tcp", "address": f"traddr=127.0.0.{n + 1},trsvcid=4420,src_addr=127.0.0.1",
            "state": "live"}


SUBSYS = target("nvme list-subsys -o json", nvme.parse_list_subsys, [
    (LIST_SUBSYS_TWO_PATHS, [{"name": "nvme-subsys0", "nqn": "nqn.2014-08.org.blvm:sub1",
                              "paths": [_nvme_path(0), _nvme_path(1)]}]),
    (json.dumps({"Subsystems": []}), []), ("[]", [])], _valid_subsys)


@FUZZ
@given(S.mutated_json([json.loads(LIST_SUBSYS_TWO_PATHS), {"Subsystems": []}, []],
                      ["Subsystems", "Paths", "Name", "NQN", "Transport", "Address", "State"]))
def test_nvme_list_subsys(text: str) -> None:
    SUBSYS.fuzz(text)


NVME_ADDRESS = target("nvme sysfs address", nvme.parse_address, [
    ("traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1", {"traddr": "127.0.0.1", "trsvcid": "4420",
                                                          "src_addr": "127.0.0.1"}),
    ("traddr=::1,trsvcid=4420", {"traddr": "::1", "trsvcid": "4420"})],
    lambda out: check(all(isinstance(k, str) and isinstance(v, str) for k, v in out.items()), "not str: str", out))
_UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
NVME_IDS = target("nvme uuid/nguid", lambda t: [nvme.normalize_uuid(t), nvme.normalize_nguid(t)], [
    (_UUID.upper(), [_UUID, _UUID.replace("-", "")]), (_UUID.replace("-", ""), [_UUID, _UUID.replace("-", "")]),
    ("x", [None, None])],
    lambda out: check(all(x is None or re.fullmatch(r"[0-9a-f\-]{32,36}", x) for x in out), "not a normalised id", out))


@FUZZ
@given(S.output_strategy([a for a, _ in NVME_ADDRESS.valid]), st.one_of(st.text(max_size=40), S.hostile_token))
def test_nvme_sysfs_address_and_ids(text: str, ident: str) -> None:
    NVME_ADDRESS.fuzz(text)
    NVME_IDS.fuzz(ident)


def _classify(arg: Tuple[Optional[int], bool]) -> Any:
    code, authenticated = arg
    return nvme.classify_fabrics_error(OSError(code, "x"), "nqn.2014-08.org.x:s at tcp://127.0.0.1:4420", None,
                                       authenticated=authenticated)


_AT = "cannot connect to nqn.2014-08.org.x:s at tcp://127.0.0.1:4420: "
NVME_CONNECT = target("/dev/nvme-fabrics write (errno)", _classify, [
    ((errno.ECONNREFUSED, False), ["ConnectionFailed", _AT + "portal unreachable (connection refused)"]),
    ((errno.EIO, False),  # the kernel's answer to a refused host NQN
     ["AuthenticationFailed", _AT + "the target refused the connection: this host's NQN is not among the "
                                    "subsystem's allowed hosts (or the subsystem does not exist at this portal, or "
                                    "it requires authentication)"]),
    ((errno.EALREADY, True), None)],
    lambda out: check(out is None or isinstance(out, ConnectionFailed), "not a ConnectionFailed or None", out),
    lambda out: None if out is None else [type(out).__name__, str(out)])


@FUZZ
@given(st.one_of(st.none(), st.integers(-1, 300)), st.booleans())
def test_nvme_connect_errors(code: Optional[int], authenticated: bool) -> None:
    NVME_CONNECT.fuzz((code, authenticated))


# ================================================================== qemu-storage-daemon stderr
_QSD_ISCSI = ("--blockdev driver=iscsi,...: iSCSI: Failed to connect to LUN : iscsi_service failed with : "
              "iscsi_service_reconnect_if_loggedin. Can not reconnect")
QSD_MESSAGE = target("qemu-storage-daemon stderr", daemon_message, [
    (f"qemu-storage-daemon: {_QSD_ISCSI}\n", _QSD_ISCSI),
    ("qemu-storage-daemon: Could not open 'rbd:volumes/x': No such file or directory\n",
     "Could not open 'rbd:volumes/x': No such file or directory")],
    lambda out: check(isinstance(out, str), "not a str", out))


@FUZZ
@given(S.output_strategy([a for a, _ in QSD_MESSAGE.valid]))
def test_qsd_daemon_message(text: str) -> None:
    QSD_MESSAGE.fuzz(text)


# ================================================================== AttachedDevice.from_dict (os-brick device_info)
DEVICE_SEEDS: List[Dict[str, Any]] = [{"type": "block", "path": "/dev/sdb", "scsi_wwn": "36001405b177c7b35", "multipath_id": None},
                {"type": "block", "path": "/dev/dm-0", "scsi_wwn": "3600", "multipath_id": "3600"},
                {"type": "file", "path": "/run/blocklink/qsd/x/disk"}, {"path": "/dev/rbd0"}]


@st.composite
def device_dicts(draw: Any) -> Any:
    d = dict(draw(st.sampled_from(DEVICE_SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        k = draw(st.sampled_from(["type", "path", "scsi_wwn", "multipath_id", "protocol", "extra"]))
        if draw(st.booleans()):
            d[k] = draw(st.one_of(S.json_value, S.hostile_token, st.sampled_from(["block", "file", "handle"])))
        else:
            d.pop(k, None)
    return d if draw(st.integers(0, 19)) else draw(S.json_value)


def _valid_device(dev: AttachedDevice) -> None:
    check(dev.type in ("block", "file", "handle") and (dev.path is not None or dev.handle is not None),
          "a device without a kind or a path/handle", dev)
    check(AttachedDevice.from_dict(dev.to_dict(), dev.protocol) == dev, "to_dict/from_dict does not round-trip", dev)


def _device_view(dev: AttachedDevice) -> Any:
    d = dev.to_dict()
    return {k: d.get(k) for k in ("type", "path", "scsi_wwn", "multipath_id")}


DEVICE = target("AttachedDevice.from_dict", AttachedDevice.from_dict,  # each seed's fields come back unchanged
                [(d, {k: d.get(k, "block" if k == "type" else None) for k in ("type", "path", "scsi_wwn", "multipath_id")})
                 for d in DEVICE_SEEDS], _valid_device, _device_view)


@FUZZ
@given(device_dicts())
def test_attached_device_from_dict(d: Any) -> None:
    DEVICE.fuzz(d)


# ================================================================== every valid seed of every target
@pytest.mark.parametrize("fuzz_target", TARGETS, ids=[t.name for t in TARGETS])
def test_valid_seeds_parse_to_their_known_results(fuzz_target: Target) -> None:
    """A parser that always raises a typed error (or returns nothing) fails here, not just by chance."""
    assert check_valid_seeds([fuzz_target]) == [fuzz_target.name]



# ================================================================== what the fuzzing found (fixed), kept as regressions
def test_found_truncated_target_line_in_session_p3() -> None:
    # was IndexError: "Target:" with nothing after it (a killed iscsiadm mid-line)
    assert ia.parse_session_details("iSCSI Transport Class version 2.0-870\nTarget:") == []
    assert ia.parse_session_details("Target:\n\tCurrent Portal: 1.2.3.4:3260,1\n") == []


def test_found_rbd_nbd_list_mapped_entries_that_are_not_objects() -> None:
    # was AttributeError on a nested list; an entry without a /dev path was returned as "None"
    for out in ('[[{"pool": "volumes", "image": "volume-1", "device": "/dev/nbd0"}]]', '[null, 3, "x"]',
                '[{"pool": "volumes", "image": "volume-1", "snap": "-"}]'):
        conn = RBDConnector(device_type="nbd", executor=FakeExecutor().on(("rbd-nbd",), (0, out, "")))
        assert conn.get_volume_paths(RBD_INFO) == []


def test_found_mon_dump_that_is_not_a_monitor_map() -> None:
    # was JSONDecodeError / AttributeError / TypeError out of RbdTarget.monitors()
    from blocklink.errors import TargetError
    from blocklink.target.rbd import RbdTarget

    for out in (b"{", b"0", b'{"mons": [null]}', b'{"mons": [{"addr": ["1.2.3.4:6789/0"]}]}', b"\xff"):
        rbd_target = RbdTarget(pool="volumes")
        rbd_target._cluster = _MonCluster(out)
        with pytest.raises(TargetError, match="mon dump"):
            rbd_target.monitors()


def test_found_nvme_list_subsys_with_non_object_entries() -> None:
    # was AttributeError: 'list' object has no attribute 'get'
    assert nvme.parse_list_subsys("[[null]]") == []
    assert nvme.parse_list_subsys('[{"Subsystems": [1, {"Name": "s", "NQN": "n", "Paths": [null]}]}]') == [
        {"name": "s", "nqn": "n", "paths": []}]


def test_found_by_the_long_run() -> None:
    # multipath: "size=" cut short (IndexError)
    (m,) = parse_multipath("360014053dd9 dm-0 LIO-ORG,FILEIO\nsize=")
    assert m.size == ""
    # tgtadm: "I_T nexus:"/"Connection:"/"LUN:" without a number (ValueError); the rest still parses
    (t,) = parse_show_targets("Target 1: iqn.2010-10.org.x:v\n    I_T nexus information:\n        I_T nexus:\n"
                              "            Initiator: iqn.a:b alias: none\n            Connection:\n"
                              "        I_T nexus: 9\n            Initiator: iqn.c:d alias: none\n"
                              "    LUN information:\n        LUN:\n            Type: disk\n        LUN: 1\n"
                              "            Type: disk\n")
    assert [(s.sid, s.initiator) for s in t.sessions] == [(9, "iqn.c:d")] and list(t.luns) == [1]
    # nvme list-subsys: "Subsystems"/"Paths" that are not lists (TypeError)
    assert nvme.parse_list_subsys('{"Subsystems": 1.0}') == []
    assert nvme.parse_list_subsys('[{"Subsystems": [{"Name": "s", "Paths": 3}]}]')[0]["paths"] == []
    # iscsiadm records: a repeated key kept its old value after rewrite (iscsiadm reads the last one)
    text = "# BEGIN RECORD 2.1.8\nnode.session.scan = auto\nnode.session.scan = auto\n# END RECORD\n"
    out = ia.rewrite_record(text, {"node.session.scan": "manual"})
    assert ia.parse_records(out) == [{"node.session.scan": "manual"}] and out.count("node.session.scan") == 1


def test_found_nvme_id_ns_negative_size_or_absurd_format() -> None:
    # was a negative size (nsze -1) or a shift by billions of bits (ds huge) handed to extend_volume
    base = json.loads(ID_NS_64MIB)
    assert nvme.parse_id_ns_size(json.dumps(base)) == 64 * 1024 * 1024
    assert nvme.parse_id_ns_size(json.dumps(dict(base, nsze="-1"))) is None
    assert nvme.parse_id_ns_size(json.dumps(dict(base, lbafs=[{"ds": 10 ** 12}]))) is None
    # was OverflowError: json.loads reads Infinity, int() cannot take it
    assert nvme.parse_id_ns_size(json.dumps(dict(base, nsze=float("inf")))) is None
    assert nvme.parse_id_ns_size(json.dumps(dict(base, flbas=float("inf")))) is None
