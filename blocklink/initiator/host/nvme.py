"""NVMe-oF host mechanics: controllers and namespaces in sysfs, connects through /dev/nvme-fabrics.

What the kernel shows, and what this module relies on:

- ``/sys/class/nvme/nvmeX``: one fabrics controller (``subsysnqn``, ``transport``, ``address`` as
  ``traddr=..,trsvcid=..[,host_traddr=..][,src_addr=..]``, ``state``, ``hostnqn``). Its namespaces are
  child directories: ``nvmeXnN`` without native multipath, ``nvmeScXnN`` (a hidden path device of the
  head ``/dev/nvmeSnN``) with it.
- ``/sys/block/nvmeSnN/{uuid,nguid,wwid,nsid,size}``: the identity and size of the /dev node.
- ``/sys/module/nvme_core/parameters/multipath``: ``Y`` when the kernel merges the paths of one
  namespace into one head device (native NVMe multipath).

- ``/dev/nvme-fabrics``: writing an options string creates a controller (read back ``instance=N,cntlid=M``);
  reading it fresh lists the option tokens the kernel knows. Kernel differences handled here: Debian's
  6.1 accepts ``dhchap_secret`` but has no NVMe in-band authentication and would silently connect
  unauthenticated; :meth:`NvmeHost.supports_auth` tells them apart (6.12 loads ``nvme_auth``). Both
  answer a target refusal with EIO and a duplicate with EALREADY.
- ``/sys/class/nvme/nvmeX/delete_controller``: writing ``1`` deletes the controller.
- ``/sys/class/nvme/nvmeX/dhchap_secret``, ``dhchap_ctrl_secret`` (6.x with NVME_HOST_AUTH): the secrets
  the controller authenticated with, in attributes of mode 0644 that anyone may read; :meth:`NvmeHost.connect`
  makes them 0600 as soon as the kernel answers (nvmet's configfs ``dhchap_key``/``dhchap_ctrl_key``
  are 0644 as well: :mod:`blocklink.target.nvmet_config` makes them 0600 before writing a key).

nvme-cli is used only for ``ns-rescan`` and ``id-ns``. No protocol policy lives here: which portals to connect and when to disconnect is the connector's.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import socket
import uuid as uuid_lib
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from blocklink.errors import AuthenticationFailed, ConnectionFailed, InvalidOption
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.masking import Secret, get_logger, reveal

LOG = get_logger(__name__)

_NS_DIR_RE = re.compile(r"^nvme(\d+)(?:c(\d+))?n(\d+)$")
_HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
_DELETED_NVME_RE = re.compile(r"^/dev/(?:nvme\d+(?:n\d+)?|ng\d+n\d+) \(deleted\)$")
LIVE = "live"


# ---------------------------------------------------------------------------------------------
# identifiers
# ---------------------------------------------------------------------------------------------

def normalize_uuid(text: Optional[str]) -> Optional[str]:
    """Canonical lower-case dashed UUID, or None (Cinder sends them with or without dashes)."""
    if not text:
        return None
    try:
        return str(uuid_lib.UUID(text.strip()))
    except ValueError:
        return None


def normalize_nguid(text: Optional[str]) -> Optional[str]:
    """32 lower-case hex digits, or None; an all-zero NGUID means "none" (what nvmet reports unset)."""
    if not text:
        return None
    h = text.strip().lower().replace("-", "")
    if not _HEX32_RE.match(h) or h == "0" * 32:
        return None
    return h


def parse_address(text: str) -> Dict[str, str]:
    """``traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1`` → dict (sysfs ``address``)."""
    out = {}
    for part in (text or "").split(","):
        k, sep, v = part.strip().partition("=")
        if sep:
            out[k] = v
    return out


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%")[0]) == ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return a.lower() == b.lower()


def resolve_addresses(host: str) -> FrozenSet[str]:
    """The IP addresses a portal host stands for (itself when it is an address already)."""
    try:
        ipaddress.ip_address(host.split("%")[0])
        return frozenset({host})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return frozenset({host})
    return frozenset({str(i[4][0]) for i in infos} | {host})


# ---------------------------------------------------------------------------------------------
# sysfs model
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NvmePortalSpec:
    """Where to connect: one entry of the connection info's ``portals``."""

    address: str
    port: int
    transport: str = "tcp"

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.transport}://{host}:{self.port}"


@dataclass(frozen=True)
class Controller:
    name: str  # nvme0
    subsysnqn: str
    transport: str
    traddr: str
    trsvcid: str
    state: str
    hostnqn: Optional[str] = None
    host_traddr: Optional[str] = None

    @property
    def live(self) -> bool:
        return self.state == LIVE

    @property
    def dev(self) -> str:
        return f"/dev/{self.name}"

    def serves(self, nqn: str, portal: NvmePortalSpec, hostnqn: Optional[str],
               addresses: Optional[FrozenSet[str]] = None) -> bool:
        """Whether this controller is the connection of ``hostnqn`` to ``nqn`` at ``portal``."""
        if self.subsysnqn != nqn or self.transport != portal.transport or self.trsvcid != str(portal.port):
            return False
        if hostnqn is not None and self.hostnqn is not None and self.hostnqn != hostnqn:
            return False
        addrs = addresses if addresses is not None else frozenset({portal.address})
        return any(_same_address(self.traddr, a) for a in addrs)


@dataclass(frozen=True)
class Namespace:
    name: str  # the /dev node: nvme0n1 (the head device with native multipath)
    nsid: int
    uuid: Optional[str] = None
    nguid: Optional[str] = None
    wwid: Optional[str] = None
    size: int = 0  # bytes
    controllers: Tuple[str, ...] = ()  # the controllers it was seen through

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    def matches(self, uuid: Optional[str] = None, nguid: Optional[str] = None,
                nsid: Optional[int] = None) -> bool:
        """The most specific identifier given decides: UUID, then NGUID, then namespace id."""
        if uuid:
            return self.uuid == uuid or self.wwid == f"uuid.{uuid}"
        if nguid:
            return self.nguid == nguid or self.wwid == f"eui.{nguid}"
        if nsid is not None:
            return self.nsid == nsid
        return False


class NvmeHost:
    """Reads NVMe state from sysfs and drives ``nvme`` through the executor."""

    def __init__(self, paths: HostPaths, executor: Executor, *, nvme_cmd: str = "nvme",
                 command_timeout: float = 60.0) -> None:
        self.paths = paths
        self.executor = executor
        self.nvme_cmd = nvme_cmd
        self.command_timeout = command_timeout

    # ------------------------------------------------------------------ kernel features
    def fabrics_ready(self) -> bool:
        return self.paths.exists(self.paths.devpath("nvme-fabrics"))

    def load_modules(self, transport: str) -> None:
        """``nvme-fabrics`` and the transport's module, when /dev/nvme-fabrics is missing."""
        if self.fabrics_ready():
            return
        self.executor.run(["modprobe", "-a", "nvme-fabrics", f"nvme-{transport}"], timeout=self.command_timeout)

    # ------------------------------------------------------------------ controllers
    def controller(self, name: str) -> Optional[Controller]:
        base = self.paths.sys("class", "nvme", name)
        nqn = self.paths.read(os.path.join(base, "subsysnqn"))
        if nqn is None:
            return None
        addr = parse_address(self.paths.read(os.path.join(base, "address"), "") or "")
        return Controller(
            name=name, subsysnqn=nqn,
            transport=self.paths.read(os.path.join(base, "transport"), "") or "",
            traddr=addr.get("traddr", ""), trsvcid=addr.get("trsvcid", ""),
            state=self.paths.read(os.path.join(base, "state"), "") or "",
            hostnqn=self.paths.read(os.path.join(base, "hostnqn")),
            host_traddr=addr.get("host_traddr"))

    def controllers(self, nqn: Optional[str] = None) -> List[Controller]:
        out = []
        for name in self.paths.listdir(self.paths.sys("class", "nvme")):
            c = self.controller(name)
            if c is not None and (nqn is None or c.subsysnqn == nqn):
                out.append(c)
        return out

    def find_controllers(self, nqn: str, portals: Sequence[NvmePortalSpec],
                         hostnqn: Optional[str]) -> Dict[NvmePortalSpec, Controller]:
        """The controller connecting ``hostnqn`` to ``nqn`` at each portal that has one."""
        found: Dict[NvmePortalSpec, Controller] = {}
        candidates = self.controllers(nqn)
        for p in portals:
            addrs = resolve_addresses(p.address)
            for c in candidates:
                if c.serves(nqn, p, hostnqn, addrs) and c.name not in {x.name for x in found.values()}:
                    found[p] = c
                    break
        return found

    # ------------------------------------------------------------------ subsystems
    def subsystems(self, nqn: str) -> List[str]:
        """The kernel's subsystem objects for ``nqn`` (``nvme-subsysN``), with or without paths.

        Linux frees one only when its last controller *and* last namespace head are freed, which
        waits for every open handle of their devices to close: it can outlive ``nvme disconnect``.
        """
        base = self.paths.sys("class", "nvme-subsystem")
        return sorted(s for s in self.paths.listdir(base) if self.paths.read(os.path.join(base, s, "subsysnqn")) == nqn)

    def delayed_removal(self, head: str) -> int:
        """Seconds the kernel keeps a head device after its last path went (``delayed_removal_secs``,
        Linux 6.16+; 0 when the attribute is missing or unreadable)."""
        v = self._block_attr(head, "delayed_removal_secs") or ""
        return int(v) if v.isdigit() else 0

    def remove_without_delay(self, head: str) -> None:
        """Make the kernel remove ``head`` as soon as its last path goes (``delayed_removal_secs`` = 0)."""
        self.paths.write(self.paths.sys("block", head, "delayed_removal_secs"), "0")

    # ------------------------------------------------------------------ namespaces
    def _block_attr(self, name: str, attr: str) -> Optional[str]:
        return self.paths.read(self.paths.sys("block", name, attr))

    def namespaces(self, controller: str) -> List[Namespace]:
        """The namespaces reachable through one controller, named by their /dev node."""
        base = self.paths.sys("class", "nvme", controller)
        out = []
        for entry in self.paths.listdir(base):
            m = _NS_DIR_RE.match(entry)
            if not m:
                continue
            name = f"nvme{m.group(1)}n{m.group(3)}"
            d = os.path.join(base, entry)
            nsid_text = self.paths.read(os.path.join(d, "nsid")) or ""
            if not nsid_text.isdigit():  # going away right now (the N in nvmeXnN is not the nsid)
                continue
            size = self._block_attr(name, "size") or self.paths.read(os.path.join(d, "size"), "0") or "0"
            out.append(Namespace(
                name=name,
                nsid=int(nsid_text),
                uuid=normalize_uuid(self.paths.read(os.path.join(d, "uuid"))),
                nguid=normalize_nguid(self.paths.read(os.path.join(d, "nguid"))),
                wwid=self.paths.read(os.path.join(d, "wwid")),
                size=int(size) * 512 if size.isdigit() else 0,
                controllers=(controller,)))
        return out

    def find_namespace(self, controllers: Iterable[str], *, uuid: Optional[str] = None,
                       nguid: Optional[str] = None, nsid: Optional[int] = None,
                       need_dev: bool = True) -> Optional[Namespace]:
        """The namespace with this identity behind any of ``controllers`` (merged over paths).

        With ``need_dev`` only a usable one: its /dev node exists and its capacity is known.
        """
        hit: Optional[Namespace] = None
        via: List[str] = []
        for ctrl in controllers:
            for ns in self.namespaces(ctrl):
                if ns.matches(uuid, nguid, nsid):
                    # a head device exists (size 0) a moment before its first path has set the capacity
                    if need_dev and (ns.size == 0 or not self.paths.exists(self.paths.devpath(ns.name))):
                        continue
                    hit = hit or ns
                    if ns.name == hit.name:
                        via.append(ctrl)
        if hit is None:
            return None
        return Namespace(hit.name, hit.nsid, hit.uuid, hit.nguid, hit.wwid, hit.size, tuple(via))

    def device_size(self, name: str) -> Optional[int]:
        v = self._block_attr(name, "size")
        return int(v) * 512 if v and v.isdigit() else None

    # ------------------------------------------------------------------ who uses a device
    def device_users(self, name: str) -> List[str]:
        """Why block device ``name`` is in use: holders (dm/md), mounts, processes holding it open."""
        reasons = [f"held by {h}" for h in self.paths.listdir(self.paths.sys("block", name, "holders"))]
        majmin = self._block_attr(name, "dev")
        mountinfo = self.paths.read(self.paths.procpath("self", "mountinfo"), "") or ""
        for line in mountinfo.splitlines():
            f = line.split()
            if majmin and len(f) > 4 and f[2] == majmin:
                reasons.append(f"mounted on {f[4]}")
        return reasons + [f"open by {who}" for who in self.openers([name], skip_self=True)]

    def openers(self, names: Iterable[str], *, skip_self: bool = False, deleted_nvme: bool = False) -> List[str]:
        """``pid N (comm)`` of each process holding /dev/<name> open for any of ``names``, also after
        the kernel deleted the node (``/proc/N/fd`` then reads ``/dev/<name> (deleted)``). With
        ``deleted_nvme`` also the holders of any deleted NVMe device node (they keep its kernel objects),
        each followed by the node it holds."""
        devs = {f"/dev/{n}" for n in names}
        devs |= {f"{d} (deleted)" for d in devs}
        me = str(os.getpid())
        out = []
        for pid in self.paths.listdir(self.paths.proc):
            if not pid.isdigit() or (skip_self and pid == me):
                continue
            fd_dir = self.paths.procpath(pid, "fd")
            for fd in self.paths.listdir(fd_dir):
                link = self.paths.readlink(os.path.join(fd_dir, fd)) or ""
                stale = deleted_nvme and _DELETED_NVME_RE.match(link)
                if link in devs or stale:
                    comm = self.paths.read(self.paths.procpath(pid, "comm"), "?")
                    out.append(f"pid {pid} ({comm})" + (" (this process)" if pid == me else "")
                               + (f" holding {link}" if deleted_nvme else ""))
                    break
        return out

    # ------------------------------------------------------------------ the kernel's fabrics interface
    def fabrics_tokens(self) -> FrozenSet[str]:
        """The option names this kernel's /dev/nvme-fabrics accepts (reading it lists them, Linux 5.17+);
        empty when the device is missing or unreadable."""
        try:
            text = self.paths.fabrics("")
        except OSError:
            return frozenset()
        return frozenset(t.split("=", 1)[0] for t in text.split(",") if t)

    def supports_auth(self) -> bool:
        """Whether the host kernel does NVMe in-band authentication (DH-HMAC-CHAP). The option list alone
        does not tell: Debian's 6.1 lists ``dhchap_secret`` but, built without NVME_AUTH, ignores it and
        connects unauthenticated. A kernel with NVME_HOST_AUTH links nvme-core to the ``nvme_auth``
        module (Debian's 6.12: a module, loaded with nvme-core), so both must be there."""
        return self.paths.exists(self.paths.sys("module", "nvme_auth")) and "dhchap_secret" in self.fabrics_tokens()

    def connect(self, nqn: str, portal: NvmePortalSpec, *, hostnqn: Optional[str] = None,
                hostid: Optional[str] = None, ctrl_loss_tmo: Optional[int] = None,
                reconnect_delay: Optional[int] = None, keep_alive_tmo: Optional[int] = None,
                nr_io_queues: Optional[int] = None, host_traddr: Optional[str] = None,
                dhchap_secret: Optional[Secret] = None, dhchap_ctrl_secret: Optional[Secret] = None) -> bool:
        """Create a controller the way nvme-cli does, without it: one write of the options to
        /dev/nvme-fabrics, which answers ``instance=N,cntlid=M`` (no child process; a DH-HMAC-CHAP secret
        reaches the kernel through that write only). True when connected now, False when the kernel
        already had the connection (EALREADY).

        A refusal by the target raises :class:`AuthenticationFailed` (host NQN not allowed, no such
        subsystem for this host, DH-HMAC-CHAP rejected), an unreachable portal :class:`ConnectionFailed`.
        """
        fields: List[Tuple[str, Any]] = [
            ("nqn", nqn), ("transport", portal.transport), ("traddr", portal.address), ("host_traddr", host_traddr),
            ("trsvcid", portal.port), ("hostnqn", hostnqn), ("hostid", hostid), ("nr_io_queues", nr_io_queues),
            ("reconnect_delay", reconnect_delay), ("ctrl_loss_tmo", ctrl_loss_tmo), ("keep_alive_tmo", keep_alive_tmo)]
        secrets = [("dhchap_secret", dhchap_secret), ("dhchap_ctrl_secret", dhchap_ctrl_secret)]
        for name, value in fields + [(n, reveal(v)) for n, v in secrets]:
            if value is not None and not _FABRICS_VALUE_RE.fullmatch(str(value)):
                raise InvalidOption(name, "not a value the fabrics options string can carry")
        text = ",".join(f"{k}={v}" for k, v in fields if v is not None)
        text += "".join(f",{k}={reveal(v)}" for k, v in secrets if v is not None)
        options: Any = Secret(text) if dhchap_secret is not None or dhchap_ctrl_secret is not None else text
        what = f"{nqn} at {portal}"
        try:
            answer = self.paths.fabrics(options)
        except OSError as e:
            err = classify_fabrics_error(e, what, hostnqn, authenticated=dhchap_secret is not None)
            if err is None:
                LOG.info("nvme: %s was already connected", what)
                return False
            raise err from None
        LOG.info("nvme: connected %s (%s)", what, answer)
        if dhchap_secret is not None or dhchap_ctrl_secret is not None:
            self._restrict_secrets(answer)
        return True

    def _restrict_secrets(self, answer: str) -> None:
        """The kernel shows the secrets a controller authenticated with in its ``dhchap_secret`` and
        ``dhchap_ctrl_secret`` attributes, mode 0644 (6.12's nvme sysfs, no capability check on read): make
        them root-only at once. Until this runs (the connect itself, the DH-HMAC-CHAP exchange included)
        a local user who polls /sys/class/nvme could read them; no interface sets the mode earlier."""
        m = re.search(r"(?:^|,)instance=(\d+)(?:,|$)", answer)
        if not m:
            LOG.warning("nvme: no controller instance in the kernel's answer %r: its DH-HMAC-CHAP "
                        "attributes keep the kernel's mode", answer)
            return
        ctrl = f"nvme{m.group(1)}"
        for attr in ("dhchap_secret", "dhchap_ctrl_secret"):
            path = self.paths.sys("class", "nvme", ctrl, attr)
            if not self.paths.exists(path):
                continue
            try:
                self.paths.restrict(path)
            except OSError as e:
                LOG.warning("nvme: could not make %s root-only: %s", path, e.strerror or e)

    def disconnect(self, controller: str) -> None:
        """Delete the controller through sysfs (``delete_controller``, what ``nvme disconnect -d`` does);
        its namespaces' devices go with it. A controller already gone is not an error."""
        try:
            self.paths.write(self.paths.sys("class", "nvme", controller, "delete_controller"), "1")
        except FileNotFoundError:
            LOG.info("nvme: controller %s was already gone", controller)
            return
        LOG.info("nvme: disconnected controller %s", controller)

    def rescan(self, controller: str) -> None:
        """``nvme ns-rescan`` (for targets that send no namespace-change notice)."""
        self.executor.run([self.nvme_cmd, "ns-rescan", f"/dev/{controller}"], timeout=self.command_timeout)

    def id_ns_size(self, device: str) -> Optional[int]:
        """The namespace's size in bytes as the controller reports it now (``nvme id-ns -o json``)."""
        res = self.executor.run([self.nvme_cmd, "id-ns", "-o", "json", device], check=False,
                                timeout=self.command_timeout)
        if res.exit_code != 0:
            LOG.warning("nvme id-ns %s failed: %s", device, res.stderr.strip())
            return None
        return parse_id_ns_size(res.stdout)

    def flush(self, device: str) -> None:
        self.executor.run(["blockdev", "--flushbufs", device], timeout=self.command_timeout)


# ---------------------------------------------------------------------------------------------
# output parsing
# ---------------------------------------------------------------------------------------------

def parse_id_ns_size(text: str) -> Optional[int]:
    """Bytes = NSZE x the LBA data size of the format in use (FLBAS bits 0-3, plus 5-6 for >16)."""
    try:
        data = json.loads(text)
        nsze = int(data["nsze"])
        flbas = int(data.get("flbas", 0))
        idx = (flbas & 0xF) | ((flbas >> 1) & 0x30)
        ds = int(data["lbafs"][idx]["ds"])
    except (ValueError, KeyError, IndexError, TypeError, OverflowError):  # OverflowError: JSON's Infinity
        return None
    if ds < 9:  # LBADS below 9 (512 bytes) means the format is not supported
        return None
    if nsze < 0 or ds > 32:  # not what a controller reports (and a huge shift would not end)
        return None
    return nsze << ds


def parse_list_subsys(text: str) -> List[Dict[str, object]]:
    """``nvme list-subsys -o json`` (nvme-cli 2.x) → [{"name", "nqn", "paths": [{"name", "transport",
    "address", "state"}]}]; the 1.x shape (a dict with "Subsystems") is accepted too."""
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return []
    hosts = data if isinstance(data, list) else [data]
    out: List[Dict[str, object]] = []
    for h in hosts:
        subsystems = h.get("Subsystems") if isinstance(h, dict) else None
        for s in subsystems if isinstance(subsystems, list) else []:
            if not isinstance(s, dict):
                continue  # malformed entries are skipped, never half-read
            paths = s.get("Paths")
            paths = [{"name": p.get("Name"), "transport": p.get("Transport"), "address": p.get("Address"),
                      "state": p.get("State")} for p in (paths if isinstance(paths, list) else [])
                     if isinstance(p, dict)]
            out.append({"name": s.get("Name"), "nqn": s.get("NQN"), "paths": paths})
    return out


_FABRICS_VALUE_RE = re.compile(r"[^,\s\x00]{1,512}")  # "=" is fine: DHHC-1 keys end in base64 padding
_FABRICS_UNREACHABLE = {errno.ECONNREFUSED: "connection refused", errno.EHOSTUNREACH: "no route to host",
                        errno.ENETUNREACH: "network is unreachable", errno.ETIMEDOUT: "connection timed out",
                        errno.EHOSTDOWN: "host is down", errno.EADDRNOTAVAIL: "cannot assign requested address"}


def classify_fabrics_error(e: OSError, what: str, hostnqn: Optional[str], *,
                           authenticated: bool = False) -> Optional[Exception]:
    """The typed error for a failed write to /dev/nvme-fabrics, or None when it means "already connected"
    (the kernel's errno: EALREADY for a duplicate, EIO when the target's connect command failed, which
    is how both 6.1 and 6.12 report a host not allowed; EKEYREJECTED/EKEYEXPIRED/EACCES from the 6.x
    DH-HMAC-CHAP exchange)."""
    code = e.errno
    if code == errno.EALREADY:
        return None
    if code == errno.ENOENT:
        return ConnectionFailed(what, "the nvme-fabrics kernel module is not loaded (no /dev/nvme-fabrics)")
    if code in (errno.EKEYREJECTED, errno.EKEYEXPIRED, errno.ENOKEY) or (authenticated and code in (
            errno.EIO, errno.EACCES, errno.EPERM, errno.EPROTO)):
        return AuthenticationFailed(what, "the target rejected DH-HMAC-CHAP authentication (wrong or missing "
                                          "host key, or the controller's key did not verify)")
    if code == errno.EIO:
        who = f"host NQN {hostnqn}" if hostnqn else "this host's NQN"
        return AuthenticationFailed(
            what, f"the target refused the connection: {who} is not among the subsystem's allowed hosts "
                  "(or the subsystem does not exist at this portal, or it requires authentication)")
    if code in _FABRICS_UNREACHABLE:
        return ConnectionFailed(what, f"portal unreachable ({_FABRICS_UNREACHABLE[code]})")
    if code == errno.EINVAL:
        return ConnectionFailed(what, "the kernel refused the connect options (EINVAL)")
    return ConnectionFailed(what, f"connect failed: {os.strerror(code or 0)}")


__all__ = ["Controller", "Namespace", "NvmeHost", "NvmePortalSpec", "classify_fabrics_error", "normalize_nguid",
           "normalize_uuid", "parse_address", "parse_id_ns_size", "parse_list_subsys", "resolve_addresses"]
