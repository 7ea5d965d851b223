"""A fake NVMe-oF kernel on a plain directory tree: nvmet configfs, host sysfs, /dev/nvme-fabrics.

:class:`FakeNvmetConfigFS` behaves like the kernel's nvmet configfs on ordinary directories
(``mkdir`` creates the attribute files and default groups, ``rmdir`` refuses an item that still has
children or links, ``enable`` needs an openable ``device_path``). :class:`FakeNvmeKernel` adds the
host side: it answers writes to ``/dev/nvme-fabrics`` and ``delete_controller`` (through the tree's
writer), and ``nvme ns-rescan/id-ns`` through a :class:`~blocklink.testing.fakes.FakeExecutor`, by reading that configfs (ports, allowed hosts,
enabled namespaces) and building ``/sys/class/nvme``, ``/sys/class/nvme-subsystem``, ``/sys/block``
and ``/dev`` entries the way Linux 6.1 names them, with or without native multipath. As in Linux, a
subsystem outlives its last controller while a process holds one of its namespace devices open
(:meth:`FakeNvmeKernel.open_by` / :meth:`~FakeNvmeKernel.close_by`). Refusals are the errnos Linux's
/dev/nvme-fabrics returned in the real-kernel guest. Like a target that sends no
namespace-change notices, the fake host sees new or resized namespaces only after a rescan.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import threading
import uuid as uuid_lib
from typing import Any, Dict, List, Optional, Tuple

from blocklink.hostpaths import HostPaths
from blocklink.masking import reveal
from blocklink.privileged import DirectWriter
from blocklink.target.nvmet_config import ConfigFS
from blocklink.testing.fakes import FakeExecutor

_SUBSYS_ATTRS = {"attr_allow_any_host": "0", "attr_cntlid_max": "65519", "attr_cntlid_min": "1",
                 "attr_model": "Linux", "attr_pi_enable": "0", "attr_qid_max": "128", "attr_version": "1.3"}
_NS_ATTRS = {"ana_grpid": "1", "buffered_io": "0", "device_nguid": "00000000-0000-0000-0000-000000000000",
             "device_path": "(null)", "enable": "0", "revalidate_size": ""}
_HOST_AUTH_ATTRS = {"dhchap_key": "", "dhchap_ctrl_key": "", "dhchap_hash": "hmac(sha256)",
                    "dhchap_dhgroup": "null"}
_PORT_ATTRS = {"addr_adrfam": "", "addr_traddr": "", "addr_treq": "not specified", "addr_trsvcid": "",
               "addr_trtype": "", "param_inline_data_size": "-1", "param_pi_enable": "0"}


def _w(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text + ("\n" if text and not text.endswith("\n") else ""))


def _r(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


class FakeNvmetConfigFS(ConfigFS):
    """nvmet configfs semantics on a plain directory (``<root>/sys/kernel/config/nvmet``)."""

    def __init__(self, paths: HostPaths, auth: bool = False) -> None:
        super().__init__(paths)
        self.auth = auth
        self.root = paths.sys("kernel", "config", "nvmet")
        for d in ("subsystems", "ports", "hosts"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        self.sizes: Dict[str, int] = {}  # namespace dir -> size the target serves (set on enable/revalidate)
        self.writes: List[Tuple[str, str]] = []

    def _rel(self, path: str) -> List[str]:
        rel = os.path.relpath(path, self.root)
        if rel.startswith(".."):
            raise PermissionError(errno.EPERM, "outside nvmet configfs", path)
        return rel.split(os.sep)

    def mkdir(self, path: str) -> None:
        parts = self._rel(path)
        if len(parts) == 2 and parts[0] == "subsystems":
            os.mkdir(path)
            for k, v in _SUBSYS_ATTRS.items():
                _w(os.path.join(path, k), v)
            _w(os.path.join(path, "attr_serial"), uuid_lib.uuid4().hex[:20])
            os.mkdir(os.path.join(path, "namespaces"))
            os.mkdir(os.path.join(path, "allowed_hosts"))
        elif len(parts) == 4 and parts[0] == "subsystems" and parts[2] == "namespaces":
            if not parts[3].isdigit() or not 0 < int(parts[3]) < 0xFFFFFFFF:
                raise OSError(errno.EINVAL, "invalid namespace id", path)
            os.mkdir(path)
            for k, v in _NS_ATTRS.items():
                _w(os.path.join(path, k), v)
            _w(os.path.join(path, "device_uuid"), str(uuid_lib.uuid4()))
        elif len(parts) == 2 and parts[0] == "ports":
            if not parts[1].isdigit():
                raise OSError(errno.EINVAL, "invalid port id", path)
            os.mkdir(path)
            for k, v in _PORT_ATTRS.items():
                _w(os.path.join(path, k), v)
            for d in ("subsystems", "referrals", "ana_groups"):
                os.mkdir(os.path.join(path, d))
        elif len(parts) == 2 and parts[0] == "hosts":
            os.mkdir(path)
            if self.auth:  # NVME_TARGET_AUTH (Linux 6.0+): per-host DH-HMAC-CHAP attributes
                for k, v in _HOST_AUTH_ATTRS.items():
                    _w(os.path.join(path, k), v)
                    os.chmod(os.path.join(path, k), 0o644)  # CONFIGFS_ATTR: anyone may read
        else:
            raise PermissionError(errno.EPERM, "configfs does not allow mkdir here", path)

    def rmdir(self, path: str) -> None:
        parts = self._rel(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "no such item", path)
        groups = {"subsystems": ("namespaces", "allowed_hosts"), "ports": ("subsystems", "referrals")}
        for g in groups.get(parts[0], ()) if len(parts) == 2 else ():
            if os.listdir(os.path.join(path, g)):
                raise OSError(errno.ENOTEMPTY, f"{g} is not empty", path)
        if parts[0] in ("subsystems", "hosts") and len(parts) == 2 and self._linked_to(path):
            raise OSError(errno.EBUSY, "item is the target of a link", path)
        self.sizes.pop(path, None)
        shutil.rmtree(path)

    def _linked_to(self, path: str) -> bool:
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if os.path.islink(p) and os.path.realpath(p) == os.path.realpath(path):
                    return True
        return False

    def symlink(self, target: str, link: str) -> None:
        lp, tp = self._rel(link), self._rel(target)
        ok = ((len(lp) == 4 and lp[0] == "subsystems" and lp[2] == "allowed_hosts" and tp[:1] == ["hosts"])
              or (len(lp) == 4 and lp[0] == "ports" and lp[2] == "subsystems" and tp[:1] == ["subsystems"]))
        if not ok or lp[-1] != tp[-1] or not os.path.isdir(target):
            raise OSError(errno.EINVAL, "configfs refuses this link", link)
        if os.path.lexists(link):
            raise FileExistsError(errno.EEXIST, "link exists", link)
        if lp[0] == "ports" and not _r(os.path.join(self.root, "ports", lp[1], "addr_trtype")):
            raise OSError(errno.EINVAL, "port has no transport", link)
        os.symlink(target, link)

    def unlink(self, link: str) -> None:
        self._rel(link)
        if not os.path.islink(link):
            raise FileNotFoundError(errno.ENOENT, "no such link", link)
        os.unlink(link)

    def write(self, path: str, data: str) -> None:
        parts = self._rel(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "no such attribute", path)
        value = data.strip()
        self.writes.append((path, value))
        d = os.path.dirname(path)
        if len(parts) == 5 and parts[2] == "namespaces":
            enabled = _r(os.path.join(d, "enable")) == "1"
            name = parts[4]
            if name in ("device_path", "device_uuid", "device_nguid", "buffered_io") and enabled:
                raise OSError(errno.EBUSY, "namespace is enabled", path)
            if name == "device_uuid":
                uuid_lib.UUID(value)  # the kernel refuses what is not a UUID (EINVAL)
            if name == "enable" and value == "1" and not enabled:
                dev = _r(os.path.join(d, "device_path"))
                if dev in ("", "(null)") or not os.path.exists(dev):
                    raise OSError(errno.ENOENT, "cannot open device_path", path)
                self.sizes[d] = _size_of(dev)
            if name == "enable" and value == "0":
                self.sizes.pop(d, None)
            if name == "revalidate_size":
                if not enabled:
                    raise OSError(errno.EINVAL, "namespace is not enabled", path)
                self.sizes[d] = _size_of(_r(os.path.join(d, "device_path")))
                return
        _w(path, value)

    def read(self, path: str) -> Optional[str]:
        return self.paths.read(path)

    # what a host may see -------------------------------------------------------------------
    def auth_refusal(self, hostnqn: str, secret: Optional[str], ctrl_secret: Optional[str]) -> Optional[int]:
        """None if DH-HMAC-CHAP passes for ``hostnqn`` (or its host entry needs none), else the errno the
        6.12 host kernel returns: the host's secret must equal the host's ``dhchap_key``; a controller
        secret asked for must equal ``dhchap_ctrl_key`` (bidirectional)."""
        d = os.path.join(self.root, "hosts", hostnqn)
        key, ckey = _r(os.path.join(d, "dhchap_key")), _r(os.path.join(d, "dhchap_ctrl_key"))
        if not key:
            return None
        if secret is None or secret != key:
            return errno.EKEYREJECTED
        if ctrl_secret is not None and ctrl_secret != ckey:
            return errno.EKEYREJECTED
        return None

    def served(self, traddr: str, trsvcid: str, trtype: str, nqn: str, hostnqn: str) -> Optional[int]:
        """None if the connect is admitted, else the errno of the kernel's refusal: ECONNREFUSED when no
        port serves the address, EIO when the target's connect command fails (no such subsystem at the
        port, host not allowed)."""
        port = None
        for pid in os.listdir(os.path.join(self.root, "ports")):
            d = os.path.join(self.root, "ports", pid)
            if (_r(os.path.join(d, "addr_traddr")) == traddr and _r(os.path.join(d, "addr_trsvcid")) == trsvcid
                    and _r(os.path.join(d, "addr_trtype")) == trtype and os.listdir(os.path.join(d, "subsystems"))):
                port = d
        if port is None:
            return errno.ECONNREFUSED
        if nqn not in os.listdir(os.path.join(port, "subsystems")):
            return errno.EIO
        s = os.path.join(self.root, "subsystems", nqn)
        if _r(os.path.join(s, "attr_allow_any_host")) != "1" and hostnqn not in os.listdir(
                os.path.join(s, "allowed_hosts")):
            return errno.EIO
        return None

    def enabled_namespaces(self, nqn: str) -> Dict[int, Tuple[str, str, int]]:
        """nsid -> (uuid, nguid, size) of the subsystem's enabled namespaces."""
        out = {}
        base = os.path.join(self.root, "subsystems", nqn, "namespaces")
        for n in os.listdir(base) if os.path.isdir(base) else []:
            d = os.path.join(base, n)
            if _r(os.path.join(d, "enable")) == "1":
                out[int(n)] = (_r(os.path.join(d, "device_uuid")), _r(os.path.join(d, "device_nguid")),
                               self.sizes.get(d, 0))
        return out


def _size_of(path: str) -> int:
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


class FakeNvmeKernel:
    """Host sysfs, /dev/nvme-fabrics and nvme-cli answers for a :class:`FakeNvmetConfigFS` under ``root``."""

    def __init__(self, root: str, *, multipath: bool = True, fabrics_loaded: bool = True,
                 hostnqn: str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000b1",
                 hostid: str = "1e62d188-1173-46c2-884d-1bd8399603fb", auth: bool = True) -> None:
        self.root = root
        self.auth = auth  # 6.12-like (DH-HMAC-CHAP on both sides); False: like Debian's 6.1
        self.paths = dataclasses.replace(HostPaths.under(root), writer=_KernelWriter(self))
        self.configfs = FakeNvmetConfigFS(self.paths, auth=auth)
        self.fabrics_writes: List[Dict[str, str]] = []  # each connect's options, secrets replaced by "***"
        self.deleted: List[str] = []  # controllers deleted through sysfs delete_controller
        self.multipath = multipath
        for d in (("sys", "class", "nvme"), ("sys", "class", "nvme-subsystem"), ("sys", "block"), ("dev",),
                  ("etc", "nvme"), ("sys", "module", "nvme_core", "parameters"), ("proc", "self")):
            os.makedirs(os.path.join(root, *d), exist_ok=True)
        _w(self.paths.sys("module", "nvme_core", "parameters", "multipath"), "Y" if multipath else "N")
        if auth:  # nvme-core of a kernel with NVME_HOST_AUTH pulls in the nvme_auth module
            os.makedirs(self.paths.sys("module", "nvme_auth"), exist_ok=True)
        _w(self.paths.etcpath("nvme", "hostnqn"), hostnqn)
        _w(self.paths.etcpath("nvme", "hostid"), hostid)
        _w(self.paths.procpath("self", "mountinfo"), "")
        if fabrics_loaded:
            _w(self.paths.devpath("nvme-fabrics"), "")
        self.hostnqn = hostnqn
        self.hostid = hostid
        self.flushed: List[str] = []
        self.heads: Dict[str, str] = {}  # namespace device -> its subsystem (the kernel's references)
        self._minor = 0
        # The kernel tears controllers down under its subsystem lock; deferred deletions in tests run on
        # timer threads, so two may reach the last-reference check for one subsystem at once.
        self._teardown = threading.RLock()

    # ------------------------------------------------------------------ executor wiring
    def install(self, ex: Optional[FakeExecutor] = None) -> FakeExecutor:
        ex = ex or FakeExecutor()
        ex.on(("nvme", "ns-rescan"), lambda argv, _in: self._rescan_cmd(argv))
        ex.on(("nvme", "id-ns"), lambda argv, _in: self._id_ns(argv))
        ex.on(("blockdev", "--flushbufs"), lambda argv, _in: self._flush(argv))
        ex.on(("modprobe",), lambda argv, _in: self._modprobe(argv))
        return ex

    def _modprobe(self, argv: Tuple[str, ...]) -> str:
        if any(a.startswith("nvme-") for a in argv[1:]):
            _w(self.paths.devpath("nvme-fabrics"), "")
        return ""

    def _flush(self, argv: Tuple[str, ...]) -> Tuple[int, str, str]:
        dev = argv[-1]
        if not os.path.exists(self.paths.from_host(dev)):
            return 1, "", f"blockdev: cannot open {dev}: No such file or directory\n"
        self.flushed.append(dev)
        return 0, "", ""

    # ------------------------------------------------------------------ the fabrics interface
    def fabrics(self, options: str) -> str:
        """What Linux's /dev/nvme-fabrics does with one write (``options``) or a bare read (empty)."""
        if not os.path.exists(self.paths.devpath("nvme-fabrics")):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/dev/nvme-fabrics")
        if not options:
            return FABRICS_TOKENS_612 if self.auth else FABRICS_TOKENS_61  # 6.1 lists dhchap_* too, unused
        o = {kv.partition("=")[0]: kv.partition("=")[2] for kv in options.split(",")}
        known = {t.split("=", 1)[0] for t in (FABRICS_TOKENS_612 if self.auth else FABRICS_TOKENS_61).split(",")}
        if set(o) - known or not {"nqn", "transport", "traddr"} <= set(o):
            raise OSError(errno.EINVAL, "Invalid argument")
        self.fabrics_writes.append({k: ("***" if k.startswith("dhchap") else v) for k, v in o.items()})
        nqn, traddr, trsvcid, trtype = o["nqn"], o["traddr"], o.get("trsvcid", "4420"), o["transport"]
        hostnqn = o.get("hostnqn", self.hostnqn)
        err = self.configfs.served(traddr, trsvcid, trtype, nqn, hostnqn)
        if err:
            raise OSError(err, os.strerror(err))
        refused = self.configfs.auth_refusal(hostnqn, o.get("dhchap_secret"), o.get("dhchap_ctrl_secret"))
        if refused:
            raise OSError(refused, os.strerror(refused))
        for c in self.controllers():
            a = _r(self.ctrl_path(c, "address"))
            if (_r(self.ctrl_path(c, "subsysnqn")) == nqn and a.startswith(f"traddr={traddr},trsvcid={trsvcid},")
                    and _r(self.ctrl_path(c, "hostnqn")) == hostnqn):
                raise OSError(errno.EALREADY, "Operation already in progress")
        ctrl = self.add_controller(nqn, traddr, trsvcid, trtype, hostnqn)
        if self.auth:  # like 6.12: the secrets in attributes anyone may read (mode 0644)
            for attr in ("dhchap_secret", "dhchap_ctrl_secret"):
                _w(self.ctrl_path(ctrl, attr), o.get(attr) or "none")
                os.chmod(self.ctrl_path(ctrl, attr), 0o644)
        return f"instance={ctrl[4:]},cntlid={_r(self.ctrl_path(ctrl, 'cntlid'))}"

    def sysfs_write(self, path: str, data: str) -> bool:
        """A host sysfs write the fake kernel acts on (``delete_controller``); False for any other."""
        rel = os.path.relpath(path, self.paths.sys("class", "nvme")).split(os.sep)
        if len(rel) != 2 or rel[1] != "delete_controller" or rel[0].startswith(".."):
            return False
        if rel[0] not in self.controllers():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        self.deleted.append(rel[0])
        self.remove_controller(rel[0])
        return True

    def controllers(self) -> List[str]:
        return sorted(os.listdir(self.paths.sys("class", "nvme")))

    def ctrl_path(self, ctrl: str, *parts: str) -> str:
        return self.paths.sys("class", "nvme", ctrl, *parts)

    def add_controller(self, nqn: str, traddr: str, trsvcid: str, trtype: str, hostnqn: str,
                       state: str = "live") -> str:
        used = {int(c[4:]) for c in self.controllers()}
        inst = next(i for i in range(1000) if i not in used)
        ctrl = f"nvme{inst}"
        d = self.ctrl_path(ctrl)
        os.makedirs(d)
        attrs = {"subsysnqn": nqn, "transport": trtype, "state": state, "hostnqn": hostnqn, "hostid": self.hostid,
                 "address": f"traddr={traddr},trsvcid={trsvcid},src_addr=127.0.0.1", "cntlid": str(inst + 1),
                 "model": "Linux", "dev": f"245:{inst}"}
        for k, v in attrs.items():
            _w(os.path.join(d, k), v)
        _w(self.paths.devpath(ctrl), "")
        sub = self._subsystem(nqn)
        os.symlink(d, os.path.join(self.paths.sys("class", "nvme-subsystem", sub), ctrl))
        self.scan(ctrl)
        return ctrl

    def _subsystem(self, nqn: str) -> str:
        base = self.paths.sys("class", "nvme-subsystem")
        for s in os.listdir(base):
            if _r(os.path.join(base, s, "subsysnqn")) == nqn:
                return s
        used = {int(s[len("nvme-subsys"):]) for s in os.listdir(base)}
        name = f"nvme-subsys{next(i for i in range(1000) if i not in used)}"
        os.makedirs(os.path.join(base, name))
        _w(os.path.join(base, name, "subsysnqn"), nqn)
        _w(os.path.join(base, name, "iopolicy"), "numa")
        return name

    def remove_controller(self, ctrl: str) -> None:
        with self._teardown:
            self._remove_controller(ctrl)

    def _remove_controller(self, ctrl: str) -> None:
        nqn = _r(self.ctrl_path(ctrl, "subsysnqn"))
        for entry in os.listdir(self.ctrl_path(ctrl)):
            if entry.startswith("nvme"):
                self._drop_path(ctrl, entry)
        shutil.rmtree(self.ctrl_path(ctrl))
        os.unlink(self.paths.devpath(ctrl))
        sub = self._subsystem(nqn)
        sdir = self.paths.sys("class", "nvme-subsystem", sub)
        if os.path.islink(os.path.join(sdir, ctrl)):
            os.unlink(os.path.join(sdir, ctrl))
        self._release(sub)

    def _release(self, sub: str) -> None:
        """Linux frees a subsystem at its last reference put: no controller left, and no head device
        left either (one still open by a process, or waiting out ``delayed_removal_secs``)."""
        sdir = self.paths.sys("class", "nvme-subsystem", sub)
        if not os.path.isdir(sdir):
            return
        if any(e.startswith("nvme") and os.path.islink(os.path.join(sdir, e)) for e in os.listdir(sdir)):
            return
        heads = [h for h, s in self.heads.items() if s == sub]
        if any(os.path.isdir(self.paths.sys("block", h)) for h in heads) or self.holders(heads):
            return
        for h in heads:
            del self.heads[h]
        shutil.rmtree(sdir)

    # ------------------------------------------------------------------ namespaces
    def _rescan_cmd(self, argv: Tuple[str, ...]) -> Tuple[int, str, str]:
        ctrl = os.path.basename(argv[-1])
        if ctrl not in self.controllers():
            return 1, "", f"Failed to open {argv[-1]}: No such file or directory\n"
        self.scan(ctrl)
        return 0, "", ""

    def _ns_entries(self, ctrl: str) -> Dict[int, str]:
        """nsid -> entry name under the controller."""
        out = {}
        for e in os.listdir(self.ctrl_path(ctrl)):
            if e.startswith("nvme") and os.path.isdir(self.ctrl_path(ctrl, e)):
                out[int(_r(self.ctrl_path(ctrl, e, "nsid")))] = e
        return out

    def scan(self, ctrl: str) -> None:
        """What the host kernel's namespace scan does: add new, drop gone, resize changed namespaces."""
        nqn = _r(self.ctrl_path(ctrl, "subsysnqn"))
        sub = self._subsystem(nqn)
        want = self.configfs.enabled_namespaces(nqn)
        have = self._ns_entries(ctrl)
        for nsid, entry in have.items():
            if nsid not in want:
                self._drop_path(ctrl, entry)
        for nsid, (uuid, nguid, size) in sorted(want.items()):
            if nsid in have:
                self._set_size(self._head_of(have[nsid]), have[nsid], ctrl, size)
                continue
            head = self._head_name(sub, nsid, ctrl)
            entry = head if not self.multipath else f"nvme{sub[len('nvme-subsys'):]}c{ctrl[4:]}n{head.split('n')[-1]}"
            d = self.ctrl_path(ctrl, entry)
            os.makedirs(d)
            self._ns_attrs(d, nsid, uuid, nguid, size)
            bdir = self.paths.sys("block", head)
            if not os.path.isdir(bdir):
                os.makedirs(os.path.join(bdir, "holders"))
                self._ns_attrs(bdir, nsid, uuid, nguid, size)
                self._minor += 1
                _w(os.path.join(bdir, "dev"), f"259:{self._minor}")
                if self.multipath:
                    _w(os.path.join(bdir, "delayed_removal_secs"), "0")  # Linux 6.16+ (0: the default)
                _w(self.paths.devpath(head), "")
                self.heads[head] = sub

    @staticmethod
    def _head_of(entry: str) -> str:
        if "c" in entry[4:]:
            pre, rest = entry.split("c", 1)
            return pre + rest[rest.index("n"):]
        return entry

    def _head_name(self, sub: str, nsid: int, ctrl: str) -> str:
        """Linux names a namespace nvme<subsys or ctrl instance>n<head instance>, not by nsid."""
        prefix = f"nvme{sub[len('nvme-subsys'):]}" if self.multipath else ctrl
        for c in self.controllers():
            for n, e in self._ns_entries(c).items():
                if n == nsid and _r(self.ctrl_path(c, "subsysnqn")) == _r(self.ctrl_path(ctrl, "subsysnqn")):
                    head = self._head_of(e)
                    if head.startswith(prefix + "n"):
                        return head
        used = {b for b in os.listdir(self.paths.sys("block")) if b.startswith(prefix + "n")}
        i = next(i for i in range(1, 10000) if f"{prefix}n{i}" not in used)
        return f"{prefix}n{i}"

    @staticmethod
    def _ns_attrs(d: str, nsid: int, uuid: str, nguid: str, size: int) -> None:
        _w(os.path.join(d, "nsid"), str(nsid))
        _w(os.path.join(d, "uuid"), uuid)
        if nguid and nguid.replace("-", "").strip("0"):
            _w(os.path.join(d, "nguid"), nguid)
            wwid = f"eui.{nguid.replace('-', '')}"
        else:
            wwid = f"uuid.{uuid}"
        _w(os.path.join(d, "wwid"), wwid)
        _w(os.path.join(d, "size"), str(size // 512))

    def _set_size(self, head: str, entry: str, ctrl: str, size: int) -> None:
        for d in (self.ctrl_path(ctrl, entry), self.paths.sys("block", head)):
            if os.path.isdir(d):
                _w(os.path.join(d, "size"), str(size // 512))

    def _drop_path(self, ctrl: str, entry: str) -> None:
        shutil.rmtree(self.ctrl_path(ctrl, entry))
        head = self._head_of(entry)
        still = any(self._head_of(e) == head for c in self.controllers() for e in self._ns_entries(c).values())
        if not still:
            if int(_r(self.paths.sys("block", head, "delayed_removal_secs")) or 0):
                return  # the kernel keeps the head (queueing I/O) for that long; this fake: for ever
            shutil.rmtree(self.paths.sys("block", head), ignore_errors=True)
            if os.path.exists(self.paths.devpath(head)):
                os.unlink(self.paths.devpath(head))
            for link in self.holders([head]):  # what /proc/<pid>/fd shows for a deleted node
                os.unlink(link)
                os.symlink(f"/dev/{head} (deleted)", link)

    def _id_ns(self, argv: Tuple[str, ...]) -> Tuple[int, str, str]:
        name = os.path.basename(argv[-1])
        for c in self.controllers():
            nqn = _r(self.ctrl_path(c, "subsysnqn"))
            for nsid, e in self._ns_entries(c).items():
                if self._head_of(e) == name:
                    size = self.configfs.enabled_namespaces(nqn).get(nsid, ("", "", 0))[2]
                    return 0, id_ns_json(size), ""
        return 1, "", f"Failed to open {argv[-1]}: No such file or directory\n"

    # ------------------------------------------------------------------ test helpers
    def open_by(self, pid: int, dev: str, comm: str = "qemu-kvm") -> None:
        """Pretend process ``pid`` holds ``dev`` open (a /proc/<pid>/fd link)."""
        fd = self.paths.procpath(str(pid), "fd")
        os.makedirs(fd, exist_ok=True)
        _w(self.paths.procpath(str(pid), "comm"), comm)
        os.symlink(dev, os.path.join(fd, str(3 + len(os.listdir(fd)))))

    def close_by(self, pid: int) -> None:
        """Process ``pid`` closes everything (exits): subsystems it alone kept alive are freed."""
        shutil.rmtree(self.paths.procpath(str(pid)), ignore_errors=True)
        with self._teardown:
            for sub in set(self.heads.values()):
                self._release(sub)

    def holders(self, heads: List[str]) -> List[str]:
        """The /proc/<pid>/fd links holding any of ``heads`` open (also after their node was deleted)."""
        devs = {f"/dev/{h}" for h in heads} | {f"/dev/{h} (deleted)" for h in heads}
        out = []
        for pid in os.listdir(self.paths.proc):
            fd_dir = self.paths.procpath(pid, "fd")
            for fd in os.listdir(fd_dir) if pid.isdigit() and os.path.isdir(fd_dir) else []:
                if os.readlink(os.path.join(fd_dir, fd)) in devs:
                    out.append(os.path.join(fd_dir, fd))
        return out

    def subsystems(self) -> List[str]:
        return sorted(os.listdir(self.paths.sys("class", "nvme-subsystem")))

    def devices(self) -> List[str]:
        return sorted(d for d in os.listdir(self.paths.dev) if d.startswith("nvme") and "n" in d[4:])


class _KernelWriter(DirectWriter):
    """The fake tree's writer: the caller's own rights, with the fake kernel's answers for
    /dev/nvme-fabrics and the controllers' ``delete_controller``."""

    def __init__(self, kernel: FakeNvmeKernel) -> None:
        self.kernel = kernel

    def write(self, path: str, data: str) -> None:
        if not self.kernel.sysfs_write(path, data):
            super().write(path, data)

    def fabrics(self, path: str, options: Any) -> str:
        return self.kernel.fabrics(reveal(options) or "")


# what reading /dev/nvme-fabrics lists (Linux 6.1 and 6.12 as Debian builds them)
FABRICS_TOKENS_61 = ("instance=-1,cntlid=-1,transport=%s,traddr=%s,trsvcid=%s,nqn=%s,queue_size=%d,"
                     "nr_io_queues=%d,reconnect_delay=%d,ctrl_loss_tmo=%d,keep_alive_tmo=%d,hostnqn=%s,"
                     "host_traddr=%s,host_iface=%s,hostid=%s,duplicate_connect,disable_sqflow,hdr_digest,"
                     "data_digest,nr_write_queues=%d,nr_poll_queues=%d,tos=%d,fast_io_fail_tmo=%d,discovery,"
                     "dhchap_secret=%s,dhchap_ctrl_secret=%s")
FABRICS_TOKENS_612 = ("instance=-1,cntlid=-1,transport=%s,traddr=%s,trsvcid=%s,nqn=%s,queue_size=%d,"
                      "nr_io_queues=%d,reconnect_delay=%d,ctrl_loss_tmo=%d,keep_alive_tmo=%d,hostnqn=%s,"
                      "host_traddr=%s,host_iface=%s,hostid=%s,duplicate_connect,disable_sqflow,hdr_digest,"
                      "data_digest,nr_write_queues=%d,nr_poll_queues=%d,tos=%d,keyring=%d,tls_key=%d,"
                      "fast_io_fail_tmo=%d,discovery,dhchap_secret=%s,dhchap_ctrl_secret=%s,tls")


def id_ns_json(size: int, block_size: int = 4096) -> str:
    """``nvme id-ns -o json`` as nvme-cli 2.3 prints it for an nvmet namespace (fields trimmed)."""
    ds = block_size.bit_length() - 1
    nsze = size // block_size
    return json.dumps({"nsze": nsze, "ncap": nsze, "nuse": nsze, "nsfeat": 0, "nlbaf": 0, "flbas": 0, "mc": 0,
                       "dpc": 0, "dps": 0, "nmic": 1, "anagrpid": 1, "eui64": "0000000000000000",
                       "nguid": "00000000000000000000000000000000",
                       "lbafs": [{"ms": 0, "ds": ds, "rp": 0}]}, indent=2)


__all__ = ["FABRICS_TOKENS_61", "FABRICS_TOKENS_612", "FakeNvmeKernel", "FakeNvmetConfigFS", "id_ns_json"]
