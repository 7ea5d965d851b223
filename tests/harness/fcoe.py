"""A real Fibre Channel fabric for kernel tests: FCoE VN2VN over the guest's virtio-net NICs, and a
LIO ``tcm_fc`` target on some of its ports.

All NICs sit on one qemu hub (``@pytest.mark.kernel(nics=N)``, fixed MACs from
:func:`tests.harness.guest.nic_mac`), so every FCoE port sees every other: each NIC's fcoe
controller becomes an ``fc_host`` (WWPN ``0x2000<MAC>``, WWNN ``0x1000<MAC>``) and logs in with
all others. A port carrying a :class:`TcmFcTarget` shows up on the initiators' side as a remote
port with the "FCP Target" role, but only for initiator WWPNs in the target's ACLs (for others it
stays a plain "FCP Initiator" port). Configure the targets before :meth:`FcoeFabric.start`: PRLI,
which grants the role, happens at login.

::

    target = TcmFcTarget(fcoe_wwpn(nic_mac(2)), backing_dir).create(initiators=[fcoe_wwpn(nic_mac(0))])
    fabric = FcoeFabric([nic_mac(0), nic_mac(2)]).start()
    fabric.wait_for_target(nic_mac(0), target.wwpn)
    lun = target.add_lun("vol1", 0, 32 << 20, initiators=[...])
    ...
    target.delete(); fabric.stop()
"""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from blocklink.errors import DeviceNotFound
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host import fc
from blocklink.initiator.host.fc import FcHost, RemotePort
from blocklink.initiator.host.wait import wait_for

FC_MODULES = ("scsi_transport_fc", "libfc", "libfcoe", "fcoe", "configfs", "target_core_mod", "target_core_file",
              "tcm_fc", "sd_mod", "virtio_net")


class FcoeError(RuntimeError):
    pass


def fcoe_wwpn(mac: str) -> str:
    """The WWPN the fcoe driver derives from a MAC: ``0x2000`` + the MAC (16 hex digits)."""
    return "2000" + mac.replace(":", "").lower()


def fcoe_wwnn(mac: str) -> str:
    return "1000" + mac.replace(":", "").lower()


def _colons(wwn: str) -> str:
    return ":".join(wwn[i:i + 2] for i in range(0, 16, 2))


def _run(argv: Sequence[str], timeout: float = 60) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise FcoeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()[-300:]}")
    return res.stdout


def modprobe(*modules: str) -> None:
    _run(["modprobe", "-a", *modules])


def iface_of(mac: str, paths: HostPaths = HostPaths()) -> Optional[str]:
    for name in paths.listdir(paths.sys("class", "net")):
        if (paths.read(paths.sys("class", "net", name, "address")) or "").lower() == mac.lower():
            return name
    return None


# ---------------------------------------------------------------------------------------------
# the fabric
# ---------------------------------------------------------------------------------------------

class FcoeFabric:
    """FCoE VN2VN controllers on the NICs with ``macs``; stops only what it created."""

    def __init__(self, macs: Sequence[str], *, mtu: int = 9000, timeout: float = 60.0,
                 paths: HostPaths = HostPaths()) -> None:
        self.macs = [m.lower() for m in macs]
        self.mtu = mtu
        self.timeout = timeout
        self.paths = paths
        self.ifaces: Dict[str, str] = {}  # mac -> interface name
        self.created: List[str] = []  # interfaces we made an fcoe controller on

    def start(self) -> "FcoeFabric":
        modprobe(*FC_MODULES)
        try:
            for mac in self.macs:
                self.ifaces[mac] = wait_for(functools.partial(iface_of, mac, self.paths), timeout=self.timeout,
                                            what=f"network interface with MAC {mac}")
            for mac in self.macs:
                _run(["ip", "link", "set", "dev", self.ifaces[mac], "mtu", str(self.mtu), "up"])
            for mac in self.macs:
                iface = self.ifaces[mac]
                self.paths.write(self.paths.sys("bus", "fcoe", "ctlr_create"), iface)
                self.created.append(iface)
                ctlr = self._ctlr(iface)
                if ctlr is None:
                    raise FcoeError(f"no fcoe controller appeared on {iface}")
                self._set_vn2vn(ctlr)
                self.paths.write(os.path.join(ctlr, "enabled"), "1")
            for mac in self.macs:
                wait_for(functools.partial(self._online_host, mac), timeout=self.timeout,
                         what=f"an Online fc_host on {self.ifaces[mac]}")
        except BaseException:
            self.stop()
            raise
        return self

    def _set_vn2vn(self, ctlr: str) -> None:
        """6.1 parses the mode case-insensitively; 6.12 matches the exact name "VN2VN" (sysfs_match_string)
        and refuses "vn2vn" with EINVAL. Both take "VN2VN"; lower case stays as a fallback."""
        try:
            self.paths.write(os.path.join(ctlr, "mode"), "VN2VN")
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.paths.write(os.path.join(ctlr, "mode"), "vn2vn")

    def _ctlr(self, iface: str) -> Optional[str]:
        for entry in self.paths.listdir(self.paths.sys("class", "net", iface)):
            if entry.startswith("ctlr_"):
                return self.paths.sys("class", "net", iface, entry)
        return None

    def _host_on(self, iface: str) -> Optional[FcHost]:
        for h in fc.fc_hosts(self.paths):
            if f"{os.sep}net{os.sep}{iface}{os.sep}ctlr_" in h.device_path:
                return h
        return None

    def _gone(self, iface: str) -> Optional[bool]:
        return True if self._host_on(iface) is None and self._ctlr(iface) is None else None

    def _online_host(self, mac: str) -> Optional[FcHost]:
        h = self._host_on(self.ifaces[mac])
        return h if h is not None and h.online else None

    def host(self, mac: str) -> FcHost:
        """The fc_host (HBA port) on the NIC with ``mac``."""
        h = self._host_on(self.ifaces[mac.lower()])
        if h is None:
            raise FcoeError(f"no fc_host on {self.ifaces[mac.lower()]}")
        return h

    def wait_for_port(self, mac: str, wwpn: str, *, target: bool = True, timeout: Optional[float] = None
                      ) -> RemotePort:
        """The Online remote port ``wwpn`` as the NIC ``mac`` sees it (with the FCP target role if
        ``target``; else merely logged in)."""
        host = self.host(mac).host

        def check() -> Optional[RemotePort]:
            for rp in fc.remote_ports(self.paths, host, wwpn):
                if rp.online and (rp.is_target or not target):
                    return rp
            return None

        return wait_for(check, timeout=timeout or self.timeout, what=f"remote port 0x{wwpn} on host{host}")

    def stop(self) -> List[str]:
        """Disable and destroy our controllers (their fc_hosts, rports and disks go with them); returns
        what is left over (empty when clean)."""
        for iface in list(reversed(self.created)):
            ctlr = self._ctlr(iface)
            if ctlr is not None:
                try:
                    self.paths.write(os.path.join(ctlr, "enabled"), "0")
                except OSError:
                    pass  # destroy still works on an enabled controller
            try:
                self.paths.write(self.paths.sys("bus", "fcoe", "ctlr_destroy"), iface)
            except OSError:
                pass  # reported below if the controller stayed
            self.created.remove(iface)
        left: List[str] = []
        for iface in self.ifaces.values():
            try:
                wait_for(functools.partial(self._gone, iface), timeout=30, what=f"fcoe on {iface} to go")
            except DeviceNotFound:
                left.append(f"fcoe controller/fc_host on {iface}")
            subprocess.run(["ip", "link", "set", "dev", iface, "down"], capture_output=True, timeout=30, check=False)
        return left


# ---------------------------------------------------------------------------------------------
# the target
# ---------------------------------------------------------------------------------------------

@dataclass
class FcLun:
    name: str
    lun: int
    size: int
    path: str  # backing file
    initiators: List[str]


def _rtslib() -> Any:
    import rtslib_fb  # lazy: only the guest has LIO

    return rtslib_fb


class TcmFcTarget:
    """A LIO ``tcm_fc`` target on the local FC port ``wwpn`` (one TPG), with file-backed LUNs.

    LUN mappings above 255, which rtslib-fb refuses, are made in configfs directly (the kernel
    takes any 16-bit number) and removed the same way before rtslib touches the ACL again.
    """

    def __init__(self, wwpn: str, backing_dir: str) -> None:
        self.wwpn = wwpn.lower()
        self.backing_dir = backing_dir
        self.luns: Dict[int, FcLun] = {}
        self._target: Any = None
        self._tpg: Any = None
        self._objects: Dict[int, Any] = {}  # lun -> (storage object, tpg LUN)

    def create(self, initiators: Sequence[str]) -> "TcmFcTarget":
        rts = _rtslib()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Cannot set dbroot": harmless
            self._target = rts.Target(rts.FabricModule("tcm_fc"), "naa." + self.wwpn)
            self._tpg = rts.TPG(self._target, 1)
            for ini in initiators:
                rts.NodeACL(self._tpg, "naa." + ini.lower())
        return self

    def _acl_dir(self, initiator: str) -> str:
        return os.path.join(self._tpg.path, "acls", _colons(initiator.lower()))

    def add_lun(self, name: str, lun: int, size: int, *, initiators: Sequence[str], share: Optional[FcLun] = None
                ) -> FcLun:
        """LUN ``lun`` of a new ``size``-byte file (or the storage object of ``share``, from another
        target: the same LU behind two ports), mapped to ``initiators`` under the same number."""
        rts = _rtslib()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if share is not None:
                so = rts.FileIOStorageObject(share.name)
                path = share.path
            else:
                path = os.path.join(self.backing_dir, f"{name}.img")
                so = rts.FileIOStorageObject(name, path, size=size, write_back=False)
            tlun = rts.LUN(self._tpg, lun, so)
        entry = FcLun(name, lun, size, path, [i.lower() for i in initiators])
        self._objects[lun] = (so, tlun, share is None)
        self.luns[lun] = entry
        for ini in entry.initiators:
            if lun <= 255:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rts.MappedLUN(rts.NodeACL(self._tpg, "naa." + ini, mode="lookup"), lun, tlun)
            else:
                d = os.path.join(self._acl_dir(ini), f"lun_{lun}")
                os.mkdir(d)
                os.symlink(tlun.path, os.path.join(d, "blocklink_lun"))
        return entry

    def resize(self, lun: int, size: int) -> None:
        """Grow the LUN's file and tell LIO (``fd_dev_size``), as targetcli does."""
        so, _, _ = self._objects[lun]
        os.truncate(self.luns[lun].path, size)
        with open(os.path.join(so.path, "control"), "w") as f:
            f.write(f"fd_dev_size={size}")
        self.luns[lun].size = size

    def remove_lun(self, lun: int) -> None:
        entry = self.luns.pop(lun)
        so, tlun, owned = self._objects.pop(lun)
        for ini in entry.initiators:
            d = os.path.join(self._acl_dir(ini), f"lun_{lun}")
            for e in os.listdir(d) if os.path.isdir(d) else ():
                if os.path.islink(os.path.join(d, e)):
                    os.unlink(os.path.join(d, e))
            if os.path.isdir(d):
                os.rmdir(d)
        if tlun.exists:  # deleting a shared storage object first takes its other LUNs along
            tlun.delete()
        if owned:
            so.delete()
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass

    def delete(self) -> None:
        for lun in sorted(self.luns, reverse=True):
            self.remove_lun(lun)
        if self._target is not None:
            self._target.delete()
            self._target = None


__all__ = ["FcoeFabric", "FcoeError", "TcmFcTarget", "FcLun", "fcoe_wwpn", "fcoe_wwnn", "iface_of", "FC_MODULES"]
