"""``get_connector_properties``: what Cinder needs to know about this host, read from files.

Every standard key comes from a file (no child process): the iSCSI initiator name from
/etc/iscsi/initiatorname.iscsi, FC WWPNs/WWNNs from /sys/class/fc_host, the NVMe host NQN and ID
from /etc/nvme, multipathd's presence from its abstract socket in /proc/net/unix.
"""

from __future__ import annotations

import platform
import socket
import sys
from typing import Any, Dict, List, Optional, Tuple

from blocklink.connection import normalize_wwn
from blocklink.errors import MultipathdNotRunning
from blocklink.hostpaths import HostPaths

MULTIPATHD_SOCKET = "@/org/kernel/linux/storage/multipathd"


def read_initiator_name(paths: HostPaths) -> Optional[str]:
    text = paths.read(paths.etcpath("iscsi", "initiatorname.iscsi"))
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("InitiatorName="):
            name = line.split("=", 1)[1].strip()
            return name or None
    return None


def read_fc_ports(paths: HostPaths, online_only: bool = True) -> List[Tuple[str, str, str]]:
    """(host name, WWPN, WWNN) of the FC HBAs, lower-case hex without 0x."""
    out = []
    base = paths.sys("class", "fc_host")
    for host in paths.listdir(base):
        state = paths.read(paths.sys("class", "fc_host", host, "port_state"), "")
        if online_only and state != "Online":
            continue
        wwpn = normalize_wwn(paths.read(paths.sys("class", "fc_host", host, "port_name"), "") or "")
        wwnn = normalize_wwn(paths.read(paths.sys("class", "fc_host", host, "node_name"), "") or "")
        if wwpn and wwnn:
            out.append((host, wwpn, wwnn))
    return out


def multipathd_running(paths: HostPaths) -> bool:
    text = paths.read(paths.procpath("net", "unix"), "") or ""
    return any(line.rstrip().endswith(MULTIPATHD_SOCKET) for line in text.splitlines())


def read_nvme_ids(paths: HostPaths) -> Dict[str, str]:
    out = {}
    nqn = paths.read(paths.etcpath("nvme", "hostnqn"))
    if nqn:
        out["nqn"] = nqn
    hostid = paths.read(paths.etcpath("nvme", "hostid"))
    if hostid:
        out["nvme_hostid"] = hostid
    uuid = paths.read(paths.sys("class", "dmi", "id", "product_uuid"))
    if uuid:
        out["uuid"] = uuid.lower()
    return out


def _default_ip() -> str:
    """The source address of the default route: a UDP connect only consults the routing table."""
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))  # no packet is sent by connect() on a UDP socket
                return str(s.getsockname()[0])
        except OSError:
            continue
    return "127.0.0.1"


def get_connector_properties(*, ip: Optional[str] = None, host: Optional[str] = None,
                             multipath: bool = False, enforce_multipath: bool = False,
                             do_local_attach: bool = False,
                             paths: Optional[HostPaths] = None) -> Dict[str, Any]:
    """The host connector dict in os-brick's format.

    Keys: ``platform``, ``os_type``, ``ip``, ``host``, ``multipath``, ``enforce_multipath``,
    ``do_local_attach``, and where the host has them ``initiator``, ``wwpns``, ``wwnns``, ``nqn``,
    ``nvme_hostid``, ``uuid``. ``multipath`` is true only when asked for and multipathd runs; with
    ``enforce_multipath`` a missing multipathd raises :class:`MultipathdNotRunning`.
    """
    paths = paths or HostPaths()
    mp = False
    if multipath:
        mp = multipathd_running(paths)
        if not mp and enforce_multipath:
            raise MultipathdNotRunning()
    props: Dict[str, Any] = {
        "platform": platform.machine(),
        "os_type": sys.platform,
        "ip": ip or _default_ip(),
        "host": host or socket.gethostname(),
        "multipath": mp,
        "enforce_multipath": enforce_multipath,
        "do_local_attach": do_local_attach,
    }
    initiator = read_initiator_name(paths)
    if initiator:
        props["initiator"] = initiator
    ports = read_fc_ports(paths)
    if ports:
        props["wwpns"] = [p[1] for p in ports]
        props["wwnns"] = [p[2] for p in ports]
    props.update(read_nvme_ids(paths))
    return props
