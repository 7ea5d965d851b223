"""The kernel NVMe target's configfs tree (``/sys/kernel/config/nvmet``), object by object.

configfs mirrors the target::

    subsystems/<nqn>/{attr_allow_any_host, namespaces/<nsid>/{device_path, device_uuid, buffered_io, enable},
                      allowed_hosts/<host nqn> -> hosts/<host nqn>}
    hosts/<host nqn>/{dhchap_key, dhchap_ctrl_key, dhchap_hash, dhchap_dhgroup}  (Linux 6.0+, NVME_TARGET_AUTH)
    ports/<id>/{addr_trtype, addr_adrfam, addr_traddr, addr_trsvcid, subsystems/<nqn> -> subsystems/<nqn>}

:class:`NvmetConfig` reads and changes it; changes go through :class:`ConfigFS`, which uses the host
tree's writer (:mod:`blocklink.privileged`: as root, confined to the nvmet tree). Policy
(which subsystem a volume gets, who may connect) is :mod:`blocklink.target.nvmet`'s.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from blocklink.dhchap import HostAuth
from blocklink.errors import AuthenticationUnsupported, InvalidConnectionInfo, TargetError
from blocklink.executor import Executor, default_executor
from blocklink.hostpaths import HostPaths
from blocklink.masking import get_logger, reveal
from blocklink.privileged import NVMET_ROOT

LOG = get_logger(__name__)

CONFIGFS_NVMET = NVMET_ROOT

__all__ = ["CONFIGFS_NVMET", "ConfigFS", "NamespaceState", "NvmetConfig", "PortState", "mount_fs_type", "same_ip"]


# ---------------------------------------------------------------------------------------------
# configfs operations
# ---------------------------------------------------------------------------------------------

class ConfigFS:
    """mkdir/rmdir/symlink/unlink/write on configfs through the host tree's writer (the privileged
    one on the real host: as root, confined to the nvmet tree; see :mod:`blocklink.privileged`)."""

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    def mkdir(self, path: str) -> None:
        self.paths.files(path).mkdir(path)

    def rmdir(self, path: str) -> None:
        self.paths.files(path).rmdir(path)

    def symlink(self, target: str, link: str) -> None:
        self.paths.files(link).symlink(target, link)

    def unlink(self, link: str) -> None:
        self.paths.files(link).unlink(link)

    def write(self, path: str, data: str) -> None:
        self.paths.write(path, data)

    def restrict(self, path: str) -> None:
        self.paths.restrict(path)

    def read(self, path: str) -> Optional[str]:
        return self.paths.read(path)


# ---------------------------------------------------------------------------------------------
# the configfs tree
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NamespaceState:
    nsid: int
    device_path: str
    device_uuid: str
    enabled: bool
    buffered_io: bool


@dataclass(frozen=True)
class PortState:
    port_id: int
    trtype: str
    traddr: str
    trsvcid: str
    subsystems: Tuple[str, ...]


class NvmetConfig:
    """The kernel target's configfs tree: subsystems, their namespaces and allowed hosts, hosts, ports."""

    def __init__(self, paths: HostPaths, fs: Optional[ConfigFS] = None,
                 executor: Optional[Executor] = None) -> None:
        self.paths = paths
        self.fs = fs or ConfigFS(paths)
        self.executor = executor
        self.root = paths.sys("kernel", "config", "nvmet")

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _fail(self, what: str, action: str, e: OSError) -> TargetError:
        return TargetError(what, f"{action} failed: {e.strerror or e}")

    # ------------------------------------------------------------------ readiness
    def ensure_ready(self, transport: str = "tcp") -> None:
        """Load nvmet (and the transport's target module) and mount configfs when needed."""
        if self.paths.exists(self.root):
            return
        ex = self.executor or default_executor()
        ex.run(["modprobe", "-a", "nvmet", f"nvmet-{transport}"])
        cfg = self.paths.sys("kernel", "config")
        mounts = [line.split() for line in (self.paths.read(self.paths.procpath("mounts"), "") or "").splitlines()]
        if not any(len(f) > 2 and f[1] == cfg and f[2] == "configfs" for f in mounts):
            ex.run(["mount", "-t", "configfs", "configfs", cfg])
        if not self.paths.exists(self.root):
            raise TargetError("nvmet", f"{self.root} is missing after loading nvmet")

    # ------------------------------------------------------------------ subsystems
    def subsystems(self) -> List[str]:
        return self.paths.listdir(self._p("subsystems"))

    def has_subsystem(self, nqn: str) -> bool:
        return self.paths.exists(self._p("subsystems", nqn))

    def create_subsystem(self, nqn: str, *, allow_any_host: bool = False, serial: Optional[str] = None) -> None:
        d = self._p("subsystems", nqn)
        try:
            self.fs.mkdir(d)
            self.fs.write(os.path.join(d, "attr_allow_any_host"), "1" if allow_any_host else "0")
            if serial:
                self.fs.write(os.path.join(d, "attr_serial"), serial)
        except OSError as e:
            if os.path.isdir(d) and e.errno != errno.EEXIST:
                self._quiet(self.fs.rmdir, d)
            raise self._fail(nqn, "creating the subsystem", e) from None

    def delete_subsystem(self, nqn: str) -> None:
        """Unlink it from every port, remove its namespaces and host links, then the subsystem."""
        if not self.has_subsystem(nqn):
            return
        for port in self.ports():
            if nqn in port.subsystems:
                self.unlink_port(port.port_id, nqn)
        for nsid in self.namespaces(nqn):
            self.remove_namespace(nqn, nsid)
        for host in self.allowed_hosts(nqn):
            self.deny_host(nqn, host)
        try:
            self.fs.rmdir(self._p("subsystems", nqn))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail(nqn, "removing the subsystem", e) from None

    # ------------------------------------------------------------------ namespaces
    def namespaces(self, nqn: str) -> Dict[int, NamespaceState]:
        out = {}
        base = self._p("subsystems", nqn, "namespaces")
        for name in self.paths.listdir(base):
            if not name.isdigit():
                continue
            d = os.path.join(base, name)
            path = self.fs.read(os.path.join(d, "device_path")) or ""
            out[int(name)] = NamespaceState(
                nsid=int(name), device_path="" if path == "(null)" else path,
                device_uuid=self.fs.read(os.path.join(d, "device_uuid")) or "",
                enabled=self.fs.read(os.path.join(d, "enable")) == "1",
                buffered_io=self.fs.read(os.path.join(d, "buffered_io")) == "1")
        return out

    def add_namespace(self, nqn: str, nsid: int, device_path: str, device_uuid: str, *,
                      buffered_io: bool = False) -> None:
        d = self._p("subsystems", nqn, "namespaces", str(nsid))
        try:
            self.fs.mkdir(d)
        except OSError as e:
            raise self._fail(f"{nqn} namespace {nsid}", "creating the namespace", e) from None
        step = "setting device_path"
        try:
            self.fs.write(os.path.join(d, "device_path"), device_path)
            step = "setting device_uuid"
            self.fs.write(os.path.join(d, "device_uuid"), device_uuid)
            if buffered_io:
                step = "setting buffered_io"
                self.fs.write(os.path.join(d, "buffered_io"), "1")
            step = f"enabling it on {device_path}"
            self.fs.write(os.path.join(d, "enable"), "1")
        except OSError as e:
            self._quiet(self.fs.rmdir, d)
            hint = " (a file on a file system without O_DIRECT needs buffered_io)" if "enabling" in step else ""
            raise TargetError(f"{nqn} namespace {nsid}", f"{step} failed: {e.strerror or e}{hint}") from None

    def remove_namespace(self, nqn: str, nsid: int) -> None:
        d = self._p("subsystems", nqn, "namespaces", str(nsid))
        if not self.paths.exists(d):
            return
        self._quiet(self.fs.write, os.path.join(d, "enable"), "0")
        try:
            self.fs.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail(f"{nqn} namespace {nsid}", "removing the namespace", e) from None

    def revalidate_size(self, nqn: str, nsid: int) -> None:
        """Make the target pick up a grown backing device/file (hosts get a namespace-change notice)."""
        try:
            self.fs.write(self._p("subsystems", nqn, "namespaces", str(nsid), "revalidate_size"), "1")
        except OSError as e:
            raise self._fail(f"{nqn} namespace {nsid}", "revalidating the size", e) from None

    # ------------------------------------------------------------------ hosts
    def allowed_hosts(self, nqn: str) -> List[str]:
        return self.paths.listdir(self._p("subsystems", nqn, "allowed_hosts"))

    def allow_host(self, nqn: str, hostnqn: str, auth: Optional[HostAuth] = None) -> None:
        """Link ``hostnqn`` into the subsystem's allowed hosts; with ``auth`` its host entry requires
        DH-HMAC-CHAP first (set before the link: no moment where the host gets in without it). The keys
        belong to the host entry, so they hold for every subsystem that host is allowed on."""
        link = self._p("subsystems", nqn, "allowed_hosts", hostnqn)
        if self.paths.exists(link) and auth is None:
            return
        hdir = self._p("hosts", hostnqn)
        made = False
        try:
            if not self.paths.exists(hdir):
                self.fs.mkdir(hdir)
                made = True
            if auth is not None:
                self._set_auth(hostnqn, auth)
            if not self.paths.exists(link):
                self.fs.symlink(hdir, link)
        except (OSError, AuthenticationUnsupported) as e:
            if made:
                self._quiet(self.fs.rmdir, hdir)
            if isinstance(e, AuthenticationUnsupported):
                raise
            raise self._fail(nqn, f"allowing host {hostnqn}", e) from None

    def _set_auth(self, hostnqn: str, auth: HostAuth) -> None:
        hdir = self._p("hosts", hostnqn)
        if not self.paths.exists(os.path.join(hdir, "dhchap_key")):
            # Debian's 6.1 nvmet is built without NVME_TARGET_AUTH: host entries have no such attributes
            raise AuthenticationUnsupported(hostnqn, "this target kernel lacks NVMe in-band authentication "
                                                     "(DH-HMAC-CHAP: Linux 6.0+ built with NVME_TARGET_AUTH)")
        self.fs.write(os.path.join(hdir, "dhchap_hash"), auth.hash)
        self.fs.write(os.path.join(hdir, "dhchap_dhgroup"), auth.dhgroup)
        # nvmet shows the keys in attributes of mode 0644 (CONFIGFS_ATTR): root-only before they hold one
        for attr, key in (("dhchap_key", auth.key), ("dhchap_ctrl_key", auth.ctrl_key)):
            if key is not None:
                self.fs.restrict(os.path.join(hdir, attr))
                self.fs.write(os.path.join(hdir, attr), reveal(key) or "")
        LOG.info("nvmet: host %s requires DH-HMAC-CHAP (%s, %s%s)", hostnqn, auth.hash, auth.dhgroup,
                 ", bidirectional" if auth.ctrl_key is not None else "")

    def deny_host(self, nqn: str, hostnqn: str) -> None:
        link = self._p("subsystems", nqn, "allowed_hosts", hostnqn)
        try:
            if self.paths.exists(link):
                self.fs.unlink(link)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail(nqn, f"removing host {hostnqn}", e) from None
        if not any(hostnqn in self.allowed_hosts(s) for s in self.subsystems()):
            hdir = self._p("hosts", hostnqn)
            if self.paths.exists(hdir):
                try:
                    self.fs.rmdir(hdir)
                except OSError as e:  # someone else's configuration may still use it
                    LOG.warning("nvmet: could not remove host entry %s: %s", hostnqn, e)

    def hosts(self) -> List[str]:
        return self.paths.listdir(self._p("hosts"))

    # ------------------------------------------------------------------ ports
    def ports(self) -> List[PortState]:
        out = []
        for name in self.paths.listdir(self._p("ports")):
            if not name.isdigit():
                continue
            d = self._p("ports", name)
            out.append(PortState(int(name), self.fs.read(os.path.join(d, "addr_trtype")) or "",
                                 self.fs.read(os.path.join(d, "addr_traddr")) or "",
                                 self.fs.read(os.path.join(d, "addr_trsvcid")) or "",
                                 tuple(self.paths.listdir(os.path.join(d, "subsystems")))))
        return out

    def find_port(self, trtype: str, traddr: str, trsvcid: int) -> Optional[PortState]:
        for p in self.ports():
            if p.trtype == trtype and p.trsvcid == str(trsvcid) and same_ip(p.traddr, traddr):
                return p
        return None

    def create_port(self, trtype: str, traddr: str, trsvcid: int) -> int:
        used = {p.port_id for p in self.ports()}
        port_id = next(i for i in range(1, 65535) if i not in used)
        d = self._p("ports", str(port_id))
        try:
            self.fs.mkdir(d)
            self.fs.write(os.path.join(d, "addr_trtype"), trtype)
            self.fs.write(os.path.join(d, "addr_adrfam"), adrfam(traddr, trtype))
            self.fs.write(os.path.join(d, "addr_traddr"), traddr)
            self.fs.write(os.path.join(d, "addr_trsvcid"), str(trsvcid))
        except OSError as e:
            if self.paths.exists(d):
                self._quiet(self.fs.rmdir, d)
            raise self._fail(f"port {traddr}:{trsvcid}", "creating the port", e) from None
        return port_id

    def link_port(self, port_id: int, nqn: str) -> None:
        """Expose the subsystem on the port (the kernel starts listening on the first link)."""
        link = self._p("ports", str(port_id), "subsystems", nqn)
        if self.paths.exists(link):
            return
        try:
            self.fs.symlink(self._p("subsystems", nqn), link)
        except OSError as e:
            raise self._fail(nqn, f"exposing it on port {port_id}", e) from None

    def unlink_port(self, port_id: int, nqn: str) -> None:
        link = self._p("ports", str(port_id), "subsystems", nqn)
        try:
            self.fs.unlink(link)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail(nqn, f"removing it from port {port_id}", e) from None

    def remove_port(self, port_id: int) -> None:
        try:
            self.fs.rmdir(self._p("ports", str(port_id)))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail(f"port {port_id}", "removing the port", e) from None

    @staticmethod
    def _quiet(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except OSError as e:
            LOG.warning("nvmet: cleanup step %s%r failed: %s", getattr(fn, "__name__", fn), args, e)


def same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def adrfam(traddr: str, trtype: str) -> str:
    if trtype == "fc":
        return "fc"
    if trtype == "loop":
        return ""
    try:
        return "ipv6" if ipaddress.ip_address(traddr).version == 6 else "ipv4"
    except ValueError:
        raise InvalidConnectionInfo("portals", f"{traddr!r} is not an IP address (nvmet listens on addresses)") \
            from None


def mount_fs_type(paths: HostPaths, path: str) -> Optional[str]:
    """The file system type of the mount holding ``path`` (from /proc/self/mountinfo), or None."""
    real = os.path.realpath(path)
    best, fstype = -1, None
    for line in (paths.read(paths.procpath("self", "mountinfo"), "") or "").splitlines():
        pre, sep, post = line.partition(" - ")
        f = pre.split()
        if not sep or len(f) < 5 or not post.split():
            continue
        mnt = _unescape(f[4])
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= best:  # the last of equal mount points is the one on top
            best, fstype = len(mnt), post.split()[0]
    return fstype


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
