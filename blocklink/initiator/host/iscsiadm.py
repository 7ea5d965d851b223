"""open-iscsi's ``iscsiadm``: a typed wrapper, parsers for its outputs, and secret-safe node records.

CHAP secrets never reach a command line. ``iscsiadm -o update -v SECRET`` would put them in
``/proc/PID/cmdline`` for any local user to read, so :meth:`Iscsiadm.configure_node` writes the
node record file itself (``/etc/iscsi/nodes/<iqn>/<addr>,<port>[,<tpgt>][/<iface>]``, the format
iscsiadm reads: ``key = value`` lines) to a 0600 temporary file in the same 0700 directory and
renames it over the record. Discovery CHAP goes the same way through the discovery record
(``send_targets/<addr>,<port>/st_config``), which is deleted right after the discovery.

Where the secrets still are, by design of open-iscsi: in the node record (0600, root, in a 0700
directory) while the volume is attached, because iscsid re-reads it to log in again after a
restart or reboot (``node.startup = automatic``); the record is deleted at logout. ``iscsiadm
--login`` hands them to iscsid over its root-only abstract Unix socket, and the kernel shows them
to root in ``/sys/class/iscsi_session/sessionN/password``. A discovery record that existed before
(an administrator's) is updated in place and kept, secret included.

Parsers accept what os-brick accepts and more: ``eui.``/``naa.`` target names, IPv6 portals,
tpgt -1, flash/non-flash suffixes and log lines mixed into the output.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from blocklink.connection import Portal
from blocklink.errors import AuthenticationFailed, CommandFailed, ConnectionFailed, VolumeNotFound
from blocklink.executor import CommandResult, Executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host.scsi import same_address
from blocklink.masking import Secret, get_logger, mask_text
from blocklink.privatefile import replace_private

LOG = get_logger(__name__)

# iscsiadm exit codes (open-iscsi include/iscsi_err.h)
ERR_LOGIN = 5
ERR_IDBM = 6
ERR_TRANS_TIMEOUT = 8
ERR_PDU_TIMEOUT = 11
ERR_SESS_EXISTS = 15
ERR_FATAL_LOGIN = 19
ERR_ISCSID_NOTCONN = 20
ERR_NO_OBJS_FOUND = 21
ERR_SYSFS_LOOKUP = 22
ERR_LOGIN_AUTH_FAILED = 24

SUPPORTED_TRANSPORTS = ("tcp", "iser", "be2iscsi", "bnx2i", "cxgb3i", "cxgb4i", "qla4xxx", "ocs", "default")
_ISCSI_NAME = r"(?:iqn\.|eui\.|naa\.)\S+"
_SESSION_RE = re.compile(r"^(?P<transport>[\w.-]+):\s+\[(?P<sid>[^\]]+)\]\s+(?P<portal>\S+),(?P<tpgt>-?\d+)\s+"
                         r"(?P<iqn>\S+)(?:\s+\((?P<kind>non-flash|flash)\))?\s*$")
_NODE_RE = re.compile(r"^(?P<portal>\S+),(?P<tpgt>-?\d+)\s+(?P<iqn>\S+)\s*$")
_DISCOVERED_RE = re.compile(r"^(?P<portal>\S+),(?P<tpgt>-?\d+)\s+(?P<iqn>%s)\s*$" % _ISCSI_NAME)


# ---------------------------------------------------------------------------------------------
# parsed values
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionEntry:
    """One line of ``iscsiadm -m session``."""

    transport: str
    sid: str
    portal: str  # "ip:port" as printed ("[v6]:port")
    tpgt: str
    iqn: str
    flash: Optional[bool] = None


@dataclass(frozen=True)
class NodeEntry:
    """One line of ``iscsiadm -m node`` or of a sendtargets discovery."""

    portal: str
    tpgt: str
    iqn: str


@dataclass
class SessionDetail:
    """One session of ``iscsiadm -m session -P 3``."""

    iqn: str
    portal: str = ""
    tpgt: str = ""
    sid: str = ""
    iface: str = ""
    connection_state: str = ""
    session_state: str = ""
    host: Optional[int] = None
    devices: List[Tuple[str, Optional[str], str]] = field(default_factory=list)  # (hctl, disk, state)


def split_portal(portal: str) -> Tuple[str, str]:
    """``"[::1]:3260"`` -> ``("::1", "3260")``; ``"10.0.0.1:3260"`` -> ``("10.0.0.1", "3260")``."""
    if portal.startswith("["):
        host, _, rest = portal[1:].partition("]")
        return host, rest.lstrip(":")
    host, _, port = portal.rpartition(":")
    return (host, port) if host else (port, "")


# ---------------------------------------------------------------------------------------------
# parsers (pure functions over command output)
# ---------------------------------------------------------------------------------------------

def parse_sessions(text: Optional[str]) -> List[SessionEntry]:
    out = []
    for line in (text or "").splitlines():
        m = _SESSION_RE.match(line.strip())
        if m:
            kind = m.group("kind")
            out.append(SessionEntry(m.group("transport"), m.group("sid"), m.group("portal"), m.group("tpgt"),
                                    m.group("iqn"), None if kind is None else kind == "flash"))
    return out


def parse_nodes(text: Optional[str]) -> List[NodeEntry]:
    """``ip:port,tpgt iqn`` lines; corrupt records (no name, empty address) are skipped."""
    out = []
    for line in (text or "").splitlines():
        m = _NODE_RE.match(line.strip())
        if m and not m.group("portal").startswith("[]"):
            out.append(NodeEntry(m.group("portal"), m.group("tpgt"), m.group("iqn")))
    return out


def parse_discovery(text: Optional[str]) -> List[NodeEntry]:
    """Targets printed by a sendtargets discovery; other lines (service messages) are ignored."""
    out = []
    for line in (text or "").splitlines():
        m = _DISCOVERED_RE.match(line.strip())
        if m:
            out.append(NodeEntry(m.group("portal"), m.group("tpgt"), m.group("iqn")))
    return out


def parse_discoverydb(text: Optional[str]) -> Dict[str, List[Tuple[str, str, str]]]:
    """``-m discoverydb -o show -P 1``: SENDTARGETS discovery address ("ip,port") ->
    [(portal, iqn, iface)] in output order."""
    out: Dict[str, List[Tuple[str, str, str]]] = {}
    section = ""
    current: Optional[List[Tuple[str, str, str]]] = None
    iqn = portal = ""
    for raw in (text or "").splitlines():
        line = raw.strip()
        if line.endswith(":") and " " not in line:
            section, current = line[:-1], None
            continue
        if section != "SENDTARGETS":
            continue
        if line.startswith("DiscoveryAddress:"):
            current = out.setdefault(line.split(":", 1)[1].strip(), [])
            iqn = portal = ""
        elif line.startswith("Target:") and current is not None:
            iqn, portal = line.split(":", 1)[1].strip(), ""
        elif line.startswith("Portal:") and current is not None:
            portal = line.split(":", 1)[1].strip().rsplit(",", 1)[0]
        elif line.startswith("Iface Name:") and current is not None and iqn and portal:
            current.append((portal, iqn, line.split(":", 1)[1].strip()))
            portal = ""
    return out


def discoverydb_portals(text: Optional[str], discovery: str, iface: str = "default") -> List[Tuple[str, str]]:
    """(portal, iqn) pairs the discovery at ``discovery`` (``ip:port``) found through ``iface``."""
    want_host, want_port = split_portal(discovery)
    for addr, entries in parse_discoverydb(text).items():
        host, _, port = addr.rpartition(",")
        if port == want_port and host.strip("[]").lower() == want_host.lower():
            return [(p, q) for p, q, i in entries if i == iface]
    return []


_BLANKS = " \t\r\v\f"  # C isspace(), what iscsid trims; str.strip() would also eat \x1c, \x85, \u2028


def parse_records(text: Optional[str]) -> List[Dict[str, str]]:
    """``# BEGIN RECORD`` ... ``# END RECORD`` blocks of ``key = value`` lines (node, iface, discovery)."""
    records: List[Dict[str, str]] = []
    current: Optional[Dict[str, str]] = None
    for raw in (text or "").split("\n"):  # as iscsid reads: a line ends at \n only (not at \v, \x1c, ...)
        line = raw.strip(_BLANKS)
        if line.startswith("# BEGIN RECORD"):
            current = {}
            records.append(current)
        elif line.startswith("# END RECORD"):
            current = None
        elif " = " in line and not line.startswith("#"):
            if current is None:  # output without markers (older versions, single record)
                current = {}
                records.append(current)
            key, _, value = line.partition(" = ")
            current[key.strip(_BLANKS)] = value.strip(_BLANKS)
    return records


def iface_transport(text: Optional[str], name: str) -> str:
    """The iface to use: ``name`` when its record names a supported transport, else ``default``."""
    for rec in parse_records(text):
        if rec.get("iface.transport_name") in SUPPORTED_TRANSPORTS:
            return name
    return "default"


_P3_HOST_RE = re.compile(r"Host Number:\s*(\d+)")
_P3_LUN_RE = re.compile(r"scsi(\d+) Channel (\d+) Id (\d+) Lun: (\d+)")
_P3_DISK_RE = re.compile(r"Attached scsi disk (\S+)\s+State:\s*(\S+)")


def parse_session_details(text: Optional[str]) -> List[SessionDetail]:
    """``iscsiadm -m session -P 3``: sessions with their SCSI devices."""
    out: List[SessionDetail] = []
    target: Optional[str] = None
    cur: Optional[SessionDetail] = None
    lun: Optional[str] = None
    for raw in (text or "").splitlines():
        line = raw.strip()
        if line.startswith("Target:"):
            name = line.split(":", 1)[1].split()
            target = name[0] if name else None  # a truncated "Target:" line names nothing
            cur = None
        elif line.startswith("Current Portal:") and target is not None:
            portal, _, tpgt = line.split(":", 1)[1].strip().rpartition(",")
            cur = SessionDetail(target, portal, tpgt)
            out.append(cur)
        elif cur is None:
            continue
        elif line.startswith("Iface Name:"):
            cur.iface = line.split(":", 1)[1].strip()
        elif line.startswith("SID:"):
            cur.sid = line.split(":", 1)[1].strip()
        elif line.startswith("iSCSI Connection State:"):
            cur.connection_state = line.split(":", 1)[1].strip()
        elif line.startswith("iSCSI Session State:"):
            cur.session_state = line.split(":", 1)[1].strip()
        elif _P3_HOST_RE.match(line):
            cur.host = int(_P3_HOST_RE.match(line).group(1))  # type: ignore[union-attr]
        elif _P3_LUN_RE.search(line):
            h, c, t, n = _P3_LUN_RE.search(line).groups()  # type: ignore[union-attr]
            lun = f"{int(h)}:{int(c)}:{int(t)}:{int(n)}"
            cur.devices.append((lun, None, ""))
        elif _P3_DISK_RE.search(line) and lun is not None and cur.devices:
            disk, state = _P3_DISK_RE.search(line).groups()  # type: ignore[union-attr]
            cur.devices[-1] = (cur.devices[-1][0], disk, state)
    return out


# ---------------------------------------------------------------------------------------------
# node records on disk (secrets stay off argv)
# ---------------------------------------------------------------------------------------------

RecordValue = Union[str, Secret]


def _check_value(key: str, value: RecordValue) -> str:
    text = value.reveal() if isinstance(value, Secret) else str(value)
    if "\n" in text or "\r" in text or "\x00" in text:
        raise ValueError(f"{key}: value contains a line break or NUL")
    return text


def rewrite_record(text: str, settings: Mapping[str, RecordValue]) -> str:
    """The record ``text`` with ``settings`` replaced or appended (before ``# END RECORD``)."""
    values = {k: _check_value(k, v) for k, v in settings.items()}
    pending = dict(values)
    lines: List[str] = []
    end_seen = False
    for raw in text.rstrip("\n").split("\n") if text else []:
        stripped = raw.strip(_BLANKS)
        if stripped.startswith("# END RECORD"):
            lines.extend(f"{k} = {v}" for k, v in pending.items())
            pending = {}
            end_seen = True
        elif " = " in stripped and not stripped.startswith("#"):
            key = stripped.partition(" = ")[0].strip()
            if key in values:  # a repeated key is dropped: iscsiadm would take the last, stale value
                if key in pending:
                    lines.append(f"{key} = {pending.pop(key)}")
                continue
        lines.append(raw)
    lines.extend(f"{k} = {v}" for k, v in pending.items())
    if not end_seen and text.lstrip().startswith("# BEGIN RECORD"):
        lines.append("# END RECORD")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the command wrapper
# ---------------------------------------------------------------------------------------------

class Iscsiadm:
    """``iscsiadm`` through an :class:`Executor`, with exit codes turned into typed errors.

    ``db_dirs`` are the open-iscsi configuration roots searched for node records (Debian/Ubuntu
    keep them in /etc/iscsi, RHEL/SUSE in /var/lib/iscsi).
    """

    def __init__(self, executor: Executor, paths: HostPaths, *, iface: str = "default",
                 db_dirs: Optional[Sequence[str]] = None, timeout: float = 300.0, db_retries: int = 5) -> None:
        self.executor = executor
        self.db_retries = db_retries
        self.paths = paths
        self.iface = iface
        self.timeout = timeout
        if db_dirs is None:
            db_dirs = [paths.etcpath("iscsi")] + (["/var/lib/iscsi"] if paths.etc == "/etc" else [])
        self.db_dirs = tuple(db_dirs)

    def run(self, *args: str, ok: Sequence[int] = (0,), timeout: Optional[float] = None) -> CommandResult:
        """Run iscsiadm; exit 6 (node database busy: another iscsiadm held its lock past the
        wait iscsiadm allows itself) is retried a bounded number of times."""
        from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random

        @retry(retry=retry_if_exception(lambda e: isinstance(e, CommandFailed) and e.exit_code == ERR_IDBM),
               stop=stop_after_attempt(self.db_retries), wait=wait_random(0.1, 1.0), reraise=True)
        def once() -> CommandResult:
            return self.executor.run(["iscsiadm", *args], ok_codes=ok, timeout=timeout or self.timeout)

        return once()

    def _node(self, iqn: str, portal: Portal) -> List[str]:
        return ["-m", "node", "-T", iqn, "-p", portal.address, "-I", self.iface]

    # queries --------------------------------------------------------------------------
    def sessions(self) -> List[SessionEntry]:
        return parse_sessions(self.run("-m", "session", ok=(0, ERR_NO_OBJS_FOUND)).stdout)

    def session_details(self) -> List[SessionDetail]:
        return parse_session_details(self.run("-m", "session", "-P", "3", ok=(0, ERR_NO_OBJS_FOUND)).stdout)

    def nodes(self) -> List[NodeEntry]:
        return parse_nodes(self.run("-m", "node", ok=(0, ERR_NO_OBJS_FOUND)).stdout)

    def node_record(self, iqn: str, portal: Portal) -> Optional[Dict[str, str]]:
        res = self.run(*self._node(iqn, portal), "-o", "show", ok=(0, ERR_NO_OBJS_FOUND))
        recs = parse_records(res.stdout) if res.exit_code == 0 else []
        return recs[0] if recs else None

    def validate_iface(self, name: str) -> str:
        if name in ("default", "iser"):
            return name
        res = self.run("-m", "iface", "-I", name, ok=(0, 2, ERR_IDBM, ERR_NO_OBJS_FOUND))
        return iface_transport(res.stdout, name)

    # node records ---------------------------------------------------------------------
    def new_node(self, iqn: str, portal: Portal) -> None:
        self.run(*self._node(iqn, portal), "-o", "new")

    def node_files(self, iqn: str, portal: Portal) -> List[str]:
        """Record files of (iqn, portal, iface): flat ``addr,port[,tpgt]`` files or per-iface files."""
        out = []
        for root in self.db_dirs:
            tdir = os.path.join(root, "nodes", iqn)
            for entry in self.paths.listdir(tdir):
                path = os.path.join(tdir, entry)
                candidates = ([os.path.join(path, f) for f in self.paths.listdir(path)]
                              if os.path.isdir(path) else [path])
                for f in candidates:
                    if os.path.basename(f).startswith("."):
                        continue
                    rec = next(iter(parse_records(self.paths.read(f))), {})
                    if _record_matches(rec, portal, self.iface):
                        out.append(f)
        return out

    def configure_node(self, iqn: str, portal: Portal, settings: Mapping[str, RecordValue]) -> None:
        """Create the node record if needed and set ``settings`` by rewriting its file (0600)."""
        self.new_node(iqn, portal)
        files = self.node_files(iqn, portal)
        if not files:
            raise ConnectionFailed(f"{iqn} at {portal.address}",
                                   f"iscsiadm created no node record under {', '.join(self.db_dirs)}")
        for f in files:
            replace_private(f, rewrite_record(self.paths.read(f) or "", settings))

    def delete_node(self, iqn: str, portal: Portal) -> None:
        """Remove the node record (and with it the CHAP secrets). The files are unlinked directly,
        as ``iscsiadm -o delete`` would, sparing a process and a wait for iscsiadm's global
        database lock; iscsiadm does it when the layout is not one we know."""
        files = self.node_files(iqn, portal)
        if not files:
            self.run(*self._node(iqn, portal), "-o", "delete", ok=(0, ERR_NO_OBJS_FOUND))
            return
        for f in files:
            os.unlink(f)
            parent = os.path.dirname(f)
            for d in (parent, os.path.dirname(parent)):  # <addr>,<port>,<tpgt>/ then <iqn>/ when empty
                if os.path.basename(d) != "nodes" and not self.paths.listdir(d):
                    try:
                        os.rmdir(d)
                    except OSError:
                        break

    # sessions -------------------------------------------------------------------------
    def login(self, iqn: str, portal: Portal, *, mutual_chap: bool = False) -> None:
        """Log in; an existing session counts as success. Failures become typed errors.

        A target whose mutual-CHAP answer iscsid rejects makes iscsiadm exit 19 with no further
        detail (iscsid logs "received incorrect CHAP response from target"), so with
        ``mutual_chap`` an exit 19 is reported as :class:`AuthenticationFailed`."""
        what = f"{iqn} at {portal.address}"
        try:
            self.run(*self._node(iqn, portal), "--login", ok=(0, ERR_SESS_EXISTS))
        except CommandFailed as e:
            detail = _last_error(e.stderr) or f"iscsiadm exit {e.exit_code}"
            if e.exit_code == ERR_LOGIN_AUTH_FAILED:
                raise AuthenticationFailed(what, "CHAP authentication refused by the target") from None
            if e.exit_code == ERR_ISCSID_NOTCONN:
                raise ConnectionFailed(what, "iscsid is not running") from None
            if e.exit_code == ERR_FATAL_LOGIN and mutual_chap:
                raise AuthenticationFailed(what, "login refused; the target's mutual CHAP credentials "
                                                 "(auth_username_in/auth_password_in) were not accepted") from None
            if e.exit_code == ERR_FATAL_LOGIN:
                raise VolumeNotFound(what, f"the target refused the login: {detail}") from None
            if e.exit_code in (ERR_TRANS_TIMEOUT, ERR_PDU_TIMEOUT):
                raise ConnectionFailed(what, f"login timed out: {detail}") from None
            raise ConnectionFailed(what, detail) from None

    def logout(self, sid: int) -> bool:
        """Log out of one session by id; False if it was already gone."""
        res = self.run("-m", "session", "-r", str(sid), "--logout",
                       ok=(0, ERR_NO_OBJS_FOUND, ERR_SYSFS_LOOKUP, 2))
        return res.exit_code == 0

    # discovery ------------------------------------------------------------------------
    def discover(self, portal: Portal, auth: Optional[Mapping[str, RecordValue]] = None) -> List[NodeEntry]:
        """SendTargets discovery that stores no node records; discovery CHAP via a 0600 record
        that is deleted afterwards."""
        base = ["-m", "discoverydb", "-t", "sendtargets", "-p", portal.address, "-I", self.iface]
        existed = bool(self._discovery_files(portal))  # an administrator's record is left in place
        self.run(*base, "-o", "new")
        try:
            if auth:
                files = self._discovery_files(portal)
                if not files:
                    raise ConnectionFailed(portal.address, "iscsiadm created no discovery record")
                for f in files:
                    replace_private(f, rewrite_record(self.paths.read(f) or "", auth))
            try:
                res = self.run(*base, "--discover", "-o", "nonpersistent")
            except CommandFailed as e:
                if e.exit_code == ERR_LOGIN_AUTH_FAILED:
                    raise AuthenticationFailed(portal.address, "discovery CHAP refused by the target") from None
                raise ConnectionFailed(portal.address,
                                       f"sendtargets discovery failed: {_last_error(e.stderr)}") from None
        finally:
            if not existed:
                self.run(*base, "-o", "delete", ok=(0, ERR_NO_OBJS_FOUND, ERR_IDBM))
        return parse_discovery(res.stdout)

    def _discovery_files(self, portal: Portal) -> List[str]:
        out = []
        for root in self.db_dirs:
            sdir = os.path.join(root, "send_targets")
            for entry in self.paths.listdir(sdir):
                host, _, port = entry.rpartition(",")
                if port == str(portal.port) and host.strip("[]").lower() == portal.host.lower():
                    f = os.path.join(sdir, entry, "st_config")
                    if os.path.isfile(f):
                        out.append(f)
        return out


def _record_matches(rec: Mapping[str, str], portal: Portal, iface: str) -> bool:
    addr = rec.get("node.conn[0].address")
    port = rec.get("node.conn[0].port")
    rec_iface = rec.get("iface.iscsi_ifacename", "default")
    return (addr is not None and port == str(portal.port) and same_address(addr, portal.host)
            and rec_iface == iface)


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    errors = ([ln for ln in lines if "reported error" in ln]
              or [ln for ln in lines if "error" in ln.lower() or "could not" in ln.lower()])
    return mask_text((errors or lines or [""])[-1])[:300]


def iter_portals(entries: Sequence[NodeEntry], iqn: Optional[str] = None) -> Iterator[Tuple[Portal, str]]:
    """Discovery entries as (Portal, iqn), optionally only those of ``iqn``; bad portals skipped."""
    for e in entries:
        if iqn is not None and e.iqn != iqn:
            continue
        try:
            yield Portal.parse(e.portal), e.iqn
        except ValueError:
            LOG.warning("ignoring unparsable portal %r from discovery", e.portal)


__all__ = ["SessionEntry", "NodeEntry", "SessionDetail", "Iscsiadm", "parse_sessions", "parse_nodes",
           "parse_discovery", "parse_discoverydb", "discoverydb_portals", "parse_records", "iface_transport",
           "parse_session_details", "rewrite_record", "split_portal", "iter_portals"]
