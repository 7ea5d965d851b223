"""Fibre Channel in sysfs: HBA ports, remote ports, their SCSI addresses, targeted scans, by-path names.

Everything reads through :class:`~blocklink.hostpaths.HostPaths`, so it runs unchanged on a fake
tree (:mod:`blocklink.testing.hosttree_fc`). Layout relied on (``scsi_transport_fc``, Linux 4.x-6.x,
the same for qla2xxx, lpfc and fcoe/libfc; only the bus path above ``hostH`` differs)::

    /sys/class/fc_host/hostH -> ../../devices/<bus>/hostH/fc_host/hostH
        port_name, node_name ("0x" + 16 hex), port_state (Online, Linkdown, Offline, Bypassed, ...)
        <bus>: pci0000:00/0000:00:03.0/0000:05:00.0 (an HBA), pci0000:00/0000:00:04.0/virtio3/net/
        eth0/ctlr_2 (FCoE on a NIC), possibly below platform/... on non-x86 machines
    /sys/class/fc_remote_ports/rport-H:C-N -> .../hostH/rport-H:C-N/fc_remote_ports/rport-H:C-N
        port_name, node_name, port_id, port_state (Online, Blocked, Not Present, ...),
        roles ("FCP Target, FCP Initiator"), scsi_target_id (-1 while the port is no SCSI target)
    .../hostH/rport-H:C-N/targetH:C:T/H:C:T:L/block/sdX        (T is the rport's scsi_target_id)
    /sys/class/fc_transport/targetH:C:T/port_name               (while that SCSI target exists)
    /sys/class/scsi_host/hostH/scan <- "C T L"  (the FC transport scans only Online FCP-target rports)
    /dev/disk/by-path/[platform-P-]pci-<pci>-fc-0x<wwpn>-lun-<L>   (udev's path_id)

A remote port shows the "FCP Target" role only to initiators the target accepts (a LIO tcm_fc
target without an ACL for our WWPN leaves the port Online as "FCP Initiator" alone).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from blocklink.connection import normalize_wwn
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host import scsi
from blocklink.initiator.host.scsi import Hctl
from blocklink.masking import get_logger

LOG = get_logger(__name__)

_HOST_RE = re.compile(r"^host(\d+)$")
_RPORT_RE = re.compile(r"^rport-(\d+):(\d+)-(\d+)$")
_TARGET_RE = re.compile(r"^target(\d+):(\d+):(\d+)$")
_PCI_RE = re.compile(r"^[0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_PCI_ROOT_RE = re.compile(r"^pci[0-9a-f]{4,}:[0-9a-f]{2}$")
FCP_TARGET = "FCP Target"
ONLINE = "Online"


@dataclass(frozen=True)
class FcHost:
    """One HBA port (an ``fc_host``): what Cinder knows as an initiator WWPN."""

    host: int  # SCSI host number
    wwpn: str  # normalised: 16 lower-case hex digits
    wwnn: str
    state: str  # port_state
    device_path: str  # the fc_host's real sysfs directory

    @property
    def name(self) -> str:
        return f"host{self.host}"

    @property
    def online(self) -> bool:
        return self.state == ONLINE

    def __str__(self) -> str:
        return f"{self.name} (0x{self.wwpn}, {self.state})"


@dataclass(frozen=True)
class RemotePort:
    """A remote FC port one HBA has logged in with (``rport-H:C-N``)."""

    host: int
    channel: int
    number: int
    wwpn: str
    wwnn: str
    port_id: str
    state: str
    roles: Tuple[str, ...]
    target_id: Optional[int]  # None when the port is no SCSI target (scsi_target_id -1)

    @property
    def name(self) -> str:
        return f"rport-{self.host}:{self.channel}-{self.number}"

    @property
    def online(self) -> bool:
        return self.state == ONLINE

    @property
    def is_target(self) -> bool:
        """Whether the port offers us the FCP target role with a SCSI target id (scannable)."""
        return FCP_TARGET in self.roles and self.target_id is not None

    def __str__(self) -> str:
        return f"{self.name} (0x{self.wwpn}, {self.state}, roles: {', '.join(self.roles) or 'none'})"


def _wwn(text: Optional[str]) -> str:
    return normalize_wwn(text or "") or ""


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# HBAs
# ---------------------------------------------------------------------------------------------

def fc_host(paths: HostPaths, host: int) -> Optional[FcHost]:
    base = paths.sys("class", "fc_host", f"host{host}")
    if not paths.exists(base):
        return None
    return FcHost(host=host, wwpn=_wwn(paths.read(os.path.join(base, "port_name"))),
                  wwnn=_wwn(paths.read(os.path.join(base, "node_name"))),
                  state=paths.read(os.path.join(base, "port_state"), "") or "",
                  device_path=paths.realpath(base))


def fc_hosts(paths: HostPaths) -> List[FcHost]:
    """Every FC HBA port, in host-number order (any state; filter with ``.online``)."""
    out = []
    for name in paths.listdir(paths.sys("class", "fc_host")):
        m = _HOST_RE.match(name)
        if m:
            h = fc_host(paths, int(m.group(1)))
            if h is not None and h.wwpn:
                out.append(h)
    return sorted(out, key=lambda h: h.host)


def is_fc_host(paths: HostPaths, host: int) -> bool:
    return paths.exists(paths.sys("class", "fc_host", f"host{host}"))


def pci_address(host: FcHost) -> Optional[str]:
    """The PCI function the port sits on (the innermost PCI address above ``hostH``), as udev's
    path_id uses it; None for a port that is not on PCI."""
    found = None
    for part in host.device_path.split(os.sep):
        if _HOST_RE.match(part):
            break
        if _PCI_RE.match(part):
            found = part
    return found


# ---------------------------------------------------------------------------------------------
# remote ports and SCSI targets
# ---------------------------------------------------------------------------------------------

def read_remote_port(paths: HostPaths, name: str) -> Optional[RemotePort]:
    m = _RPORT_RE.match(name)
    if not m:
        return None
    base = paths.sys("class", "fc_remote_ports", name)
    wwpn = _wwn(paths.read(os.path.join(base, "port_name")))
    if not wwpn:
        return None
    roles = tuple(r.strip() for r in (paths.read(os.path.join(base, "roles"), "") or "").split(",") if r.strip())
    tid = _int(paths.read(os.path.join(base, "scsi_target_id")))
    return RemotePort(host=int(m.group(1)), channel=int(m.group(2)), number=int(m.group(3)), wwpn=wwpn,
                      wwnn=_wwn(paths.read(os.path.join(base, "node_name"))),
                      port_id=paths.read(os.path.join(base, "port_id"), "") or "",
                      state=paths.read(os.path.join(base, "port_state"), "") or "", roles=roles,
                      target_id=tid if tid is not None and tid >= 0 else None)


def remote_ports(paths: HostPaths, host: Optional[int] = None, wwpn: Optional[str] = None) -> List[RemotePort]:
    """Remote ports (of ``host`` and with port name ``wwpn`` when given), in sysfs order."""
    want = normalize_wwn(wwpn) if wwpn else None
    out = []
    for name in paths.listdir(paths.sys("class", "fc_remote_ports")):
        m = _RPORT_RE.match(name)
        if not m or (host is not None and int(m.group(1)) != host):
            continue
        rp = read_remote_port(paths, name)
        if rp is not None and (want is None or rp.wwpn == want):
            out.append(rp)
    return sorted(out, key=lambda r: (r.host, r.channel, r.number))


def transport_targets(paths: HostPaths, host: Optional[int] = None) -> Dict[Tuple[int, int, int], str]:
    """``{(host, channel, target id): target WWPN}`` of the SCSI targets the FC transport has now."""
    out = {}
    for name in paths.listdir(paths.sys("class", "fc_transport")):
        m = _TARGET_RE.match(name)
        if not m or (host is not None and int(m.group(1)) != host):
            continue
        wwpn = _wwn(paths.read(paths.sys("class", "fc_transport", name, "port_name")))
        if wwpn:
            out[(int(m.group(1)), int(m.group(2)), int(m.group(3)))] = wwpn
    return out


def target_addresses(paths: HostPaths, host: int, wwpn: str) -> List[Tuple[int, int]]:
    """``(channel, target id)`` pairs under which ``host`` reaches target port ``wwpn``: its remote
    ports with a SCSI target id (in any state), then FC transport targets with that port name."""
    want = normalize_wwn(wwpn)
    out: List[Tuple[int, int]] = []
    for rp in remote_ports(paths, host, want):
        if rp.target_id is not None and (rp.channel, rp.target_id) not in out:
            out.append((rp.channel, rp.target_id))
    for (_h, c, t), w in sorted(transport_targets(paths, host).items()):
        if w == want and (c, t) not in out:
            out.append((c, t))
    return out


def scan_lun(paths: HostPaths, rport: RemotePort, lun: int) -> None:
    """Ask ``rport``'s host to probe exactly one LUN behind it (``"C T L"``; never wildcards).
    Synchronous: when this returns, the SCSI device exists if the target reports the LUN to us."""
    if rport.target_id is None:
        raise ValueError(f"{rport.name} has no SCSI target id")
    scsi.scan(paths, rport.host, rport.channel, rport.target_id, lun)


def lun_devices(paths: HostPaths, host: int, wwpn: str, lun: int) -> List[scsi.ScsiDevice]:
    """The SCSI devices at ``lun`` behind target port ``wwpn`` on ``host`` (block name may be None)."""
    out = []
    for channel, tid in target_addresses(paths, host, wwpn):
        dev = scsi.scsi_device(paths, Hctl(host, channel, tid, lun))
        if dev is not None:
            out.append(dev)
    return out


# ---------------------------------------------------------------------------------------------
# /dev/disk/by-path
# ---------------------------------------------------------------------------------------------

def by_path_lun(lun: int) -> str:
    """The LUN part of udev's by-path name: ``lun-5``; from 256 on the 8-byte form udev builds from
    the Linux LUN number (``300`` -> ``lun-0x012c000000000000``)."""
    if lun < 256:
        return f"lun-{lun}"
    return f"lun-0x{lun & 0xFFFF:04x}{(lun >> 16) & 0xFFFF:04x}00000000"


def by_path_suffix(wwpn: str, lun: int) -> str:
    return f"-fc-0x{normalize_wwn(wwpn) or wwpn.lower()}-{by_path_lun(lun)}"


def by_path_name(host: FcHost, wwpn: str, lun: int) -> Optional[str]:
    """The by-path link name udev gives ``lun`` of ``wwpn`` seen through ``host`` (None off PCI).
    Below ``/sys/devices/platform`` udev prefixes the platform device holding the PCI root."""
    pci = pci_address(host)
    if pci is None:
        return None
    parts = host.device_path.split(os.sep)
    prefix = ""
    for i, part in enumerate(parts):
        if _PCI_ROOT_RE.match(part):
            if i > 1 and "platform" in parts[:i - 1]:
                prefix = f"platform-{parts[i - 1]}-"
            break
    return f"{prefix}pci-{pci}{by_path_suffix(wwpn, lun)}"


def by_path_devices(paths: HostPaths, wwpn: str, lun: int) -> Dict[str, str]:
    """``{sdX: by-path link}`` for every link of ``lun`` behind target port ``wwpn`` (any HBA)."""
    suffix = by_path_suffix(wwpn, lun)
    out: Dict[str, str] = {}
    base = paths.devpath("disk", "by-path")
    for entry in paths.listdir(base):
        if entry.endswith(suffix) and "-fc-" in entry:
            link = os.path.join(base, entry)
            name = os.path.basename(paths.realpath(link))
            if paths.exists(paths.sys("block", name)):
                out.setdefault(name, paths.to_host(link))
    return out


__all__ = ["FcHost", "RemotePort", "FCP_TARGET", "fc_host", "fc_hosts", "is_fc_host", "pci_address",
           "read_remote_port", "remote_ports", "transport_targets", "target_addresses", "scan_lun",
           "lun_devices", "by_path_lun", "by_path_suffix", "by_path_name", "by_path_devices"]
