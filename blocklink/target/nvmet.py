"""The Linux kernel NVMe target (nvmet) as a Cinder-style target helper.

:class:`NvmetTarget` keeps one subsystem per volume (``<nqn_prefix><name_template % volume_id>``)
with one namespace whose ``device_uuid`` derives from the volume id (the id itself when it is a
UUID), so the connection info's ``vol_uuid`` finds the namespace on the host. Access is the
subsystem's host-NQN ACL: ``initialize_connection`` links the connector's ``nqn`` into
``allowed_hosts``. It offers the same calls as the iSCSI helpers of :mod:`blocklink.target.base`
(``create_export``/``ensure_export``/``remove_export``/``initialize_connection``/``terminate_connection``)
with NVMe-oF connection info. configfs (:mod:`blocklink.target.nvmet_config`) is the only state:
what the kernel shows is what exists.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid as uuid_lib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from blocklink.connection import HostConnector, NvmeofInfo, NvmePortal, Portal, check_name
from blocklink.dhchap import HostAuth
from blocklink.errors import ExportNotFound, InvalidConnectionInfo, InvalidConnector, TargetError
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.locks import LockFactory
from blocklink.masking import get_logger
from blocklink.target.base import IscsiTargetHelper, check_volume_id
from blocklink.target.nvmet_config import ConfigFS, NvmetConfig, adrfam, mount_fs_type, same_ip

LOG = get_logger(__name__)

DEFAULT_NQN_PREFIX = "nqn.2010-10.org.openstack:"
DEFAULT_PORT = 4420
_UUID_NAMESPACE = uuid_lib.UUID("6c1f2d4e-9a7b-5c3d-8e2f-0b1a2c3d4e5f")  # blocklink's uuid5 namespace
MAX_NQN = 223
# nvmet's file backend takes the LBA size from the inode's i_blkbits, which overlayfs leaves at 0
_NO_FILE_BACKEND_FS = ("overlay",)

__all__ = ["NvmetExport", "NvmetTarget", "validate_nvme_connector", "volume_uuid"]


# ---------------------------------------------------------------------------------------------
# the target helper
# ---------------------------------------------------------------------------------------------

def volume_uuid(volume_id: str) -> str:
    """The namespace UUID for a volume: the id itself when it is a UUID (Cinder's), else a stable uuid5."""
    try:
        return str(uuid_lib.UUID(volume_id))
    except ValueError:
        return str(uuid_lib.uuid5(_UUID_NAMESPACE, volume_id))


def validate_nvme_connector(connector: Union[HostConnector, Mapping[str, Any], None]) -> HostConnector:
    """Cinder's ``validate_connector`` for NVMe-oF: the connector must carry the host's ``nqn``."""
    if connector is None:
        raise InvalidConnector("connector", "missing")
    hc = connector if isinstance(connector, HostConnector) else HostConnector.from_dict(connector)
    if not hc.nqn:
        raise InvalidConnector("nqn", "missing: an NVMe-oF target needs the host's NQN (/etc/nvme/hostnqn)")
    if not hc.nqn.startswith("nqn.") or len(hc.nqn) > MAX_NQN:
        raise InvalidConnector("nqn", f"{hc.nqn[:64]!r} is not an NVMe qualified name (nqn.yyyy-mm.domain:...)")
    return hc


@dataclass(frozen=True)
class NvmetExport:
    """One volume's subsystem as the target has it."""

    volume_id: str
    nqn: str
    nsid: int
    portals: Tuple[Portal, ...]
    transport: str
    device_path: str
    device_uuid: str
    hosts: Tuple[str, ...] = ()
    buffered_io: bool = False
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        return {"volume_id": self.volume_id, "target_nqn": self.nqn, "ns_id": self.nsid,
                "portals": [[p.host, p.port, self.transport] for p in self.portals],
                "device_path": self.device_path, "device_uuid": self.device_uuid, "hosts": list(self.hosts),
                "buffered_io": self.buffered_io}


class NvmetTarget:
    """One nvmet subsystem per volume, exposed on ``portals`` over ``transport``.

    ``portals``: ``"ip[:port]"`` strings or :class:`~blocklink.connection.Portal` (port 4420 by
    default); several give multipath connection info. ``buffered_io``: None decides per backing
    file (buffered when the file system refuses O_DIRECT, e.g. tmpfs; never for block devices).
    ``backing_dir``: where volumes without an explicit ``device_path`` live. ``lock_path``: per-volume
    inter-process locks, plus one short lock around the shared ports and host entries.
    """

    kind = "nvmet"

    def __init__(self, *, portals: Sequence[Union[str, Portal]] = ("127.0.0.1:4420",), transport: str = "tcp",
                 nqn_prefix: str = DEFAULT_NQN_PREFIX, name_template: str = "volume-{}",
                 buffered_io: Optional[bool] = None, backing_dir: Optional[str] = None, discard: bool = False,
                 lock_path: str = "/run/blocklink/locks", paths: Optional[HostPaths] = None,
                 executor: Optional[Executor] = None, configfs: Optional[ConfigFS] = None) -> None:
        if isinstance(portals, (str, Portal)):
            portals = [portals]
        if not portals:
            raise InvalidConnectionInfo("portals", "at least one portal is needed")
        self.portals: Tuple[Portal, ...] = tuple(
            p if isinstance(p, Portal) else Portal.parse(p, f"portals[{i}]", default_port=DEFAULT_PORT)
            for i, p in enumerate(portals))
        if transport not in ("tcp", "rdma", "fc", "loop"):
            raise InvalidConnectionInfo("transport", f"unknown transport {transport!r}")
        for p in self.portals:
            adrfam(p.host, transport)  # nvmet needs addresses, not names
        if name_template.count("{}") != 1:
            raise InvalidConnectionInfo("name_template", "must contain exactly one '{}'")
        self.transport = transport
        self.nqn_prefix = nqn_prefix
        self.name_template = name_template
        self.buffered_io = buffered_io
        self.discard = discard
        if backing_dir is not None and not os.path.isabs(backing_dir):
            raise InvalidConnectionInfo("backing_dir", "expected an absolute path")
        self.backing_dir = backing_dir
        self.paths = paths or HostPaths()
        self.config = NvmetConfig(self.paths, configfs, executor)
        self.locks = LockFactory(lock_path)
        self.subsystem_nqn("probe")  # the prefix + template must give valid names

    # ------------------------------------------------------------------ names
    def volume_name(self, volume_id: str) -> str:
        return self.name_template.format(check_volume_id(volume_id))

    def subsystem_nqn(self, volume_id: str) -> str:
        nqn = self.nqn_prefix + self.volume_name(volume_id)
        if not nqn.startswith("nqn."):
            raise InvalidConnectionInfo("nqn_prefix", f"{self.nqn_prefix!r} does not start an NQN ('nqn.')")
        return check_name(nqn, "volume_id", max_len=MAX_NQN)

    def volume_id_of(self, nqn: str) -> Optional[str]:
        head, _, tail = self.name_template.partition("{}")
        if not nqn.startswith(self.nqn_prefix + head) or not nqn.endswith(tail):
            return None
        vid = nqn[len(self.nqn_prefix + head):len(nqn) - len(tail)]
        try:
            return check_volume_id(vid)
        except InvalidConnectionInfo:
            return None

    def _volume_lock(self, volume_id: str) -> Any:
        return self.locks.lock(f"nvmet-{volume_id}")

    def _shared_lock(self) -> Any:
        return self.locks.lock("nvmet-ports-hosts")

    # ------------------------------------------------------------------ exports
    def create_export(self, volume_id: str, device_path: Optional[str] = None, *,
                      size: Optional[int] = None) -> NvmetExport:
        """Export ``device_path`` (block device or file) as a new subsystem with namespace 1.

        ``size`` creates a missing backing file of that many bytes (sparse, 0600).
        """
        nqn = self.subsystem_nqn(volume_id)
        path = self._device_path(volume_id, device_path)
        with self._volume_lock(volume_id):
            if self.config.has_subsystem(nqn):
                raise TargetError(nqn, "already exported (use ensure_export to re-apply)")
            return self._create(volume_id, nqn, path, size)

    def ensure_export(self, volume_id: str, device_path: Optional[str] = None, *,
                      size: Optional[int] = None) -> NvmetExport:
        """Make the export exist (idempotent): re-creates a lost subsystem, namespace or port link.

        Allowed hosts of a surviving subsystem stay; after a target reboot the hosts are added back
        by ``initialize_connection``.
        """
        nqn = self.subsystem_nqn(volume_id)
        with self._volume_lock(volume_id):
            if not self.config.has_subsystem(nqn):
                return self._create(volume_id, nqn, self._device_path(volume_id, device_path), size)
            ns = self.config.namespaces(nqn).get(1)
            if ns is None or not ns.enabled:
                path = device_path or (ns.device_path if ns else None) or self._device_path(volume_id, None)
                self.config.remove_namespace(nqn, 1)
                IscsiTargetHelper._prepare_backing(path, size)
                self._check_backing(path)
                self.config.add_namespace(nqn, 1, path, volume_uuid(volume_id), buffered_io=self._buffered(path))
            self._expose(nqn)
            export = self._export(volume_id, nqn)
            assert export is not None
            return export

    def remove_export(self, volume_id: str) -> None:
        """Remove the subsystem, its namespace, host links, and ports left without subsystems."""
        nqn = self.subsystem_nqn(volume_id)
        with self._volume_lock(volume_id), self._shared_lock():
            self.config.delete_subsystem(nqn)
            self._drop_idle_ports()
        LOG.info("nvmet: removed export %s", nqn)

    def get_export(self, volume_id: str) -> Optional[NvmetExport]:
        return self._export(volume_id, self.subsystem_nqn(volume_id))

    def list_exports(self) -> List[str]:
        return sorted(v for v in (self.volume_id_of(n) for n in self.config.subsystems()) if v is not None)

    def revalidate_size(self, volume_id: str) -> int:
        """After the backing device or file grew: make nvmet re-read its size; returns it in bytes."""
        nqn = self.subsystem_nqn(volume_id)
        with self._volume_lock(volume_id):
            ns = self.config.namespaces(nqn).get(1)
            if ns is None:
                raise ExportNotFound(nqn, "volume is not exported")
            self.config.revalidate_size(nqn, 1)
            return _backing_size(ns.device_path)

    # ------------------------------------------------------------------ connections
    def initialize_connection(self, volume_id: str, host_connector: Union[HostConnector, Mapping[str, Any]],
                              *, access_mode: str = "rw", encrypted: bool = False,
                              host_auth: Optional[HostAuth] = None) -> NvmeofInfo:
        """Allow the connector's host NQN on the volume's subsystem; returns NVMe-oF connection info.

        With ``host_auth`` (:class:`blocklink.dhchap.HostAuth`, e.g. ``HostAuth.generate(bidirectional=True)``)
        the host must authenticate with DH-HMAC-CHAP; the info then carries ``dhchap_secret`` (and
        ``dhchap_ctrl_secret`` for bidirectional auth), masked in logs and repr. A target kernel without
        NVMe authentication raises :class:`AuthenticationUnsupported` and allows nothing.

        The connector is validated first (:class:`InvalidConnector` naming ``nqn``); nothing on the
        target changes when it is invalid.
        """
        check_volume_id(volume_id)
        hc = validate_nvme_connector(host_connector)
        if access_mode not in ("rw", "ro"):
            raise InvalidConnectionInfo("access_mode", "expected 'rw' or 'ro'")
        assert hc.nqn is not None
        nqn = self.subsystem_nqn(volume_id)
        with self._volume_lock(volume_id):
            if not self.config.has_subsystem(nqn):
                raise ExportNotFound(nqn, "volume is not exported")
            with self._shared_lock():
                self.config.allow_host(nqn, hc.nqn, host_auth)
            export = self._export(volume_id, nqn)
        if export is None:
            raise ExportNotFound(nqn, "volume is not exported")
        LOG.info("nvmet: host %s allowed on %s", hc.nqn, nqn)
        info = self.connection_info(export, access_mode=access_mode, encrypted=encrypted)
        if host_auth is not None:
            info = dataclasses.replace(info, dhchap_secret=host_auth.key, dhchap_ctrl_secret=host_auth.ctrl_key)
        return info

    def terminate_connection(self, volume_id: str,
                             host_connector: Union[HostConnector, Mapping[str, Any], None]) -> None:
        """Remove the connector's host NQN from the subsystem (every host when ``None``, as on force-detach).

        nvmet keeps controllers that are already connected; the host ends them with disconnect_volume.
        """
        check_volume_id(volume_id)
        nqn = self.subsystem_nqn(volume_id)
        if host_connector is None:
            hosts = None
        else:
            hc = validate_nvme_connector(host_connector)
            assert hc.nqn is not None
            hosts = [hc.nqn]
        with self._volume_lock(volume_id), self._shared_lock():
            if not self.config.has_subsystem(nqn):
                return
            for h in hosts if hosts is not None else self.config.allowed_hosts(nqn):
                self.config.deny_host(nqn, h)
        LOG.info("nvmet: %s removed from %s", ", ".join(hosts) if hosts else "every host", nqn)

    def connection_info(self, export: NvmetExport, *, access_mode: str = "rw", encrypted: bool = False,
                        ) -> NvmeofInfo:
        """os-brick's new NVMe-oF form: ``target_nqn``, ``portals``, ``vol_uuid`` (+ ``ns_id``)."""
        return NvmeofInfo(
            target_nqn=export.nqn, form="new",
            portals=tuple(NvmePortal(p.host, p.port, export.transport) for p in export.portals),
            vol_uuid=export.device_uuid, ns_id=export.nsid, volume_id=export.volume_id,
            discard=self.discard or None, encrypted=encrypted, access_mode=access_mode)

    # ------------------------------------------------------------------ mechanics
    def _device_path(self, volume_id: str, device_path: Optional[str]) -> str:
        if device_path is not None:
            return device_path
        if self.backing_dir is None:
            raise InvalidConnectionInfo("device_path", "missing (and the helper has no backing_dir)")
        return os.path.join(self.backing_dir, self.volume_name(volume_id))

    def _check_backing(self, device_path: str) -> None:
        """Refuse a file nvmet would serve with a broken geometry (before anything is configured)."""
        if _is_block(device_path):
            return
        fstype = mount_fs_type(self.paths, device_path)
        if fstype in _NO_FILE_BACKEND_FS:
            raise InvalidConnectionInfo(
                "device_path", f"{device_path} is on {fstype}, where nvmet's file backend gets a 1-byte logical "
                               "block size (hosts see an empty namespace): use a block device (a loop device "
                               "over the file) or a file on another file system")

    def _buffered(self, device_path: str) -> bool:
        if self.buffered_io is not None:
            return self.buffered_io
        return not _is_block(device_path) and not _supports_direct_io(device_path)

    def _create(self, volume_id: str, nqn: str, path: str, size: Optional[int]) -> NvmetExport:
        created_file = IscsiTargetHelper._prepare_backing(path, size)
        made = False
        try:
            self._check_backing(path)
            self.config.ensure_ready(self.transport)
            self.config.create_subsystem(nqn, allow_any_host=False, serial=_serial(volume_id))
            made = True
            self.config.add_namespace(nqn, 1, path, volume_uuid(volume_id), buffered_io=self._buffered(path))
            self._expose(nqn)
        except BaseException:
            with self._shared_lock():
                if made:
                    self._quiet_delete(nqn)
                self._drop_idle_ports()
            if created_file:
                os.unlink(path)
            raise
        export = self._export(volume_id, nqn)
        assert export is not None
        LOG.info("nvmet: exported %s as %s (namespace 1, %s)", path, nqn,
                 ", ".join(p.address for p in self.portals))
        return export

    def _expose(self, nqn: str) -> None:
        with self._shared_lock():
            for p in self.portals:
                port = self.config.find_port(self.transport, p.host, p.port)
                port_id = port.port_id if port else self.config.create_port(self.transport, p.host, p.port)
                self.config.link_port(port_id, nqn)

    def _drop_idle_ports(self) -> None:
        """Remove our portals' ports that no subsystem uses any more (a port of ours, by address)."""
        for port in self.config.ports():
            if port.subsystems:
                continue
            if any(port.trtype == self.transport and port.trsvcid == str(p.port) and same_ip(port.traddr, p.host)
                   for p in self.portals):
                self.config.remove_port(port.port_id)

    def _quiet_delete(self, nqn: str) -> None:
        try:
            self.config.delete_subsystem(nqn)
        except TargetError as e:
            LOG.error("nvmet: rollback of %s incomplete: %s", nqn, e)

    def _export(self, volume_id: str, nqn: str) -> Optional[NvmetExport]:
        if not self.config.has_subsystem(nqn):
            return None
        ns = self.config.namespaces(nqn).get(1)
        exposed = [p for p in self.config.ports() if nqn in p.subsystems]
        portals = tuple(p for p in self.portals if any(
            x.trtype == self.transport and x.trsvcid == str(p.port) and same_ip(x.traddr, p.host) for x in exposed))
        return NvmetExport(volume_id=volume_id, nqn=nqn, nsid=1, portals=portals or self.portals,
                           transport=self.transport, device_path=ns.device_path if ns else "",
                           device_uuid=ns.device_uuid if ns else volume_uuid(volume_id),
                           hosts=tuple(self.config.allowed_hosts(nqn)), buffered_io=bool(ns and ns.buffered_io),
                           extra={"enabled": bool(ns and ns.enabled), "exposed": bool(exposed)})


def _serial(volume_id: str) -> str:
    """A 20-character serial (the NVMe field's width) unique per volume."""
    return uuid_lib.UUID(volume_uuid(volume_id)).hex[:20]


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _supports_direct_io(path: str) -> bool:
    """Whether the file can be opened with O_DIRECT (tmpfs before Linux 6.6 cannot)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise InvalidConnectionInfo("device_path", f"cannot open {path}: {e.strerror}") from None
    os.close(fd)
    return True


def _backing_size(path: str) -> int:
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)
