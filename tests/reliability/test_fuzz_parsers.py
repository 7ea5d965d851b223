"""Property-based fuzzing of every parser of command output (and of the remaining from_dict inputs).

Each parser gets mutated real outputs, grammar-built outputs and random text. The property: the
parser returns a well-formed result (every entry complete and typed as documented: no half-built
entry) or raises a :class:`~blocklink.errors.BlocklinkError` subclass; never another exception.
Parsing is deterministic (the same text parses to the same result twice).

Short mode: a few hundred cases per target; ``BLOCKLINK_LONG=1``: 10,000 per target.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional

from hypothesis import given
from hypothesis import strategies as st

from blocklink.connection import AttachedDevice
from blocklink.errors import BlocklinkError, CommandFailed, ConnectionFailed
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host import iscsiadm as ia
from blocklink.initiator.host import nvme
from blocklink.initiator.host.multipath import Multipath, parse_multipath
from blocklink.initiator.host.nvme import NvmePortalSpec
from blocklink.initiator.qsd import daemon_message
from blocklink.initiator.rbd import RBDConnector
from blocklink.target import persistence
from blocklink.target.tgtadm import parse_show_accounts, parse_show_targets
from blocklink.testing.fakes import FakeExecutor
from tests.reliability import strategies as S
from tests.reliability.results import RESULTS
from tests.reliability.strategies import FUZZ, field, iqn, num, portal
from tests.unit.test_host_parsers import GUEST_MULTIPATH_LL, GUEST_SESSION_P3
from tests.unit.test_nvme_host import ID_NS_64MIB, LIST_SUBSYS_TWO_PATHS
from tests.unit.test_target_tgtadm import SHOW as TGT_SHOW

_HCTL = re.compile(r"^\d+:\d+:\d+:\d+$")


def fuzz(target: str, fn: Callable[[Any], Any], arg: Any, validate: Optional[Callable[[Any], None]] = None) -> Any:
    """One case: typed error or a valid result; the same result twice."""
    RESULTS.fuzzed(target)
    try:
        out = fn(arg)
    except BlocklinkError:
        return None
    assert _same(fn(arg), out)
    if validate is not None:
        validate(out)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        return type(a) is type(b) and str(a) == str(b)
    return bool(a == b)


def _strs(*values: Any) -> None:
    for v in values:
        assert isinstance(v, str), v


# ================================================================== iscsiadm
SESSION_SEEDS = S.vector_outputs("iscsiadm -m session") + [
    "tcp: [3] [fd00::1]:3260,1 eui.0123456789abcdef (non-flash)\niser: [4] 10.0.0.1:3260,-1 naa.600140512345678 (flash)\n"]
session_line = st.tuples(field(st.sampled_from(["tcp", "iser", "be2iscsi"])), field(num), portal, field(num),
                         field(iqn), st.sampled_from(["", " (non-flash)", " (flash)", " (other)"])).map(
    lambda t: f"{t[0]}: [{t[1]}] {t[2]},{t[3]} {t[4]}{t[5]}")


def _valid_sessions(out: Any) -> None:
    for s in out:
        _strs(s.transport, s.sid, s.portal, s.tpgt, s.iqn)
        assert s.transport and s.sid and s.portal and s.iqn and re.fullmatch(r"-?\d+", s.tpgt)
        assert not any(c.isspace() for c in s.portal + s.iqn)
        assert s.flash in (None, True, False)


@FUZZ
@given(S.output_strategy(SESSION_SEEDS, session_line))
def test_iscsiadm_sessions(text: str) -> None:
    fuzz("iscsiadm -m session", ia.parse_sessions, text, _valid_sessions)


NODE_SEEDS = S.vector_outputs("iscsiadm -m node") + S.vector_outputs("iscsiadm -m discovery")
node_line = st.tuples(portal, field(num), field(iqn)).map(lambda t: f"{t[0]},{t[1]} {t[2]}")


def _valid_nodes(out: Any) -> None:
    for n in out:
        _strs(n.portal, n.tpgt, n.iqn)
        assert n.portal and n.iqn and re.fullmatch(r"-?\d+", n.tpgt) and not n.portal.startswith("[]")


@FUZZ
@given(S.output_strategy(NODE_SEEDS, node_line))
def test_iscsiadm_nodes(text: str) -> None:
    fuzz("iscsiadm -m node", ia.parse_nodes, text, _valid_nodes)


@FUZZ
@given(S.output_strategy(NODE_SEEDS, node_line, st.just("iscsiadm: No portals found")))
def test_iscsiadm_discovery(text: str) -> None:
    def valid(out: Any) -> None:
        for n in out:
            _strs(n.portal, n.tpgt, n.iqn)
            assert n.portal and n.iqn.startswith(("iqn.", "eui.", "naa.")) and re.fullmatch(r"-?\d+", n.tpgt)
        for p, name in ia.iter_portals(out):  # what the connector does next: bad portals are skipped
            assert 0 <= p.port < 65536 and p.host and name

    fuzz("iscsiadm -m discovery", ia.parse_discovery, text, valid)


DISCDB_SEEDS = S.vector_outputs("iscsiadm -m discoverydb")
discdb_line = st.one_of(
    st.sampled_from(["SENDTARGETS:", "iSNS:", "STATIC:", "FIRMWARE:", "No targets found.", "DiscoveryAddress:"]),
    st.tuples(field(st.sampled_from(["DiscoveryAddress", "Target", "Portal", "Iface Name"])),
              st.one_of(portal, iqn, S.token, portal.map(lambda p: p.replace(":", ",", 1) + ",1"))).map(
        lambda t: f"{t[0]}: {t[1]}"))


@FUZZ
@given(S.output_strategy(DISCDB_SEEDS, discdb_line), field(portal), st.sampled_from(["default", "iser", ""]))
def test_iscsiadm_discoverydb(text: str, discovery: str, iface: str) -> None:
    def valid(out: Any) -> None:
        for addr, entries in out.items():
            _strs(addr)
            for e in entries:
                assert len(e) == 3
                _strs(*e)
                assert e[0] and e[1]

    fuzz("iscsiadm -m discoverydb", ia.parse_discoverydb, text, valid)

    def portals(t: str) -> Any:
        return ia.discoverydb_portals(t, discovery, iface)

    fuzz("iscsiadm -m discoverydb (portals)", portals, text,
         lambda out: [(_strs(p, q), p and q) for p, q in out])


RECORD_SEEDS = S.vector_outputs("iscsiadm -m node --op show") + S.vector_outputs("iscsiadm -m iface") + [
    "# BEGIN RECORD 2.1.8\nnode.name = iqn.x:y\nnode.session.scan = auto\nnode.custom = 7\n# END RECORD\n"]
record_line = st.one_of(st.tuples(st.from_regex(r"\A[a-z._\[\]0-9]{1,30}\Z"), S.token).map(lambda t: f"{t[0]} = {t[1]}"),
                        st.sampled_from(["# BEGIN RECORD 2.1.8", "# END RECORD", "#", " = ", "a = b = c"]))


@FUZZ
@given(S.output_strategy(RECORD_SEEDS, record_line))
def test_iscsiadm_records_and_rewrite(text: str) -> None:
    def valid(out: Any) -> None:
        for rec in out:
            assert isinstance(rec, dict)
            for k, v in rec.items():
                _strs(k, v)
                assert k == k.strip() and v == v.strip()

    recs = fuzz("iscsiadm node/iface records", ia.parse_records, text, valid)
    fuzz("iscsiadm -m iface (transport)", lambda t: ia.iface_transport(t, "iser"), text,
         lambda out: out in ("iser", "default") or (_ for _ in ()).throw(AssertionError(out)))
    # a rewritten record keeps what it had and gains exactly what was set
    RESULTS.fuzzed("iscsiadm record rewrite")
    new = ia.rewrite_record(text, {"node.session.scan": "manual"})
    merged = {k: v for r in ia.parse_records(new) for k, v in r.items()}
    assert merged.get("node.session.scan") == "manual"
    assert recs is not None


P3_SEEDS = [GUEST_SESSION_P3]
p3_line = st.one_of(
    st.tuples(st.sampled_from(["Target", "Current Portal", "Persistent Portal", "Iface Name", "SID",
                               "iSCSI Connection State", "iSCSI Session State", "Host Number", "password"]),
              st.one_of(iqn, portal.map(lambda p: p + ",1"), S.token)).map(lambda t: f"\t\t{t[0]}: {t[1]}"),
    st.tuples(*[field(num)] * 4).map(lambda t: f"\t\tscsi{t[0]} Channel {t[1]} Id {t[2]} Lun: {t[3]}"),
    st.tuples(field(S.sd), S.token).map(lambda t: f"\t\t\tAttached scsi disk {t[0]}\t\tState: {t[1]}"))


@FUZZ
@given(S.output_strategy(P3_SEEDS, p3_line))
def test_iscsiadm_session_p3(text: str) -> None:
    def valid(out: Any) -> None:
        for d in out:
            _strs(d.iqn, d.portal, d.tpgt, d.sid, d.iface, d.connection_state, d.session_state)
            assert d.iqn
            assert d.host is None or (isinstance(d.host, int) and d.host >= 0)
            for h, disk, state in d.devices:
                assert _HCTL.match(h) and (disk is None or isinstance(disk, str)) and isinstance(state, str)

    fuzz("iscsiadm -m session -P 3", ia.parse_session_details, text, valid)


# ================================================================== multipath
MP_SEEDS = S.vector_outputs("multipath -l") + [GUEST_MULTIPATH_LL]
mp_line = st.one_of(
    st.tuples(field(st.sampled_from(["", "create: ", "reload: "])), field(S.sd), field(st.from_regex(r"\A3[0-9a-f]{8,32}\Z")),
              field(st.from_regex(r"\Adm-[0-9]{1,3}\Z")), S.token).map(lambda t: f"{t[0]}{t[1]} ({t[2]}) {t[3]} {t[4]}"),
    st.tuples(field(S.token), S.token).map(lambda t: f"size={t[0]} features='0' hwhandler='{t[1]}' wp=rw"),
    st.tuples(st.sampled_from(["|-+- ", "`-+- ", "  "]), S.token).map(lambda t: f"{t[0]}policy='{t[1]}' prio=1 status=active"),
    st.tuples(st.sampled_from(["  |- ", "  `- ", "| `- "]), field(S.hctl), field(S.sd), field(st.just("8:0")),
              S.token).map(lambda t: f"{t[0]}{t[1]} {t[2]} {t[3]} active ready {t[4]}"))


@FUZZ
@given(S.output_strategy(MP_SEEDS, mp_line))
def test_multipath_ll(text: str) -> None:
    def valid(out: Any) -> None:
        for m in out:
            _strs(m.name, m.wwid, m.dm, m.vendor_product, m.size, m.action)
            assert m.name and m.wwid and (m.dm == "undef" or re.fullmatch(r"dm-\d+", m.dm))
            assert m.device == f"/dev/mapper/{m.name}"
            for p in m.paths:
                assert _HCTL.match(p.hctl) and p.device and re.fullmatch(r"\d+:\d+", p.majmin)

    fuzz("multipath -ll", parse_multipath, text, valid)


@FUZZ
@given(S.output_strategy(S.vector_outputs("multipathd show status") + S.vector_outputs("multipath -C"),
                         st.sampled_from(["path checker states:", "up 2", "paths: 2", "busy: False", "idle"])),
       st.integers(-1, 2))
def test_multipathd_status_and_ready(text: str, rc: int) -> None:
    mp = Multipath(FakeExecutor().on(("multipathd",), (rc, text, "")).on(("multipath",), (rc, text, "")), HostPaths())
    fuzz("multipathd show status", lambda _: mp.running(), text, lambda out: isinstance(out, bool) or 1 / 0)
    fuzz("multipath -C", lambda _: mp.usable("dm-7"), text, lambda out: isinstance(out, bool) or 1 / 0)


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


@FUZZ
@given(S.output_strategy([TGT_SHOW], tgt_line))
def test_tgtadm_show_target(text: str) -> None:
    def valid(out: Any) -> None:
        for t in out:
            assert isinstance(t.tid, int) and t.iqn and isinstance(t.iqn, str)
            for n, lun in t.luns.items():
                assert isinstance(n, int) and lun.lun == n and isinstance(lun.size_mb, int)
                assert lun.path is None or isinstance(lun.path, str)
            for s in t.sessions:
                assert isinstance(s.sid, int) and isinstance(s.initiator, str)
                assert all(isinstance(c, int) and isinstance(a, str) for c, a in s.connections)
            _strs(*t.incoming, *t.outgoing, *t.acl_names, *t.acl_addresses)

    fuzz("tgtadm show target", parse_show_targets, text, valid)


@FUZZ
@given(S.output_strategy([ACCOUNTS, SYS_SHOW], tgt_line))
def test_tgtadm_show_account_and_sys(text: str) -> None:
    fuzz("tgtadm show account", parse_show_accounts, text, lambda out: [_strs(u) or u for u in out] and
         all(u and u == u.strip() for u in out) or out == [] or 1 / 0)

    class Admin:  # TgtAdmin.ready over a fuzzed "show sys" reply
        from blocklink.target.tgtadm import TgtAdmin as _T
        ready = _T.ready

        def request(self, *a: Any, **k: Any) -> str:
            return text

    fuzz("tgtadm show sys", lambda _: Admin().ready(), text, lambda out: isinstance(out, bool) or 1 / 0)


# ================================================================== tgt export records (targets.conf syntax)
RECORD = persistence.render(persistence.TgtRecord(
    iqn="iqn.2010-10.org.openstack:volume-v1", device_path="/dev/vg/volume-v1", bstype="aio", scsi_id="v1",
    incoming=__import__("blocklink.target.chap", fromlist=["ChapCredentials"]).ChapCredentials(
        "user1", __import__("blocklink.masking", fromlist=["Secret"]).Secret("secret-123456")),
    initiators=("iqn.1994-05.com.redhat:h1",)))
rec_line = st.one_of(st.tuples(st.sampled_from(["backing-store", "bs-type", "bsoflags", "scsi_id", "incominguser",
                                                "outgoinguser", "initiator-name", "params", "driver", "bogus"]),
                               S.token).map(lambda t: f"    {t[0]} {t[1]}"),
                     st.one_of(iqn, S.token).map(lambda t: f"<target {t}>"), st.just("</target>"))


@FUZZ
@given(S.output_strategy([RECORD], rec_line))
def test_tgt_export_record(text: str) -> None:
    def valid(rec: Any) -> None:
        # whatever parses renders and parses back to the same record
        assert persistence.parse(persistence.render(rec)) == rec

    fuzz("tgt export record (targets.conf)", persistence.parse, text, valid)


# ================================================================== rbd / ceph JSON
NBD_LIST = [[{"id": "1234", "pool": "volumes", "namespace": "", "image": "volume-1", "snap": "-",
              "device": "/dev/nbd0"}], []]
KRBD_LIST = [[{"id": "0", "pool": "volumes", "namespace": "", "name": "volume-1", "snap": "-", "device": "/dev/rbd0"}]]
RBD_STATUS = [{"watchers": [{"address": "127.0.0.1:0/3121", "client": 4123, "cookie": 94}]}, {"watchers": []}]
RBD_INFO = {"name": "volumes/volume-1", "hosts": ["127.0.0.1"], "ports": ["6789"], "auth_enabled": False}


@FUZZ
@given(S.mutated_json(NBD_LIST + KRBD_LIST + RBD_STATUS, ["pool", "image", "namespace", "snap", "device"]),
       st.integers(0, 1))
def test_rbd_nbd_list_mapped(text: str, rc: int) -> None:
    conn = RBDConnector(device_type="nbd", executor=FakeExecutor().on(("rbd-nbd",), (rc, text, "")))
    fuzz("rbd-nbd list-mapped --format json", conn.get_volume_paths, RBD_INFO,
         lambda out: isinstance(out, list) and all(isinstance(p, str) and p for p in out) or 1 / 0)


MON_DUMP = json.loads(next(c["output"] for c in S.VECTOR_OUTPUTS if c["command"].startswith("ceph mon dump"))
                      .split("\n", 1)[1])
MON_DUMP_V2 = {"epoch": 2, "mons": [{"rank": 0, "name": "a", "public_addrs": {"addrvec": [
    {"type": "v2", "addr": "127.0.0.1:3300", "nonce": 0}, {"type": "v1", "addr": "127.0.0.1:6789", "nonce": 0}]},
    "addr": "127.0.0.1:6789/0", "public_addr": "127.0.0.1:6789/0"}]}


class _MonCluster:
    """A rados.Rados stand-in answering ``mon dump`` with fuzzed bytes (RbdTarget.monitors parses them)."""

    def __init__(self, out: bytes) -> None:
        self.out = out

    def mon_command(self, cmd: str, inbuf: bytes) -> Any:
        return 0, self.out, ""


@FUZZ
@given(S.mutated_json([MON_DUMP, MON_DUMP_V2], ["mons", "addr", "public_addr", "public_addrs", "addrvec", "type"]))
def test_ceph_mon_dump(text: str) -> None:
    from blocklink.target.rbd import RbdTarget

    def monitors(t: str) -> Any:
        target = RbdTarget(pool="volumes")
        target._cluster = _MonCluster(t.encode("utf-8", "surrogatepass"))
        return target.monitors()

    fuzz("ceph mon dump --format json", monitors, text,
         lambda out: all(isinstance(h, str) and isinstance(p, str) for h, p in out) or 1 / 0)


# ================================================================== nvme-cli
@FUZZ
@given(S.mutated_json([json.loads(ID_NS_64MIB)], ["nsze", "flbas", "lbafs", "ds"]))
def test_nvme_id_ns(text: str) -> None:
    fuzz("nvme id-ns -o json", nvme.parse_id_ns_size, text,
         lambda out: out is None or (isinstance(out, int) and out >= 0) or 1 / 0)


@FUZZ
@given(S.mutated_json([json.loads(LIST_SUBSYS_TWO_PATHS), {"Subsystems": []}, []],
                      ["Subsystems", "Paths", "Name", "NQN", "Transport", "Address", "State"]))
def test_nvme_list_subsys(text: str) -> None:
    def valid(out: Any) -> None:
        for s in out:
            assert set(s) == {"name", "nqn", "paths"} and isinstance(s["paths"], list)
            for p in s["paths"]:
                assert set(p) == {"name", "transport", "address", "state"}

    fuzz("nvme list-subsys -o json", nvme.parse_list_subsys, text, valid)


@FUZZ
@given(S.output_strategy(["traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1", "traddr=::1,trsvcid=4420"]),
       st.one_of(st.text(max_size=40), S.hostile_token))
def test_nvme_sysfs_address_and_ids(text: str, ident: str) -> None:
    fuzz("nvme sysfs address", nvme.parse_address, text,
         lambda out: all(isinstance(k, str) and isinstance(v, str) for k, v in out.items()) or 1 / 0)
    fuzz("nvme uuid/nguid", lambda t: (nvme.normalize_uuid(t), nvme.normalize_nguid(t)), ident,
         lambda out: all(x is None or re.fullmatch(r"[0-9a-f\-]{32,36}", x) for x in out) or 1 / 0)


@FUZZ
@given(S.output_strategy(["Failed to write to /dev/nvme-fabrics: Input/output error\n",
                          "Failed to write to /dev/nvme-fabrics: Connection refused\n", "already connected\n",
                          "could not add new controller: failed to write to nvme-fabrics device\n"]),
       st.one_of(st.none(), st.integers(-1, 300)))
def test_nvme_connect_errors(stderr: str, rc: Optional[int]) -> None:
    err = CommandFailed(["nvme", "connect"], rc, "", stderr)
    fuzz("nvme connect (error text)",
         lambda e: nvme.classify_connect_error(e, "nqn.2014-08.org.x:s", NvmePortalSpec("127.0.0.1", 4420, "tcp"),
                                               None), err,
         lambda out: out is None or isinstance(out, ConnectionFailed) or 1 / 0)


# ================================================================== qemu-storage-daemon stderr
@FUZZ
@given(S.output_strategy(["qemu-storage-daemon: --blockdev driver=iscsi,...: iSCSI: Failed to connect to LUN : "
                          "iscsi_service failed with : iscsi_service_reconnect_if_loggedin. Can not reconnect\n",
                          "qemu-storage-daemon: Could not open 'rbd:volumes/x': No such file or directory\n"]))
def test_qsd_daemon_message(text: str) -> None:
    fuzz("qemu-storage-daemon stderr", daemon_message, text, lambda out: isinstance(out, str) or 1 / 0)


# ================================================================== AttachedDevice.from_dict (os-brick device_info)
DEVICE_SEEDS = [{"type": "block", "path": "/dev/sdb", "scsi_wwn": "36001405b177c7b35", "multipath_id": None},
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


@FUZZ
@given(device_dicts())
def test_attached_device_from_dict(d: Any) -> None:
    def valid(dev: AttachedDevice) -> None:
        assert dev.type in ("block", "file", "handle") and (dev.path is not None or dev.handle is not None)
        assert AttachedDevice.from_dict(dev.to_dict(), dev.protocol) == dev

    fuzz("AttachedDevice.from_dict", AttachedDevice.from_dict, d, valid)


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
        target = RbdTarget(pool="volumes")
        target._cluster = _MonCluster(out)
        try:
            target.monitors()
        except TargetError as e:
            assert "mon dump" in str(e)
        else:
            raise AssertionError(out)


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
