"""``blocklink doctor``: what on this host will make attaches fail or go wrong, before they do.

Each check returns :class:`Finding` s with a severity: ``ok``, ``info``, ``warning`` (attaches work
but something is off: slow, fragile) or ``critical`` (attaches fail or can reach the wrong volume).
:meth:`Report.exit_status` is 0, 1 or 2 for the worst of them. Checks read files and run read-only
commands through the executor seam; the only network traffic is a TCP connect (short timeout) to
portals named in the attachment store's own records. With a store, this host's initiator
identities are registered there, and two hosts with one IQN or host NQN (a cloned image) are
reported as critical.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from blocklink.errors import CommandFailed
from blocklink.executor import Executor, default_executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.properties import read_initiator_name, read_nvme_ids, read_nvme_native_multipath

SEVERITIES = ("ok", "info", "warning", "critical")
PROTOCOLS = ("iscsi", "fibre_channel", "nvmeof", "rbd")
ISCSID_SOCKET = "ISCSIADM_ABSTRACT_NAMESPACE"  # iscsid's abstract unix socket (iscsiadm's IPC)
MANUAL_SCAN_VERSION = (2, 0, 874)  # open-iscsi learned node.session.scan = manual here
# binaries a protocol's kernel attach needs (optional ones: a warning when missing)
BINARIES: Dict[str, Tuple[str, ...]] = {
    "iscsi": ("iscsiadm", "multipath", "multipathd", "blockdev", "udevadm"),
    "fibre_channel": ("multipath", "multipathd", "blockdev", "udevadm"),
    "nvmeof": ("blockdev",),
    "rbd": ("rbd",),
}
OPTIONAL_BINARIES: Dict[str, Tuple[str, ...]] = {"nvmeof": ("nvme",), "rbd": ("qemu-storage-daemon", "nbdfuse")}
MODULES: Dict[str, Tuple[str, ...]] = {
    "iscsi": ("iscsi_tcp", "dm_multipath"),
    "fibre_channel": ("scsi_transport_fc", "dm_multipath"),
    "nvmeof": ("nvme_tcp", "nvme_fabrics"),
    "rbd": ("rbd",),
}
# names a SCSI disk, an NVMe namespace and some array models get, to test blacklist regexes against
_SAMPLE_DEVNODES = ("sda", "sdq", "sdaa")
_SAMPLE_DEVICES = (("LIO-ORG", "FILEIO"), ("3PARdata", "VV"), ("NETAPP", "LUN C-Mode"), ("PURE", "FlashArray"))
_IQN = re.compile(r"^iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*[a-z0-9](:[^\s]+)?$")
_EUI = re.compile(r"^eui\.[0-9A-Fa-f]{16}$")
_NAA = re.compile(r"^naa\.(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32})$")
_NQN = re.compile(r"^nqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*[a-z0-9]:\S+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Finding:
    check: str
    severity: str
    message: str
    detail: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "message": self.message, "detail": dict(self.detail)}


@dataclass(frozen=True)
class Report:
    findings: Tuple[Finding, ...]

    @property
    def worst(self) -> str:
        return max((f.severity for f in self.findings), key=SEVERITIES.index, default="ok")

    @property
    def exit_status(self) -> int:
        return {"ok": 0, "info": 0, "warning": 1, "critical": 2}[self.worst]

    def by_check(self, check: str) -> List[Finding]:
        return [f for f in self.findings if f.check == check]

    def problems(self) -> List[Finding]:
        return [f for f in self.findings if f.severity in ("warning", "critical")]

    def to_dict(self) -> Dict[str, Any]:
        return {"worst": self.worst, "exit_status": self.exit_status, "findings": [f.to_dict() for f in self.findings]}

    def human(self) -> str:
        marks = {"ok": "ok  ", "info": "info", "warning": "WARN", "critical": "CRIT"}
        lines = [f"[{marks[f.severity]}] {f.check}: {f.message}" for f in self.findings]
        problems = self.problems()
        lines.append("all clear" if not problems else f"{len(problems)} problem(s); worst: {self.worst}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- multipath.conf
def parse_multipath_conf(text: str) -> Dict[str, List[Any]]:
    """multipath.conf (or ``multipath -t``) as section -> entries; an entry is a ``(key, value)``
    pair or, for a subsection (``device { ... }``), ``(name, {key: value})``."""
    out: Dict[str, List[Any]] = {}
    section: Optional[str] = None
    sub: Optional[Tuple[str, Dict[str, str]]] = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith(("#", "!")) else ""
        if not line:
            continue
        parts = line.split(None, 1)
        key = parts[0]
        rest = parts[1].strip() if len(parts) > 1 else ""
        if rest == "{" or line.endswith("{") and key != "}":
            if section is None:
                section = key
                out.setdefault(section, [])
            else:
                sub = (key, {})
            continue
        if key == "}":
            if sub is not None:
                out[section or ""].append(sub)
                sub = None
            else:
                section = None
            continue
        value = rest[1:-1] if len(rest) >= 2 and rest[0] == rest[-1] == '"' else rest
        if sub is not None:
            sub[1][key] = value
        elif section is not None:
            out[section].append((key, value))
    return out


def _matches(pattern: str, value: str) -> bool:
    negate = pattern.startswith("!")
    try:
        hit = re.search(pattern[1:] if negate else pattern, value) is not None
    except re.error:
        return False
    return hit != negate


def _covers_all_devices(entries: Iterable[Any], kind: str) -> List[str]:
    """Blacklist entries of ``kind`` (devnode, wwid, device) that catch every sample SCSI disk."""
    hits = []
    for key, value in entries:
        if kind == "devnode" and key == "devnode" and all(_matches(value, d) for d in _SAMPLE_DEVNODES):
            hits.append(f'devnode "{value}"')
        elif kind == "wwid" and key == "wwid" and all(_matches(value, w) for w in ("36001405abcdef", "3600a0980")):
            hits.append(f'wwid "{value}"')
        elif kind == "device" and key == "device" and isinstance(value, dict) and all(
                _matches(value.get("vendor", ".*"), v) and _matches(value.get("product", ".*"), p)
                for v, p in _SAMPLE_DEVICES):
            hits.append(f'device vendor "{value.get("vendor", "")}" product "{value.get("product", "")}"')
    return hits


def check_multipath_conf(conf: Dict[str, List[Any]], source: str) -> List[Finding]:
    """The settings that decide whether the connector's maps can form."""
    out: List[Finding] = []
    defaults = {k: v for k, v in conf.get("defaults", []) if isinstance(v, str)}
    black, exceptions = conf.get("blacklist", []), conf.get("blacklist_exceptions", [])
    for kind in ("devnode", "wwid", "device"):
        hits = _covers_all_devices(black, kind)
        rescued = [e for e in exceptions if e[0] == kind]
        if hits and not rescued:
            out.append(Finding("multipath_conf", "critical",
                               f"blacklist {', '.join(hits)} excludes every SCSI disk: no multipath map can form "
                               f"(use_multipath attaches fail or fall back to one path)", {"source": source}))
        elif hits:
            out.append(Finding("multipath_conf", "warning",
                               f"blacklist {', '.join(hits)} excludes all but the blacklist_exceptions {kind}s: "
                               "volumes outside them get no map", {"source": source}))
    fm = defaults.get("find_multipaths", "")
    if fm == "smart":
        out.append(Finding("multipath_conf", "warning",
                           'find_multipaths "smart": a LU multipathd sees with one path first is held back for '
                           "find_multipaths_timeout before it becomes a map or is released; use no, yes, strict or "
                           "greedy (blocklink records the WWID itself)", {"source": source, "find_multipaths": fm}))
    ufn = defaults.get("user_friendly_names", "no")
    out.append(Finding("multipath_conf", "ok" if not out else "info",
                       f'find_multipaths "{fm or "default"}", user_friendly_names "{ufn}" '
                       "(blocklink finds maps by WWID, so either name style works)",
                       {"source": source, "find_multipaths": fm, "user_friendly_names": ufn}))
    return out


# ---------------------------------------------------------------------------- the doctor
class Doctor:
    """Run the checks. ``protocols``: which connectors this host uses (default: all). ``store``: an
    :class:`~blocklink.attach.records.AttachmentStore` (fleet-wide identity and portals)."""

    def __init__(self, *, executor: Optional[Executor] = None, paths: Optional[HostPaths] = None,
                 store: Any = None, protocols: Sequence[str] = PROTOCOLS, portal_timeout: float = 2.0,
                 recent: int = 50, host: Optional[str] = None, which: Any = shutil.which,
                 iscsid_socket: str = ISCSID_SOCKET) -> None:
        self.executor = executor or default_executor()
        self.paths = paths or HostPaths()
        self.store = store
        self.protocols = tuple(protocols)
        self.portal_timeout = portal_timeout
        self.recent = recent
        self.host = host or socket.gethostname()
        self.which = which
        self.iscsid_socket = iscsid_socket

    def run(self) -> Report:
        findings: List[Finding] = []
        for check in (self.check_binaries, self.check_modules, self.check_iscsid, self.check_manual_scan,
                      self.check_multipath, self.check_nvme_multipath, self.check_identity, self.check_fleet,
                      self.check_portals):
            findings.extend(check())
        return Report(tuple(findings))

    def _uses(self, *protocols: str) -> bool:
        return any(p in self.protocols for p in protocols)

    def _cmd(self, argv: Sequence[str]) -> Tuple[int, str]:
        try:
            res = self.executor.run(list(argv), check=False, timeout=20)
        except (CommandFailed, OSError) as e:
            return 127, str(e)
        return res.exit_code, res.stdout + res.stderr

    # ------------------------------------------------------------------ binaries and modules
    def check_binaries(self) -> List[Finding]:
        out = []
        for proto in self.protocols:
            for name in BINARIES.get(proto, ()):
                if self.which(name) is None:
                    out.append(Finding("binary", "critical", f"{name} not found on PATH ({proto} needs it)",
                                       {"binary": name, "protocol": proto}))
            for name in OPTIONAL_BINARIES.get(proto, ()):
                if self.which(name) is None:
                    out.append(Finding("binary", "info", f"{name} not found on PATH (optional for {proto})",
                                       {"binary": name, "protocol": proto}))
        if not out:
            out.append(Finding("binary", "ok", "every required binary is on PATH"))
        return out

    def check_modules(self) -> List[Finding]:
        out, seen = [], set()
        for proto in self.protocols:
            for mod in MODULES.get(proto, ()):
                if mod in seen:
                    continue
                seen.add(mod)
                if self.paths.exists(self.paths.sys("module", mod)):
                    continue  # loaded (or built in)
                rc, text = self._cmd(["modinfo", "-F", "filename", mod])
                if rc != 0 or not text.strip():
                    out.append(Finding("kernel_module", "critical", f"module {mod} is neither loaded nor "
                                       f"loadable ({proto}): {text.strip()[:120]}", {"module": mod, "protocol": proto}))
        if not out:
            out.append(Finding("kernel_module", "ok", f"modules loaded or loadable: {', '.join(sorted(seen))}"))
        return out

    # ------------------------------------------------------------------ open-iscsi
    def check_iscsid(self) -> List[Finding]:
        if not self._uses("iscsi"):
            return []
        # iscsiadm answers "-m session" from sysfs without iscsid: connect to iscsid's own socket instead
        # (with socket activation this starts iscsid, which is what a login would do too)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            try:
                sock.connect("\0" + self.iscsid_socket)
            except OSError as e:
                return [Finding("iscsid", "critical", f"iscsid is not running or not reachable on @{self.iscsid_socket}"
                                f" ({e.strerror or type(e).__name__}): iSCSI logins fail",
                                {"socket": "@" + self.iscsid_socket})]
        return [Finding("iscsid", "ok", "iscsid is running and accepts iscsiadm's connections",
                        {"socket": "@" + self.iscsid_socket})]

    def check_manual_scan(self) -> List[Finding]:
        if not self._uses("iscsi"):
            return []
        rc, text = self._cmd(["iscsiadm", "--version"])
        m = re.search(r"version\s+(\d+)\.(\d+)\.(\d+)", text)
        if rc != 0 or m is None:
            return [Finding("iscsi_manual_scan", "critical", f"cannot tell the open-iscsi version: {text.strip()[:120]}")]
        version = tuple(int(x) for x in m.groups())
        shown = ".".join(m.groups())
        if version < MANUAL_SCAN_VERSION:
            return [Finding("iscsi_manual_scan", "critical",
                            f"open-iscsi {shown} has no node.session.scan = manual: logging in to a shared target "
                            "would surface every volume's LUN (the connector refuses it)", {"version": shown})]
        return [Finding("iscsi_manual_scan", "ok", f"open-iscsi {shown} supports manual scans", {"version": shown})]

    # ------------------------------------------------------------------ multipath
    def check_multipath(self) -> List[Finding]:
        if not self._uses("iscsi", "fibre_channel"):
            return []
        out: List[Finding] = []
        rc, text = self._cmd(["multipathd", "show", "status"])
        if rc != 0 or "error receiving packet" in text or not text.strip():
            out.append(Finding("multipathd", "warning", "multipathd is not running: use_multipath attaches fail "
                               "(single-path attaches work)", {"exit_code": rc}))
        else:
            out.append(Finding("multipathd", "ok", "multipathd is running"))
        rc, conf_text = self._cmd(["multipath", "-t"])
        source = "multipath -t"
        if rc != 0 or "defaults {" not in conf_text:
            conf_text = self.paths.read(self.paths.etcpath("multipath.conf")) or ""
            source = self.paths.etcpath("multipath.conf")
        out.extend(check_multipath_conf(parse_multipath_conf(conf_text), source))
        return out

    def check_nvme_multipath(self) -> List[Finding]:
        if not self._uses("nvmeof"):
            return []
        param = self.paths.sys("module", "nvme_core", "parameters", "multipath")
        if not self.paths.exists(param):
            return [Finding("nvme_multipath", "info", "nvme_core is not loaded: native NVMe multipath unknown "
                            "(loads with nvme_tcp)")]
        native = read_nvme_native_multipath(self.paths)
        return [Finding("nvme_multipath", "ok" if native else "info",
                        "nvme_core.multipath=Y: one device per namespace over every controller" if native else
                        "nvme_core.multipath=N: one device per controller path; use_multipath needs dm-multipath",
                        {"native": native})]

    # ------------------------------------------------------------------ identity
    def identity(self) -> Dict[str, Optional[str]]:
        ids = read_nvme_ids(self.paths)
        return {"iqn": read_initiator_name(self.paths), "hostnqn": (ids.get("nqn") or "").strip() or None,
                "hostid": (ids.get("nvme_hostid") or "").strip() or None}

    def check_identity(self) -> List[Finding]:
        ident, out = self.identity(), []
        if self._uses("iscsi"):
            iqn = ident["iqn"]
            where = self.paths.etcpath("iscsi", "initiatorname.iscsi")
            if not iqn:
                out.append(Finding("initiator_iqn", "critical", f"no InitiatorName in {where}", {"file": where}))
            elif not (_IQN.match(iqn) or _EUI.match(iqn) or _NAA.match(iqn)):
                out.append(Finding("initiator_iqn", "critical", f"initiator name {iqn!r} is not a valid IQN/EUI/NAA",
                                   {"iqn": iqn}))
            else:
                out.append(Finding("initiator_iqn", "ok", f"initiator {iqn}", {"iqn": iqn}))
        if self._uses("nvmeof"):
            nqn, hostid = ident["hostnqn"], ident["hostid"]
            if not nqn:
                out.append(Finding("hostnqn", "critical", f"no host NQN in {self.paths.etcpath('nvme', 'hostnqn')}"))
            elif not _NQN.match(nqn) or len(nqn) > 223:
                out.append(Finding("hostnqn", "critical", f"host NQN {nqn!r} is not well formed", {"hostnqn": nqn}))
            else:
                out.append(Finding("hostnqn", "ok", f"host NQN {nqn}", {"hostnqn": nqn}))
            if hostid and not _UUID.match(hostid):
                out.append(Finding("hostid", "critical", f"host ID {hostid!r} is not a UUID", {"hostid": hostid}))
            elif not hostid:
                out.append(Finding("hostid", "warning", "no /etc/nvme/hostid: the kernel makes one up per connect"))
        return out

    def check_fleet(self) -> List[Finding]:
        """Register this host's identity in the store; two hosts with one IQN/NQN/host ID are critical."""
        if self.store is None:
            return []
        ident = self.identity()
        self.store.register_host(self.host, **ident)
        out = []
        for key in ("iqn", "hostnqn", "hostid"):
            mine = ident[key]
            if not mine:
                continue
            others = sorted(h.host for h in self.store.hosts() if h.host != self.host and getattr(h, key) == mine)
            if others:
                out.append(Finding("identity_unique", "critical",
                                   f"{key} {mine} is also used by {', '.join(others)} (a cloned image?): targets "
                                   "cannot tell the hosts apart and may expose one host's volumes to the other",
                                   {key: mine, "hosts": others}))
        if not out:
            out.append(Finding("identity_unique", "ok", "this host's initiator identities are unique in the store"))
        return out

    # ------------------------------------------------------------------ portals
    def portals(self) -> Dict[Tuple[str, int], str]:
        """(host, port) -> the worst status of a record naming it ("active" beats "recent")."""
        found: Dict[Tuple[str, int], str] = {}
        recs = sorted(self.store.list(), key=lambda a: a.updated_at, reverse=True)[: self.recent]
        for rec in recs:
            data = (rec.connection_info or {}).get("data") or {}
            state = "active" if rec.status in ("attaching", "attached", "detaching") else "recent"
            for addr in _portal_texts(data):
                hp = _split_portal(addr, 4420 if rec.protocol == "nvmeof" else 3260)
                if hp is not None and found.get(hp) != "active":
                    found[hp] = state
        return found

    def check_portals(self) -> List[Finding]:
        if self.store is None:
            return []
        out = []
        for (host, port), state in sorted(self.portals().items()):
            t0 = time.monotonic()
            try:
                with socket.create_connection((host, port), timeout=self.portal_timeout):
                    pass
            except OSError as e:
                sev = "critical" if state == "active" else "warning"
                out.append(Finding("portal", sev, f"portal {host}:{port} of {state} attachments is unreachable: "
                                   f"{e.strerror or type(e).__name__}", {"portal": f"{host}:{port}", "records": state}))
                continue
            out.append(Finding("portal", "ok", f"portal {host}:{port} answers ({(time.monotonic() - t0) * 1000:.0f} ms)",
                               {"portal": f"{host}:{port}", "records": state}))
        return out


def _portal_texts(data: Dict[str, Any]) -> List[str]:
    out = []
    for key in ("target_portal", "discovery_portal"):
        if isinstance(data.get(key), str):
            out.append(data[key])
    for key in ("target_portals",):
        out.extend(p for p in data.get(key) or () if isinstance(p, str))
    for p in data.get("portals") or ():  # NVMe: [address, port, transport]
        if isinstance(p, (list, tuple)) and len(p) >= 2:
            out.append(f"{p[0]}:{p[1]}")
    if isinstance(data.get("target_portal"), str) and data.get("target_port"):
        out.append(f"{data['target_portal']}:{data['target_port']}")
    return out


def _split_portal(text: str, default_port: int) -> Optional[Tuple[str, int]]:
    text = text.split(",")[0].strip()
    m = re.match(r"^\[(?P<h6>[^\]]+)\](?::(?P<p6>\d+))?$|^(?P<h>[^:]+)(?::(?P<p>\d+))?$", text)
    if m is None:
        return None
    host = m.group("h6") or m.group("h")
    port = m.group("p6") or m.group("p")
    return host, int(port) if port else default_port


def run_doctor(**kwargs: Any) -> Report:
    return Doctor(**kwargs).run()


__all__ = ["Doctor", "Finding", "Report", "SEVERITIES", "check_multipath_conf", "parse_multipath_conf", "run_doctor"]
