"""open-iscsi, multipathd and blockdev simulated over a :class:`~blocklink.testing.hosttree.FakeHostTree`.

:class:`FakeIscsiKernel` answers ``iscsiadm``, ``multipath``, ``multipathd`` and ``blockdev``
through a :class:`~blocklink.testing.fakes.FakeExecutor` the way open-iscsi 2.1.8 and
multipath-tools 0.9.4 behaved in the real-kernel guest: node records are files under
``etc/iscsi/nodes`` (``-o new`` rewrites them with defaults), ``--login`` reads the record (so CHAP
only works if the secret really reached the file) and honours ``node.session.scan``, exit codes
are open-iscsi's (15 session exists, 19 refused, 8 timeout, 21 no records, 24 CHAP refused).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Set, Tuple

from blocklink.connection import Portal
from blocklink.executor import Input
from blocklink.testing.fakes import FakeExecutor
from blocklink.testing.hosttree import FakeHostTree, FakeLun

Resp = Tuple[int, str, str]
_SECRET_KEYS = ("password", "password_in")


@dataclass
class FakeTarget:
    iqn: str
    portals: List[str]  # "ip:port"
    luns: Dict[int, FakeLun]
    chap: Optional[Tuple[str, str]] = None  # (user, secret) the target expects from us
    mutual: Optional[Tuple[str, str]] = None  # (user, secret) the target answers with
    discovery_chap: Optional[Tuple[str, str]] = None
    acl: Optional[Set[str]] = None  # initiator names allowed (None: any)


# ---------------------------------------------------------------------------------------------
# open-iscsi's record files, written and read the way iscsiadm/iscsid do (usr/idbm.c), on purpose
# NOT with blocklink's own parser, so a bug in that parser is not copied into the fake: the fake
# kernel reads what the connector wrote as iscsid would. tests/unit/test_fakeiscsi_records.py
# checks that both readers agree on recorded outputs and on records either side writes.
# ---------------------------------------------------------------------------------------------
RECORD_VERSION = "2.1.8"
_C_SPACE = " \t\n\r\v\f"  # C isspace(): what idbm trims, and nothing more


def write_record(fields: Mapping[str, str], version: str = RECORD_VERSION) -> str:
    """A record file: ``name = value`` per field between the BEGIN/END comments; like idbm, a
    field with an empty value gets no line (``iscsiadm -o show`` prints it as ``<empty>``)."""
    lines = [f"# BEGIN RECORD {version}"]
    for name, value in fields.items():
        if not name or any(c in _C_SPACE + "=" for c in name) or "\n" in value:
            raise ValueError(f"not a record field: {name!r} = {value!r}")
        if value:
            lines.append(f"{name} = {value}")
    return "\n".join(lines + ["# END RECORD", ""])


def read_record(text: str) -> Dict[str, str]:
    """One record file as iscsid reads it (idbm_recinfo_config): lines end at newline only; blank
    and ``#`` lines are skipped; the name runs to the first blank or ``=``, then come
    one character (blank or ``=``), blanks, ``=`` and a non-empty value (so ``a = b`` and ``a==b`` are
    read, ``a=b`` and ``a =`` are skipped); the last line wins."""
    fields: Dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw.strip(_C_SPACE)
        if not line or line.startswith("#"):
            continue
        end = 0
        while end < len(line) and line[end] not in _C_SPACE and line[end] != "=":
            end += 1
        if end == len(line):
            continue
        rest = line[end + 1:].lstrip(_C_SPACE)  # idbm steps over the character after the name, blank or '='
        value = rest[1:].lstrip(_C_SPACE) if rest.startswith("=") else ""
        if value:
            fields[line[:end]] = value
    return fields


def read_show(text: str) -> List[Dict[str, str]]:
    """``iscsiadm -m node|iface -o show`` output: one record per ``# BEGIN RECORD`` block (text
    before the first marker, as older versions print a single record, is a record too)."""
    blocks: List[List[str]] = [[]]
    for line in text.split("\n"):
        if line.strip(_C_SPACE).startswith("# BEGIN RECORD"):
            blocks.append([])
        blocks[-1].append(line)
    records = [read_record("\n".join(b)) for b in blocks]
    return [r for r in records if r]


def _template(iqn: str, portal: Portal, iface: str) -> str:
    return write_record({
        "node.name": iqn, "node.tpgt": "-1", "node.startup": "manual", "iface.iscsi_ifacename": iface,
        "iface.transport_name": "tcp", "node.session.initial_login_retry_max": "8",
        "node.session.auth.authmethod": "None", "node.session.auth.chap_algs": "MD5", "node.session.scan": "auto",
        "node.conn[0].address": portal.host, "node.conn[0].port": str(portal.port), "node.conn[0].startup": "manual",
        "node.conn[0].timeo.login_timeout": "15"})


def _read_file(path: str) -> Dict[str, str]:
    with open(path) as f:
        return read_record(f.read())


class FakeIscsiKernel:
    """Targets reachable from the fake host plus the commands that reach them."""

    def __init__(self, tree: FakeHostTree, executor: Optional[FakeExecutor] = None, *,
                 initiator: str = "iqn.1993-08.org.debian:01:fakehost", multipathd: bool = True,
                 find_multipaths: str = "strict") -> None:
        self.tree = tree
        self.executor = executor or FakeExecutor()
        self.initiator = initiator
        self.multipathd = multipathd
        self.find_multipaths = find_multipaths
        self.targets: Dict[str, FakeTarget] = {}
        self.down: Set[str] = set()  # portals that refuse connections
        self.wwids: Set[str] = set()
        self.open_maps: Set[str] = set()  # map names whose flush fails (in use)
        self.fail_flush: Set[str] = set()  # device names whose blockdev --flushbufs fails
        self.login_delay = 0.0
        self.db_busy = 0  # the next N iscsiadm calls fail with exit 6 (node database lock not obtained)
        self.resize_refusals = 0  # the next N "multipathd resize map" answer "fail" (exit 1): multipathd busy
        self.busy_after_login = False  # a login sets the session up, then fails rewriting the record
        self.old_iscsiadm = False  # an iscsiadm that predates node.session.scan (drops the key)
        self.in_flight = 0
        self.max_in_flight = 0
        self._sessions: Dict[int, Tuple[str, str, str]] = {}  # sid -> (iqn, portal address, iface)
        self._next_sid = 1
        self._mu = threading.Lock()
        tree.set_initiator_name(initiator)
        tree.add_hooks.append(self._auto_add_path)
        for prog, fn in (("iscsiadm", self._iscsiadm), ("multipathd", self._multipathd),
                         ("multipath", self._multipath), ("blockdev", self._blockdev)):
            self.executor.on((prog,), fn)

    def add_target(self, iqn: str, portals: List[str], luns: Dict[int, FakeLun], **kw: object) -> FakeTarget:
        t = FakeTarget(iqn, [Portal.parse(p).address for p in portals], luns, **kw)  # type: ignore[arg-type]
        self.targets[iqn] = t
        return t

    def session_ids(self) -> List[int]:
        return sorted(self._sessions)

    # node records -----------------------------------------------------------------------------
    def node_dir(self, iqn: str) -> str:
        return self.tree.p("etc", "iscsi", "nodes", iqn)

    def _record_path(self, iqn: str, portal: Portal) -> str:
        return os.path.join(self.node_dir(iqn), f"{portal.host},{portal.port}")

    def record(self, iqn: str, portal: str) -> Optional[Dict[str, str]]:
        p = self._record_path(iqn, Portal.parse(portal))
        return _read_file(p) if os.path.exists(p) else None

    # iscsiadm -------------------------------------------------------------------------------
    def _iscsiadm(self, argv: Tuple[str, ...], _input: Input) -> Resp:
        with self._mu:
            if self.db_busy > 0:
                self.db_busy -= 1
                return (6, "", "iscsiadm: Could not execute operation on all records: encountered iSCSI "
                               "database failure\n")
        a = list(argv[1:])
        opt = {a[i]: a[i + 1] for i in range(len(a) - 1) if a[i].startswith("-")}
        mode, op = opt.get("-m"), opt.get("-o")
        if mode == "session":
            if "--logout" in a:
                return self._logout(int(opt["-r"]))
            lines = [f"tcp: [{sid}] {p},1 {iqn} (non-flash)" for sid, (iqn, p, _) in sorted(self._sessions.items())]
            return (0, "\n".join(lines) + "\n", "") if lines else (21, "", "iscsiadm: No active sessions.\n")
        if mode == "iface":
            return (6, "", f"iscsiadm: Could not read iface {opt.get('-I')} (6)\n")
        if mode == "discoverydb":
            return self._discoverydb(opt, a)
        if mode != "node":
            return (7, "", "iscsiadm: invalid mode\n")
        if "-T" not in opt and op is None:  # list every record: "ip:port,tpgt iqn"
            return self._list_nodes()
        iqn, portal, iface = opt["-T"], Portal.parse(opt["-p"]), opt.get("-I", "default")
        path = self._record_path(iqn, portal)
        if op == "new":
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(_template(iqn, portal, iface))
            return (0, f"New iSCSI node [tcp:[iscsi_if={iface}] {portal.host},{portal.port},-1 {iqn}] added\n", "")
        if not os.path.exists(path):
            return (21, "", "iscsiadm: No records found\n")
        if op == "show":  # iscsiadm prints the record it read, secrets masked
            shown = {k: "********" if k.rsplit(".", 1)[-1] in _SECRET_KEYS else v for k, v in _read_file(path).items()
                     if not (self.old_iscsiadm and k == "node.session.scan")}
            return (0, write_record(shown), "")
        if op == "delete":
            os.unlink(path)
            if not os.listdir(os.path.dirname(path)):
                os.rmdir(os.path.dirname(path))
            return (0, "", "")
        if "--login" in a:
            return self._login(iqn, portal, iface, path)
        return (7, "", "iscsiadm: unsupported\n")

    def _login(self, iqn: str, portal: Portal, iface: str, path: str) -> Resp:
        rec = _read_file(path)
        where = f"[iface: {iface}, target: {iqn}, portal: {portal.host},{portal.port}]"
        with self._mu:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.login_delay:
                time.sleep(self.login_delay)  # bounded: simulated network latency for overlap tests
            if portal.address in self.down:
                return (8, "", f"iscsiadm: Could not login to {where}.\n"
                               "iscsiadm: initiator reported error (8 - connection timed out)\n")
            t = self.targets.get(iqn)
            if t is None or portal.address not in t.portals or (t.acl is not None and self.initiator not in t.acl):
                return (19, "", f"iscsiadm: Could not login to {where}.\niscsiadm: initiator reported error "
                                "(19 - encountered non-retryable iSCSI login failure)\n")
            ok = True
            if t.chap is not None:
                ok = (rec.get("node.session.auth.authmethod") == "CHAP"
                      and (rec.get("node.session.auth.username"), rec.get("node.session.auth.password")) == t.chap)
            if ok and t.mutual is not None:
                ok = (rec.get("node.session.auth.username_in"), rec.get("node.session.auth.password_in")) == t.mutual
            if not ok:
                return (24, "", f"iscsiadm: Could not login to {where}.\niscsiadm: initiator reported error "
                                "(24 - iSCSI login failed due to authorization failure)\n")
            with self._mu:
                if any(s == (iqn, portal.address, iface) for s in self._sessions.values()):
                    return (15, "", "iscsiadm: default: 1 session requested, but 1 already present.\n")
                sid = self._next_sid
                self._next_sid += 1
                self._sessions[sid] = (iqn, portal.address, iface)
            self.tree.add_iscsi_session(sid, iqn, portal.host, portal.port, luns=t.luns, iface=iface,
                                        scan=rec.get("node.session.scan", "auto") != "manual",
                                        username=rec.get("node.session.auth.username", ""))
            if self.busy_after_login:
                return (6, f"Logging in to {where}\nLogin to {where} successful.\n",
                        "iscsiadm: Could not execute operation on all records: encountered iSCSI database failure\n")
            return (0, f"Logging in to {where}\nLogin to {where} successful.\n", "")
        finally:
            with self._mu:
                self.in_flight -= 1

    def _list_nodes(self) -> Resp:
        root = os.path.dirname(self.node_dir("x"))
        iqns = sorted(os.listdir(root)) if os.path.isdir(root) else []
        lines = [f"{entry.rsplit(',', 1)[0]}:{entry.rsplit(',', 1)[1]},1 {iqn}"
                 for iqn in iqns for entry in sorted(os.listdir(os.path.join(root, iqn)))]
        return (0, "\n".join(lines) + "\n", "") if lines else (21, "", "iscsiadm: No records found\n")

    def _logout(self, sid: int) -> Resp:
        with self._mu:
            s = self._sessions.pop(sid, None)
        if s is None:
            return (21, "", "iscsiadm: No matching sessions found\n")
        self.tree.remove_iscsi_session(sid)
        return (0, f"Logout of [sid: {sid}, target: {s[0]}, portal: {s[1]}] successful.\n", "")

    def _discoverydb(self, opt: Dict[str, str], a: List[str]) -> Resp:
        portal = Portal.parse(opt["-p"])
        d = self.tree.p("etc", "iscsi", "send_targets", f"{portal.host},{portal.port}")
        conf = os.path.join(d, "st_config")
        if opt.get("-o") == "new" and "--discover" not in a:
            os.makedirs(d, mode=0o700, exist_ok=True)
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(write_record({"discovery.startup": "manual", "discovery.type": "sendtargets",
                                      "discovery.sendtargets.address": portal.host,
                                      "discovery.sendtargets.port": str(portal.port),
                                      "discovery.sendtargets.auth.authmethod": "None"}))
            return (0, f"New discovery record for [{portal.host},{portal.port}] added.\n", "")
        if opt.get("-o") == "delete":
            if not os.path.exists(d):
                return (21, "", "iscsiadm: No records found\n")
            for entry in os.listdir(d):
                os.unlink(os.path.join(d, entry))
            os.rmdir(d)
            return (0, "", "")
        if "--discover" in a:
            if not os.path.exists(conf):
                return (6, "", "iscsiadm: discovery record not found\n")
            if portal.address in self.down:
                return (11, "", f"iscsiadm: cannot make connection to {portal.host}: Connection refused\n")
            rec = _read_file(conf)
            found = [t for t in self.targets.values() if portal.address in t.portals]
            for t in found:
                if t.discovery_chap is not None and (
                        rec.get("discovery.sendtargets.auth.authmethod") != "CHAP"
                        or (rec.get("discovery.sendtargets.auth.username"),
                            rec.get("discovery.sendtargets.auth.password")) != t.discovery_chap):
                    return (24, "", "iscsiadm: Login failed to authenticate with target\n"
                                    "iscsiadm: discovery login to %s rejected: initiator failed authorization\n"
                                    % portal.host)
            out = [f"{p},1 {t.iqn}" for t in found for p in t.portals]
            return (0, "\n".join(out) + "\n", "")
        return (7, "", "iscsiadm: unsupported\n")

    # multipath ------------------------------------------------------------------------------
    def _auto_add_path(self, name: str) -> None:
        """multipathd adds a new disk of a known multipath WWID by itself (uevent)."""
        wwid = self.tree.disk_wwid(name)
        if self.multipathd and (wwid in self.wwids or self.find_multipaths == "no"):
            dm = self.tree.multipath_of(wwid)
            if dm is not None:
                self.tree.add_slave(dm, name)
            elif self.find_multipaths == "no":
                self.tree.add_multipath(wwid, [name])

    def _multipathd(self, argv: Tuple[str, ...], _input: Input) -> Resp:
        if not self.multipathd:
            return (1, "", "error receiving packet\n")
        a = list(argv[1:])
        if a[:2] == ["show", "status"]:
            return (0, "path checker states:\nup 1\n", "")
        if a[:2] == ["add", "path"]:
            name = os.path.basename(a[2])
            if not os.path.lexists(self.tree.p("sys", "block", name)):
                return (1, "fail\n", "")
            wwid = self.tree.disk_wwid(name)
            if wwid not in self.wwids and self.find_multipaths != "no":
                return (0, "ok\n", "")  # accepted, but "strict" makes no map for an unknown WWID
            dm = self.tree.multipath_of(wwid)
            if dm is None:
                self.tree.add_multipath(wwid, [name])
            elif name not in os.listdir(self.tree.p("sys", "block", dm, "slaves")):
                self.tree.add_slave(dm, name)
            return (0, "ok\n", "")
        if a[:2] == ["del", "path"]:
            return (0, "ok\n", "")
        if a[:2] == ["del", "map"] or a[:2] == ["resize", "map"]:
            dm = self._dm_by_name(a[2])
            if dm is None:
                return (1, "fail\n", "")
            if a[0] == "del":
                self.tree.remove_multipath(dm)
            elif self.resize_refusals > 0:
                self.resize_refusals -= 1
                return (1, "fail\n", "")
            else:
                self.tree.resize_multipath(dm)
            return (0, "ok\n", "")
        return (1, "", "multipathd: unknown command\n")

    def _dm_by_name(self, name: str) -> Optional[str]:
        for dm in os.listdir(self.tree.p("sys", "block")):
            if dm.startswith("dm-"):
                with open(self.tree.p("sys", "block", dm, "dm", "name")) as f:
                    if f.read().strip() == name:
                        return dm
        return None

    def _multipath(self, argv: Tuple[str, ...], _input: Input) -> Resp:
        a = list(argv[1:])
        if a[0] == "-a":
            added = a[1] not in self.wwids
            self.wwids.add(a[1])
            return (0, f"wwid '{a[1]}' added\n" if added else "", "")
        if a[0] == "-C":
            slaves = self.tree.p("sys", "block", a[1], "slaves")
            return (0, "", "") if os.path.isdir(slaves) and os.listdir(slaves) else (1, "", "")
        if a[0] == "-f":
            dm = self._dm_by_name(a[1])
            if dm is None:
                return (1, "", f"{a[1]}: map not present\n")
            if a[1] in self.open_maps:
                return (1, "", f"{a[1]}: map in use\n")
            self.tree.remove_multipath(dm)
            return (0, "", "")
        if a[0] in ("-ll", "-l"):
            return (0, self.topology(a[1] if len(a) > 1 else None), "")
        return (1, "", "multipath: unsupported\n")

    def topology(self, only: Optional[str] = None) -> str:
        out = []
        for dm in sorted(os.listdir(self.tree.p("sys", "block"))):
            if not dm.startswith("dm-"):
                continue
            base = self.tree.p("sys", "block", dm)
            name = open(os.path.join(base, "dm", "name")).read().strip()
            if only is not None and only != name:
                continue
            out.append(f"{name} dm-{dm[3:]} LIO-ORG,FILEIO")
            out.append("size=64M features='1 queue_if_no_path' hwhandler='1 alua' wp=rw")
            out.append("`-+- policy='service-time 0' prio=50 status=active")
            slaves = sorted(os.listdir(os.path.join(base, "slaves")))
            for i, s in enumerate(slaves):
                hctl = os.path.basename(os.path.realpath(self.tree.p("sys", "block", s, "device")))
                out.append(f"  {'`' if i == len(slaves) - 1 else '|'}- {hctl} {s} 8:{16 * i} active ready running")
        return "\n".join(out) + ("\n" if out else "")

    def _blockdev(self, argv: Tuple[str, ...], _input: Input) -> Resp:
        dev = argv[-1]
        name = os.path.basename(dev)
        if name in self.fail_flush:
            return (1, "", f"blockdev: cannot flush {dev}: Input/output error\n")
        if not os.path.exists(self.tree.p("dev", name)):
            return (1, "", f"blockdev: cannot open {dev}: No such file or directory\n")
        return (0, "", "")


__all__ = ["FakeIscsiKernel", "FakeTarget", "read_record", "read_show", "write_record"]
