"""``get_connector_properties``: what Cinder needs to know about this host, read from files.

Every standard key comes from a file (no child process): the iSCSI initiator name from
/etc/iscsi/initiatorname.iscsi, FC WWPNs/WWNNs from /sys/class/fc_host, the NVMe host NQN and ID
from /etc/nvme, multipathd's presence from its abstract socket in /proc/net/unix.
"""

from __future__ import annotations

import platform
import socket
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

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


def read_nvme_native_multipath(paths: HostPaths) -> bool:
    """Whether nvme_core does native NVMe multipath (one /dev/nvmeXnY over every controller of a subsystem)."""
    v = paths.read(paths.sys("module", "nvme_core", "parameters", "multipath"), "")
    return (v or "").upper() in ("Y", "1")


def _iscsi_keys(paths: HostPaths) -> Dict[str, Any]:
    name = read_initiator_name(paths)
    return {"initiator": name} if name else {}


def _fc_keys(paths: HostPaths) -> Dict[str, Any]:
    ports = read_fc_ports(paths)
    return {"wwpns": [p[1] for p in ports], "wwnns": [p[2] for p in ports]} if ports else {}


def _nvme_keys(paths: HostPaths) -> Dict[str, Any]:
    out: Dict[str, Any] = dict(read_nvme_ids(paths))
    out["nvme_native_multipath"] = read_nvme_native_multipath(paths)
    return out


# protocol -> reader of its host-connector keys: the one table both get_connector_properties and each
# connector's get_connector_properties read (RBD's only key, do_local_attach, is a caller's choice)
PROTOCOL_KEYS: Mapping[str, Callable[[HostPaths], Dict[str, Any]]] = {
    "iscsi": _iscsi_keys,
    "fibre_channel": _fc_keys,
    "nvmeof": _nvme_keys,
}


def protocol_properties(protocol: str, paths: Optional[HostPaths] = None, **overrides: Any) -> Dict[str, Any]:
    """``protocol``'s keys of the host connector, read from files; ``overrides`` (a connector's own
    options, e.g. its configured ``nqn`` or ``do_local_attach``) replace what was read when not None."""
    reader = PROTOCOL_KEYS.get(protocol)
    out = reader(paths or HostPaths()) if reader is not None else {}
    out.update({k: v for k, v in overrides.items() if v is not None})
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
    ``do_local_attach``, ``nvme_native_multipath``, and where the host has them ``initiator``, ``wwpns``,
    ``wwnns``, ``nqn``, ``nvme_hostid``, ``uuid`` (each protocol's keys from :data:`PROTOCOL_KEYS`). ``multipath`` is true only when asked for and multipathd runs; with
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
    for reader in PROTOCOL_KEYS.values():
        props.update(reader(paths))
    return props
