"""A fake Linux host on a plain directory tree: SCSI hosts and disks, iSCSI sessions, dm-multipath
maps, FC HBAs, and the /dev links udev makes, laid out as Linux 6.1 lays them out.

Host code reads it through :attr:`FakeHostTree.paths` exactly as it reads the real /sys and /dev.
Writes to the kernel's action files behave like the kernel: ``scan`` (``"C T L"``) surfaces only
the LUNs the attached target reports at that address, ``delete`` removes a disk (and its place in a
multipath map), ``rescan`` re-reads a LUN's size. Device nodes are ordinary files.

Tree layout (``root`` stands for ``/``)::

    sys/devices/platform/hostH/sessionN/targetH:C:T/H:C:T:L/{state,wwid,vpd_pg83,delete,rescan,block/sdX}
    sys/devices/platform/hostH/rport-H:C-R/targetH:C:T/...        (FC)
    sys/devices/virtual/block/dm-N/{dm/uuid,dm/name,slaves/,size}
    sys/block/{sdX,dm-N} -> ../devices/...
    sys/class/{scsi_host,scsi_device,iscsi_session,iscsi_connection,iscsi_host,fc_host,fc_remote_ports}/...
    dev/{sdX,dm-N}, dev/mapper/NAME, dev/disk/by-path/..., dev/disk/by-id/{scsi-,wwn-0x,dm-uuid-mpath-}...

Extend it by subclassing (the FC helpers here are the base for a fake FC fabric).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from blocklink.hostpaths import HostPaths
from blocklink.initiator.host.scsi import Hctl

_HCTL_RE = re.compile(r"^\d+:\d+:\d+:\d+$")


@dataclass(frozen=True)
class FakeHostPaths(HostPaths):
    """HostPaths whose sysfs writes reach the fake kernel (:meth:`FakeHostTree.on_write`)."""

    tree: Any = field(default=None, compare=False, repr=False)

    def write(self, path: str, data: str) -> None:
        if self.tree is not None:
            self.tree.on_write(path, data)
        else:  # pragma: no cover - a bare FakeHostPaths behaves like HostPaths
            super().write(path, data)


@dataclass
class FakeLun:
    """A logical unit as a target reports it."""

    lun: int
    wwid: str  # scsi_id form, e.g. "36001405" + 24 hex digits
    size: int = 64 * 1024 * 1024
    vendor: str = "LIO-ORG"
    model: str = "FILEIO"


def naa_wwid(serial: int) -> str:
    """A deterministic NAA IEEE Registered Extended WWID (LIO-style) for test LUNs."""
    return "36001405" + f"{serial:025x}"


def vpd_pg83(wwid: str, port_name: str = "") -> bytes:
    """A Device Identification VPD page with the LU's NAA designator (and a target-port name)."""
    body = b""
    if wwid.startswith("3"):
        naa = bytes.fromhex(wwid[1:])
        body += bytes([0x01, 0x03, 0x00, len(naa)]) + naa
    elif wwid.startswith("2"):
        eui = bytes.fromhex(wwid[1:])
        body += bytes([0x01, 0x02, 0x00, len(eui)]) + eui
    else:
        text = wwid[1:].encode()
        body += bytes([0x02, 0x01, 0x00, len(text)]) + text
    if port_name:  # SCSI name string, target port association: ignored for the LU id
        name = port_name.encode() + b"\x00"
        name += b"\x00" * (-len(name) % 4)
        body += bytes([0x53, 0x98, 0x00, len(name)]) + name
    return bytes([0x00, 0x83]) + len(body).to_bytes(2, "big") + body


def _sysfs_wwid(wwid: str) -> str:
    return {"3": "naa.", "2": "eui.", "1": "t10."}.get(wwid[0], "") + wwid[1:]


def _disk_name(n: int) -> str:
    s = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        s = chr(ord("a") + r) + s
    return "sd" + s


class FakeHostTree:
    """The fake host. All methods are thread-safe (one lock), so concurrent attaches can run on it."""

    def __init__(self, root: str) -> None:
        self.root = root
        sysfs, dev, etc, proc, run = (os.path.join(root, d) for d in ("sys", "dev", "etc", "proc", "run"))
        self.paths = FakeHostPaths(sysfs, dev, etc, proc, run, tree=self)
        self.lock = threading.RLock()
        self.writes: List[Tuple[str, str]] = []
        # what each SCSI target (session dir or rport dir) reports: parent dir -> {lun: FakeLun}
        self.reported: Dict[str, Dict[int, FakeLun]] = {}
        self._next_dm = 0
        self._next_host = 0
        self.rescan_hooks: List[Callable[[str], None]] = []
        self.add_hooks: List[Callable[[str], None]] = []  # called with each new disk's name (multipathd)
        for d in ("sys/block", "sys/devices/platform", "sys/devices/virtual/block", "sys/class/scsi_host",
                  "sys/class/scsi_device", "sys/class/iscsi_session", "sys/class/iscsi_connection",
                  "sys/class/iscsi_host", "sys/class/fc_host", "sys/class/fc_remote_ports",
                  "dev/disk/by-path", "dev/disk/by-id", "dev/mapper", "etc/iscsi", "proc/net", "run"):
            os.makedirs(os.path.join(root, d), exist_ok=True)

    # small helpers ------------------------------------------------------------------------
    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _write(self, path: str, text: str, mode: Optional[int] = None) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        if mode is not None:
            os.chmod(path, mode)

    def _link(self, link: str, target: str) -> None:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.relpath(target, os.path.dirname(link)), link)

    def _unlink(self, path: str) -> None:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)

    def set_initiator_name(self, name: str) -> None:
        self._write(self.p("etc", "iscsi", "initiatorname.iscsi"), f"InitiatorName={name}\n", 0o600)

    def new_host_number(self) -> int:
        with self.lock:
            n = self._next_host
            self._next_host += 1
            return n

    def add_scsi_host(self, host: Optional[int] = None, kind: str = "iscsi") -> int:
        """A SCSI host with its ``scan`` file (``kind`` "iscsi" adds the iscsi_host class entry)."""
        with self.lock:
            if host is None:
                host = self.new_host_number()
            else:
                self._next_host = max(self._next_host, host + 1)
            hdir = self.p("sys", "devices", "platform", f"host{host}")
            self._write(os.path.join(hdir, "scsi_host", f"host{host}", "scan"), "")
            self._link(self.p("sys", "class", "scsi_host", f"host{host}"), os.path.join(hdir, "scsi_host", f"host{host}"))
            if kind == "iscsi":
                os.makedirs(os.path.join(hdir, "iscsi_host", f"host{host}"), exist_ok=True)
                self._link(self.p("sys", "class", "iscsi_host", f"host{host}"),
                           os.path.join(hdir, "iscsi_host", f"host{host}"))
            return host

    # iSCSI sessions -------------------------------------------------------------------------
    def add_iscsi_session(self, sid: int, iqn: str, address: str, port: int = 3260, *, tpgt: int = 1,
                          host: Optional[int] = None, luns: Optional[Dict[int, FakeLun]] = None,
                          scan: bool = False, state: str = "LOGGED_IN", iface: str = "default",
                          username: str = "") -> str:
        """A logged-in session on its own SCSI host; ``luns`` are what the target reports, surfaced
        only by a scan (``scan=True`` does the kernel's automatic full scan). Returns its dir."""
        with self.lock:
            host = self.add_scsi_host(host)
            sdir = self.p("sys", "devices", "platform", f"host{host}", f"session{sid}")
            attrs = {"targetname": iqn, "tpgt": str(tpgt), "state": state, "target_id": "0",
                     "ifacename": iface, "username": username}
            for k, v in attrs.items():
                self._write(os.path.join(sdir, "iscsi_session", f"session{sid}", k), v + "\n")
            self._link(self.p("sys", "class", "iscsi_session", f"session{sid}"),
                       os.path.join(sdir, "iscsi_session", f"session{sid}"))
            cdir = os.path.join(sdir, f"connection{sid}:0", "iscsi_connection", f"connection{sid}:0")
            for k, v in (("persistent_address", address), ("persistent_port", str(port)),
                         ("address", address), ("port", str(port))):
                self._write(os.path.join(cdir, k), v + "\n")
            self._link(self.p("sys", "class", "iscsi_connection", f"connection{sid}:0"), cdir)
            self.reported[sdir] = dict(luns or {})
            if scan:
                self.scan_parent(sdir, host, "-", "-", "-")
            return sdir

    def remove_iscsi_session(self, sid: int) -> None:
        """Logout: the session's disks go away, then the session and its host."""
        with self.lock:
            link = self.p("sys", "class", "iscsi_session", f"session{sid}")
            if not os.path.lexists(link):
                return
            sdir = os.path.dirname(os.path.dirname(os.path.realpath(link)))
            for dev in self.devices_under(sdir):
                self.remove_scsi_device(dev)
            hdir = os.path.dirname(sdir)
            host = os.path.basename(hdir)
            for cls in ("iscsi_session", "iscsi_connection"):
                for name in os.listdir(self.p("sys", "class", cls)):
                    if name == f"session{sid}" or name == f"connection{sid}:0":
                        os.unlink(self.p("sys", "class", cls, name))
            for cls in ("scsi_host", "iscsi_host"):
                self._unlink(self.p("sys", "class", cls, host))
            self.reported.pop(sdir, None)
            shutil.rmtree(hdir)

    def session_dir(self, sid: int) -> Optional[str]:
        link = self.p("sys", "class", "iscsi_session", f"session{sid}")
        return os.path.dirname(os.path.dirname(os.path.realpath(link))) if os.path.lexists(link) else None

    # SCSI disks -----------------------------------------------------------------------------
    def add_scsi_device(self, parent: str, hctl: Hctl, lun: FakeLun, *, by_path: Optional[str] = None,
                        state: str = "running", port_name: str = "") -> str:
        """A disk at ``hctl`` under ``parent`` (a session or rport dir); returns its name (sdX)."""
        with self.lock:
            n = 0  # like the sd driver's ida: the lowest free name
            while os.path.lexists(self.p("sys", "block", _disk_name(n))):
                n += 1
            name = _disk_name(n)
            ddir = os.path.join(parent, f"target{hctl.host}:{hctl.channel}:{hctl.target}", str(hctl))
            for k, v in (("state", state), ("vendor", f"{lun.vendor:<8}"), ("model", f"{lun.model:<16}"),
                         ("wwid", _sysfs_wwid(lun.wwid)), ("delete", ""), ("rescan", ""), ("lun_wwid", lun.wwid)):
                self._write(os.path.join(ddir, k), v + ("\n" if v else ""))
            with open(os.path.join(ddir, "vpd_pg83"), "wb") as f:
                f.write(vpd_pg83(lun.wwid, port_name))
            bdir = os.path.join(ddir, "block", name)
            self._write(os.path.join(bdir, "size"), f"{lun.size // 512}\n")
            self._write(os.path.join(bdir, "ro"), "0\n")
            os.makedirs(os.path.join(bdir, "holders"), exist_ok=True)
            self._link(os.path.join(bdir, "device"), ddir)
            self._link(self.p("sys", "block", name), bdir)
            self._link(self.p("sys", "class", "scsi_device", str(hctl), "device"), ddir)
            self._write(self.p("dev", name), "")
            if by_path:
                self._link(self.p("dev", "disk", "by-path", by_path), self.p("dev", name))
            self._link(self.p("dev", "disk", "by-id", f"scsi-{lun.wwid}"), self.p("dev", name))
            if lun.wwid.startswith("3"):
                self._link(self.p("dev", "disk", "by-id", f"wwn-0x{lun.wwid[1:]}"), self.p("dev", name))
            for hook in self.add_hooks:
                hook(name)
            return name

    def disk_wwid(self, name: str) -> str:
        return open(os.path.join(self.p("sys", "block", name, "device"), "lun_wwid")).read().strip()

    def devices_under(self, parent: str) -> List[str]:
        out = []
        for t in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
            if t.startswith("target"):
                for d in sorted(os.listdir(os.path.join(parent, t))):
                    blk = os.path.join(parent, t, d, "block")
                    if _HCTL_RE.match(d) and os.path.isdir(blk):
                        out.extend(sorted(os.listdir(blk)))
        return out

    def remove_scsi_device(self, name: str) -> None:
        with self.lock:
            link = self.p("sys", "block", name)
            if not os.path.lexists(link):
                return
            ddir = os.path.dirname(os.path.dirname(os.path.realpath(link)))
            for holder in os.listdir(os.path.join(ddir, "block", name, "holders")):
                self._unlink(self.p("sys", "block", holder, "slaves", name))
            for d in (self.p("dev", "disk", "by-path"), self.p("dev", "disk", "by-id")):
                for entry in os.listdir(d):
                    full = os.path.join(d, entry)
                    if os.path.realpath(full) == self.p("dev", name):
                        os.unlink(full)
            os.unlink(link)
            self._unlink(self.p("dev", name))
            self._unlink(self.p("sys", "class", "scsi_device", os.path.basename(ddir)))
            shutil.rmtree(ddir)
            tdir = os.path.dirname(ddir)
            if not os.listdir(tdir):
                os.rmdir(tdir)

    def scan_parent(self, parent: str, host: int, channel: str, target: str, lun: str) -> List[str]:
        """The kernel's targeted scan: add reported LUNs matching ``C T L`` that are not present."""
        added = []
        with self.lock:
            c, t = self._channel_target(parent)
            for n, spec in sorted(self.reported.get(parent, {}).items()):
                if channel not in ("-", str(c)) or target not in ("-", str(t)) or lun not in ("-", str(n)):
                    continue
                hctl = Hctl(host, c, t, n)
                if os.path.lexists(self.p("sys", "class", "scsi_device", str(hctl))):
                    continue
                added.append(self.add_scsi_device(parent, hctl, spec, by_path=self.by_path_for(parent, n)))
        return added

    def _channel_target(self, parent: str) -> Tuple[int, int]:
        name = os.path.basename(parent)
        if name.startswith("rport-"):  # rport-H:C-R
            channel = int(name.split(":")[1].split("-")[0])
            tid = open(os.path.join(parent, "fc_remote_ports", name, "scsi_target_id")).read().strip()
            return channel, int(tid)
        tid = open(os.path.join(parent, "iscsi_session", name, "target_id")).read().strip()
        return 0, int(tid)

    def by_path_for(self, parent: str, lun: int) -> Optional[str]:
        sid = os.path.basename(parent)
        if not sid.startswith("session"):
            return None
        base = os.path.join(parent, f"connection{sid[7:]}:0", "iscsi_connection", f"connection{sid[7:]}:0")
        addr = open(os.path.join(base, "persistent_address")).read().strip()
        port = open(os.path.join(base, "persistent_port")).read().strip()
        iqn = open(os.path.join(parent, "iscsi_session", sid, "targetname")).read().strip()
        return f"ip-{addr}:{port}-iscsi-{iqn}-lun-{lun}"

    def set_device_state(self, name: str, state: str) -> None:
        self._write(os.path.join(self.p("sys", "block", name, "device"), "state"), state + "\n")

    # multipath ----------------------------------------------------------------------------------
    def add_multipath(self, wwid: str, slaves: List[str], name: Optional[str] = None) -> str:
        """A dm-multipath map over ``slaves``; returns ``dm-N``."""
        with self.lock:
            dm = f"dm-{self._next_dm}"
            self._next_dm += 1
            name = name or wwid
            d = self.p("sys", "devices", "virtual", "block", dm)
            self._write(os.path.join(d, "dm", "uuid"), f"mpath-{wwid}\n")
            self._write(os.path.join(d, "dm", "name"), name + "\n")
            os.makedirs(os.path.join(d, "slaves"), exist_ok=True)
            os.makedirs(os.path.join(d, "holders"), exist_ok=True)
            self._link(self.p("sys", "block", dm), d)
            self._write(self.p("dev", dm), "")
            self._link(self.p("dev", "mapper", name), self.p("dev", dm))
            self._link(self.p("dev", "disk", "by-id", f"dm-uuid-mpath-{wwid}"), self.p("dev", dm))
            for s in slaves:
                self.add_slave(dm, s)
            return dm

    def add_slave(self, dm: str, slave: str) -> None:
        with self.lock:
            d = os.path.realpath(self.p("sys", "block", dm))
            self._link(os.path.join(d, "slaves", slave), os.path.realpath(self.p("sys", "block", slave)))
            self._link(self.p("sys", "block", slave, "holders", dm), d)
            self._update_dm_size(dm)

    def _update_dm_size(self, dm: str) -> None:
        d = os.path.realpath(self.p("sys", "block", dm))
        sizes = [int(open(self.p("sys", "block", s, "size")).read()) for s in os.listdir(os.path.join(d, "slaves"))]
        if sizes and not os.path.exists(os.path.join(d, "size")):
            self._write(os.path.join(d, "size"), f"{min(sizes)}\n")

    def resize_multipath(self, dm: str) -> None:
        with self.lock:
            d = os.path.realpath(self.p("sys", "block", dm))
            sizes = [int(open(self.p("sys", "block", s, "size")).read()) for s in os.listdir(os.path.join(d, "slaves"))]
            if sizes:
                self._write(os.path.join(d, "size"), f"{min(sizes)}\n")

    def remove_multipath(self, dm: str) -> None:
        with self.lock:
            link = self.p("sys", "block", dm)
            if not os.path.lexists(link):
                return
            d = os.path.realpath(link)
            name = open(os.path.join(d, "dm", "name")).read().strip()
            wwid = open(os.path.join(d, "dm", "uuid")).read().strip()[len("mpath-"):]
            for s in os.listdir(os.path.join(d, "slaves")):
                self._unlink(self.p("sys", "block", s, "holders", dm))
            for p in (link, self.p("dev", dm), self.p("dev", "mapper", name),
                      self.p("dev", "disk", "by-id", f"dm-uuid-mpath-{wwid}")):
                self._unlink(p)
            shutil.rmtree(d)

    def multipath_of(self, wwid: str) -> Optional[str]:
        for dm in os.listdir(self.p("sys", "block")):
            if dm.startswith("dm-"):
                uuid = open(self.p("sys", "block", dm, "dm", "uuid")).read().strip()
                if uuid == f"mpath-{wwid}":
                    return dm
        return None

    # Fibre Channel (base for the FC fake) ------------------------------------------------------
    def add_fc_host(self, wwpn: str, wwnn: str, *, host: Optional[int] = None, port_state: str = "Online") -> int:
        with self.lock:
            host = self.add_scsi_host(host, kind="fc")
            d = self.p("sys", "devices", "platform", f"host{host}", "fc_host", f"host{host}")
            for k, v in (("port_name", f"0x{wwpn}"), ("node_name", f"0x{wwnn}"), ("port_state", port_state)):
                self._write(os.path.join(d, k), v + "\n")
            self._link(self.p("sys", "class", "fc_host", f"host{host}"), d)
            return host

    def add_fc_rport(self, host: int, number: int, wwpn: str, wwnn: str, *, channel: int = 0,
                     target_id: int = 0, roles: str = "FCP Target", port_state: str = "Online",
                     luns: Optional[Dict[int, FakeLun]] = None) -> str:
        """A remote port on ``host``; its ``luns`` surface through scans of ``host``. Returns its dir."""
        with self.lock:
            name = f"rport-{host}:{channel}-{number}"
            rdir = self.p("sys", "devices", "platform", f"host{host}", name)
            d = os.path.join(rdir, "fc_remote_ports", name)
            for k, v in (("port_name", f"0x{wwpn}"), ("node_name", f"0x{wwnn}"), ("roles", roles),
                         ("port_state", port_state), ("scsi_target_id", str(target_id))):
                self._write(os.path.join(d, k), v + "\n")
            self._link(self.p("sys", "class", "fc_remote_ports", name), d)
            self.reported[rdir] = dict(luns or {})
            return rdir

    # the kernel's reaction to sysfs writes -------------------------------------------------------
    def on_write(self, path: str, data: str) -> None:
        with self.lock:
            self.writes.append((path, data))
            real = os.path.realpath(path)
            base = os.path.basename(real)
            if not os.path.exists(real):
                raise FileNotFoundError(2, "No such file or directory", path)
            if base == "scan" and os.path.basename(os.path.dirname(os.path.dirname(real))) == "scsi_host":
                self._scan_host(int(os.path.basename(os.path.dirname(real))[4:]), data)
            elif base == "delete" and _HCTL_RE.match(os.path.basename(os.path.dirname(real))):
                names = os.listdir(os.path.join(os.path.dirname(real), "block"))
                for n in names:
                    self.remove_scsi_device(n)
            elif base == "rescan" and _HCTL_RE.match(os.path.basename(os.path.dirname(real))):
                self._rescan(os.path.dirname(real))
            else:
                with open(real, "w") as f:
                    f.write(data)

    def _scan_host(self, host: int, data: str) -> None:
        fields = data.split()
        if len(fields) != 3 or any(not (f == "-" or f.isdigit()) for f in fields):
            raise OSError(22, "Invalid argument")
        hdir = self.p("sys", "devices", "platform", f"host{host}")
        for parent in list(self.reported):
            if os.path.dirname(parent) == hdir:
                self.scan_parent(parent, host, *fields)

    def remap_lun(self, parent: str, lun: int, spec: FakeLun) -> None:
        """The target now reports ``spec`` (another LU) at LUN number ``lun`` of ``parent`` (a session
        or rport dir). A disk already at that address keeps its old identity until it is rescanned."""
        with self.lock:
            self.reported.setdefault(parent, {})[lun] = spec

    def _rescan(self, ddir: str) -> None:
        """The kernel's rescan: re-read the inquiry data (``vpd_pg83``, ``wwid``) and the capacity of
        whatever LU the target now reports at the address."""
        wwid = open(os.path.join(ddir, "lun_wwid")).read().strip()
        parent = os.path.dirname(os.path.dirname(ddir))
        lun = self.reported.get(parent, {}).get(Hctl.parse(os.path.basename(ddir)).lun)  # type: ignore[union-attr]
        if lun is not None and lun.wwid != wwid:  # remapped: the device now carries the other LU's identity
            self._write(os.path.join(ddir, "wwid"), _sysfs_wwid(lun.wwid) + "\n")
            self._write(os.path.join(ddir, "lun_wwid"), lun.wwid + "\n")
            with open(os.path.join(ddir, "vpd_pg83"), "wb") as f:
                f.write(vpd_pg83(lun.wwid))
        if lun is not None:
            for name in os.listdir(os.path.join(ddir, "block")):
                self._write(os.path.join(ddir, "block", name, "size"), f"{lun.size // 512}\n")
        for hook in self.rescan_hooks:
            hook(ddir)


__all__ = ["FakeHostTree", "FakeHostPaths", "FakeLun", "naa_wwid", "vpd_pg83"]
