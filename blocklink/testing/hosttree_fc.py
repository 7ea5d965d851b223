"""A fake Fibre Channel host: HBA ports and remote ports laid out as qla2xxx, lpfc and fcoe lay them out.

:class:`FakeFcTree` extends :class:`~blocklink.testing.hosttree.FakeHostTree` with the FC transport's
sysfs. Paths and attribute values follow what those drivers show on Linux 6.1 (the fcoe layout is
the one the real-kernel guest shows for FCoE VN2VN over virtio-net)::

    qla2xxx  sys/devices/pci0000:00/0000:00:03.0/0000:05:00.0/host7/fc_host/host7
    lpfc     sys/devices/pci0000:00/0000:00:02.0/0000:04:00.1/host2/fc_host/host2
    fcoe     sys/devices/pci0000:00/0000:00:04.0/virtio3/net/eth0/ctlr_2/host2/fc_host/host2
    ... hostH/rport-H:C-N/fc_remote_ports/rport-H:C-N/{port_name,roles,port_state,scsi_target_id,...}
    ... hostH/rport-H:C-N/targetH:C:T/{fc_transport/targetH:C:T/port_name, H:C:T:L/...}

It behaves like the FC transport: a write of ``"C T L"`` to ``hostH/scan`` probes only remote ports
that are Online and offer the "FCP Target" role with a SCSI target id (``fc_user_scan``), and only
LUNs the port reports to this host surface, each with the by-path link udev's path_id makes.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional

from blocklink.initiator.host import fc
from blocklink.initiator.host.scsi import Hctl
from blocklink.testing.hosttree import FakeHostTree, FakeLun

# where each driver's SCSI hosts sit ({pci}: the HBA's PCI function; {iface}, {ctlr}: the fcoe NIC)
BUS_PATHS = {
    "qla2xxx": "pci0000:00/0000:00:03.0/{pci}",
    "lpfc": "pci0000:00/0000:00:02.0/{pci}",
    "fcoe": "pci0000:00/{pci}/virtio{virtio}/net/{iface}/ctlr_{ctlr}",
    "platform": "platform/soc/1f0000000.pcie/pci0000:00/0000:00:00.0/{pci}",  # an arm64 board's HBA
}
SYMBOLIC_NAMES = {
    "qla2xxx": "QLE2562 FW:v8.07.00 DVR:v10.02.00.106-k",
    "lpfc": "Emulex LPe12002-M8 FV2.02X11 DV14.0.0.4 HN:compute-1 OS:Linux",
    "fcoe": "fcoe v0.1 over {iface}",
    "platform": "QLE2692 FW:v9.06.02 DVR:v10.02.07.900-k",
}


class FakeFcTree(FakeHostTree):
    """The fake host with FC HBAs. ``add_hba`` and ``add_rport`` build the fabric as the host sees it."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        os.makedirs(self.p("sys", "class", "fc_transport"), exist_ok=True)
        self._next_rport: Dict[int, int] = {}
        self._next_tid: Dict[int, int] = {}
        self._ctlrs = 0

    # HBAs ------------------------------------------------------------------------------------
    def add_hba(self, wwpn: str, wwnn: Optional[str] = None, *, driver: str = "qla2xxx", pci: str = "0000:05:00.0",
                state: str = "Online", host: Optional[int] = None, iface: str = "eth0") -> int:
        """An HBA port (16-hex-digit ``wwpn``) of ``driver``'s layout; returns its SCSI host number."""
        with self.lock:
            host = self.new_host_number() if host is None else host
            self._next_host = max(self._next_host, host + 1)
            bus = BUS_PATHS[driver].format(pci=pci, iface=iface, ctlr=self._ctlrs, virtio=3 + self._ctlrs)
            if driver == "fcoe":
                self._ctlrs += 1
            hdir = self.p("sys", "devices", *bus.split("/"), f"host{host}")
            self._write(os.path.join(hdir, "scsi_host", f"host{host}", "scan"), "")
            self._link(self.p("sys", "class", "scsi_host", f"host{host}"), os.path.join(hdir, "scsi_host", f"host{host}"))
            d = os.path.join(hdir, "fc_host", f"host{host}")
            wwnn = wwnn or ("1" + wwpn[1:] if driver == "fcoe" else "2" + wwpn[1:])
            attrs = {"port_name": f"0x{wwpn}", "node_name": f"0x{wwnn}", "port_state": state,
                     "port_id": f"0x{wwpn[-6:]}", "port_type": "NPort (fabric via point-to-point)",
                     "speed": "unknown" if driver == "fcoe" else "8 Gbit", "fabric_name": "0x0",
                     "symbolic_name": SYMBOLIC_NAMES[driver].format(iface=iface), "dev_loss_tmo": "60"}
            for k, v in attrs.items():
                self._write(os.path.join(d, k), v + "\n")
            self._link(self.p("sys", "class", "fc_host", f"host{host}"), d)
            return host

    def set_hba_state(self, host: int, state: str) -> None:
        self._write(self.p("sys", "class", "fc_host", f"host{host}", "port_state"), state + "\n")

    def host_dir(self, host: int) -> str:
        return os.path.dirname(os.path.dirname(os.path.realpath(self.p("sys", "class", "scsi_host", f"host{host}"))))

    # remote ports ----------------------------------------------------------------------------
    def add_rport(self, host: int, wwpn: str, wwnn: Optional[str] = None, *, roles: str = "FCP Target",
                  state: str = "Online", luns: Optional[Dict[int, FakeLun]] = None, channel: int = 0,
                  target_id: Optional[int] = None, scan: bool = False) -> str:
        """A remote port logged in with ``host``. A target port gets the next SCSI target id; ``luns``
        are what it reports to us. ``scan=True`` does the transport's automatic scan at login."""
        with self.lock:
            number = self._next_rport.get(host, 0)
            self._next_rport[host] = number + 1
            if target_id is None and "FCP Target" in roles:
                target_id = self._next_tid.get(host, 0)
                self._next_tid[host] = target_id + 1
            name = f"rport-{host}:{channel}-{number}"
            rdir = os.path.join(self.host_dir(host), name)
            d = os.path.join(rdir, "fc_remote_ports", name)
            attrs = {"port_name": f"0x{wwpn}", "node_name": f"0x{wwnn or '5' + wwpn[1:]}", "port_id": f"0x{wwpn[-6:]}",
                     "port_state": state, "roles": roles, "dev_loss_tmo": "60",
                     "scsi_target_id": str(target_id if target_id is not None else -1)}
            for k, v in attrs.items():
                self._write(os.path.join(d, k), v + "\n")
            self._link(self.p("sys", "class", "fc_remote_ports", name), d)
            self.reported[rdir] = dict(luns or {})
            if scan and target_id is not None:
                self.scan_parent(rdir, host, "-", "-", "-")
            return rdir

    def rport_attr(self, rdir: str, attr: str, value: str) -> None:
        name = os.path.basename(rdir)
        self._write(os.path.join(rdir, "fc_remote_ports", name, attr), value + "\n")

    def map_lun(self, rdir: str, lun: FakeLun) -> None:
        """The array maps another LUN to us behind this port (it surfaces only after a scan)."""
        with self.lock:
            self.reported[rdir][lun.lun] = lun

    def rport_dirs(self, host: Optional[int] = None) -> List[str]:
        return [r for r in self.reported if os.path.basename(r).startswith("rport-")
                and (host is None or os.path.basename(r).startswith(f"rport-{host}:"))]

    # SCSI devices under rports -----------------------------------------------------------------
    def add_scsi_device(self, parent: str, hctl: Hctl, lun: FakeLun, *, by_path: Optional[str] = None,
                        state: str = "running", port_name: str = "") -> str:
        with self.lock:
            name = super().add_scsi_device(parent, hctl, lun, by_path=by_path, state=state, port_name=port_name)
            if os.path.basename(parent).startswith("rport-"):  # the FC transport's view of the SCSI target
                tname = f"target{hctl.host}:{hctl.channel}:{hctl.target}"
                d = os.path.join(parent, tname, "fc_transport", tname)
                wwpn = open(os.path.join(parent, "fc_remote_ports", os.path.basename(parent), "port_name")).read()
                self._write(os.path.join(d, "port_name"), wwpn)
                self._link(self.p("sys", "class", "fc_transport", tname), d)
            return name

    def remove_scsi_device(self, name: str) -> None:
        with self.lock:
            link = self.p("sys", "block", name)
            tdir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(link)))) \
                if os.path.lexists(link) else None
            super().remove_scsi_device(name)
            if tdir and os.path.isdir(tdir) and not [e for e in os.listdir(tdir) if e != "fc_transport"]:
                self._unlink(self.p("sys", "class", "fc_transport", os.path.basename(tdir)))
                shutil.rmtree(tdir)  # the last LUN is gone: the kernel reaps the SCSI target

    def by_path_for(self, parent: str, lun: int) -> Optional[str]:
        name = os.path.basename(parent)
        if not name.startswith("rport-"):
            return super().by_path_for(parent, lun)
        host = int(name[len("rport-"):].split(":")[0])
        hba = fc.fc_host(self.paths, host)
        rp = fc.read_remote_port(self.paths, name)
        if hba is None or rp is None:
            return None
        return fc.by_path_name(hba, rp.wwpn, lun)

    def _scan_host(self, host: int, data: str) -> None:
        fields = data.split()
        if len(fields) != 3 or any(not (f == "-" or f.isdigit()) for f in fields):
            raise OSError(22, "Invalid argument")
        hdir = self.host_dir(host)
        for parent in list(self.reported):
            if os.path.dirname(parent) != hdir:
                continue
            rp = fc.read_remote_port(self.paths, os.path.basename(parent))
            if rp is not None and not (rp.online and rp.is_target):
                continue  # fc_user_scan: only Online FCP targets with a target id
            self.scan_parent(parent, host, *fields)


__all__ = ["FakeFcTree", "BUS_PATHS"]
