"""The iSCSI target-helper interface shared by :class:`~blocklink.target.lio.LioTarget` (LIO via
rtslib-fb) and :class:`~blocklink.target.tgt.TgtTarget` (userspace tgtd).

What Cinder's ``lioadm``/``tgtadm`` target helpers do, as a library::

    export = helper.create_export("3f2a...", "/dev/vg/volume-3f2a...")   # target + LUN + CHAP
    info = helper.initialize_connection("3f2a...", connector)            # ACL for the host, IscsiInfo
    helper.terminate_connection("3f2a...", connector)                     # ACL removed
    helper.remove_export("3f2a...")                                       # nothing of the volume left

One target per volume, named ``<iqn_prefix><name_template % volume_id>`` (Cinder:
``iqn.2010-10.org.openstack:volume-<id>``), one LUN, per-volume CHAP credentials (and optionally
mutual CHAP), access limited to the initiator names that ``initialize_connection`` added.

Every input that reaches a target name, a command, a config file or configfs is validated here
first: volume ids (:func:`check_volume_id`), initiator names (:func:`check_iscsi_name`), and the
connector as Cinder's ``validate_connector`` does (iSCSI needs ``initiator``), before anything
changes on the target.
"""

from __future__ import annotations

import abc
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

from blocklink.connection import ConnectionInfo, HostConnector, IscsiInfo, IscsiTarget, Portal
from blocklink.errors import InvalidConnectionInfo, InvalidConnector
from blocklink.locks import LockFactory
from blocklink.masking import Secret, get_logger
from blocklink.target.chap import ChapCredentials

__all__ = ["Export", "Access", "TargetHelper", "ExportingTargetHelper", "HostConnectorLike", "IscsiTargetHelper", "ChapCredentials", "check_volume_id", "check_iscsi_name",
           "validate_connector", "DEFAULT_IQN_PREFIX"]

LOG = get_logger(__name__)

DEFAULT_IQN_PREFIX = "iqn.2010-10.org.openstack:"

# Volume ids end up in IQNs (RFC 3720: lowercase letters, digits, '.', '-', ':'; LIO refuses '_'),
# file names and lock names: a UUID fits, and so does any short lowercase id.
_VOLUME_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,126}[a-z0-9])?$")
_IQN_RE = re.compile(r"^iqn\.[0-9]{4}-(?:0[1-9]|1[0-2])\.[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
                     r"(?::[A-Za-z0-9.:-]+)?$")
_EUI_RE = re.compile(r"^eui\.[0-9A-Fa-f]{16}$")
_NAA_RE = re.compile(r"^naa\.[0-9A-Fa-f]{16}(?:[0-9A-Fa-f]{16})?$")
_PREFIX_RE = re.compile(r"^iqn\.[0-9]{4}-(?:0[1-9]|1[0-2])\.[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[a-z0-9.:-]*)?$")
MAX_ISCSI_NAME = 223


def check_volume_id(v: Any, where: str = "volume_id") -> str:
    if not isinstance(v, str):
        raise InvalidConnectionInfo(where, f"expected a string, got {type(v).__name__}")
    if not _VOLUME_ID_RE.match(v) or ".." in v:
        raise InvalidConnectionInfo(where, f"{v[:64]!r} is not a valid volume id (lowercase letters, digits, "
                                           "'.' and '-', at most 128, starting and ending with a letter or digit)")
    return v


def check_iscsi_name(v: Any, where: str = "initiator", err: type = InvalidConnectionInfo) -> str:
    """An iSCSI name (``iqn.yyyy-mm.reversed.domain[:suffix]``, ``eui.<16 hex>``, ``naa.<16|32 hex>``)."""
    if not isinstance(v, str) or not v:
        raise err(where, "missing" if not v else f"expected a string, got {type(v).__name__}")
    if len(v) > MAX_ISCSI_NAME:
        raise err(where, f"longer than {MAX_ISCSI_NAME} bytes")
    if not (_IQN_RE.match(v) or _EUI_RE.match(v) or _NAA_RE.match(v)):
        raise err(where, f"{v[:64]!r} is not an iSCSI name (iqn.yyyy-mm.domain[:id], eui.<hex>, naa.<hex>)")
    return v


def validate_connector(connector: Union[HostConnector, Mapping[str, Any], None]) -> HostConnector:
    """Cinder's ``validate_connector`` for iSCSI: the connector must name the host's initiator.

    Raises :class:`InvalidConnector` naming ``initiator`` when it is missing or not an iSCSI name.
    """
    if connector is None:
        raise InvalidConnector("connector", "missing")
    hc = connector if isinstance(connector, HostConnector) else HostConnector.from_dict(connector)
    if hc.initiator is None:
        raise InvalidConnector("initiator", "missing: an iSCSI target needs the host's initiator name")
    check_iscsi_name(hc.initiator, "initiator", InvalidConnector)
    return hc


@dataclass(frozen=True)
class Export:
    """What a helper exported for one volume (Cinder keeps this as provider_location/provider_auth)."""

    volume_id: str
    iqn: str
    lun: int
    portals: Tuple[Portal, ...]
    device_path: str
    chap: Optional[ChapCredentials] = None
    mutual_chap: Optional[ChapCredentials] = None
    initiators: Tuple[str, ...] = ()
    tid: Optional[int] = None  # tgtd's target id; LIO has none
    backstore: str = ""        # LIO "block"/"fileio"; tgtd's bstype ("rdwr", "aio")
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)

    def provider_location(self) -> str:
        """Cinder's ``provider_location``: ``ip:port[;ip:port],<tid> <iqn> <lun>``."""
        portals = ";".join(p.address for p in self.portals)
        return f"{portals},{self.tid if self.tid is not None else 1} {self.iqn} {self.lun}"

    def provider_auth(self) -> Optional[Secret]:
        """Cinder's ``provider_auth`` (``CHAP <user> <password>``), as a Secret."""
        if self.chap is None:
            return None
        return Secret(f"CHAP {self.chap.username} {self.chap.password.reveal()}")

    def to_dict(self, reveal: bool = False) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "volume_id": self.volume_id, "target_iqn": self.iqn, "target_lun": self.lun,
            "target_portals": [p.address for p in self.portals], "device_path": self.device_path,
            "initiators": list(self.initiators), "backstore": self.backstore,
            "chap": self.chap.to_dict(reveal) if self.chap else None,
            "mutual_chap": self.mutual_chap.to_dict(reveal) if self.mutual_chap else None,
        }
        if self.tid is not None:
            d["tid"] = self.tid
        return d


@dataclass(frozen=True)
class Access:
    """What a host needs to log in to a volume's target: what ``initialize_connection`` turns into
    connection info. An :class:`Export` has all of it; a helper that would have to read the rest of
    the export back (backing store, live portals) just to answer returns this instead."""

    volume_id: str
    iqn: str
    lun: int
    portals: Tuple[Portal, ...]
    chap: Optional[ChapCredentials] = None
    mutual_chap: Optional[ChapCredentials] = None
    initiators: Tuple[str, ...] = ()


def _portal(p: Union[str, Portal], i: int) -> Portal:
    if isinstance(p, Portal):
        return p
    return Portal.parse(p, f"portals[{i}]")


HostConnectorLike = Union[HostConnector, Mapping[str, Any]]


@runtime_checkable
class TargetHelper(Protocol):
    """What :class:`~blocklink.attach.flow.AttachFlow` needs from a storage target: open a volume to
    one host (returning its connection info) and close it again. Structural: LioTarget, TgtTarget,
    NvmetTarget, RbdTarget and the test fakes conform without inheriting (mypy checks it)."""

    def initialize_connection(self, volume_id: str, host_connector: HostConnectorLike, /, *,
                              access_mode: str = ...) -> Union[ConnectionInfo, Mapping[str, Any]]: ...

    def terminate_connection(self, volume_id: str, host_connector: HostConnectorLike, /) -> None: ...


@runtime_checkable
class ExportingTargetHelper(TargetHelper, Protocol):
    """A target that exports a local device per volume first (iSCSI, NVMe-oF); RBD needs no export.
    ``remove_export`` of a missing export is not an error."""

    def get_export(self, volume_id: str, /) -> Optional[object]: ...

    def create_export(self, volume_id: str, device_path: Optional[str], /, *, size: Optional[int] = ...) -> object: ...

    def remove_export(self, volume_id: str, /) -> None: ...


class IscsiTargetHelper(abc.ABC):
    """One iSCSI target per volume on this storage host.

    ``portals``: the ``ip:port`` addresses initiators reach the target on (the first is the
    primary; several give multipath connection info). ``lock_path``: inter-process locks that
    serialise the calls for one volume (tgtd: per volume, so different volumes run in parallel;
    LIO: one per host, which rtslib-fb needs). ``backing_dir``: where volumes without an explicit ``device_path`` live
    (``<backing_dir>/<volume name>``, files created with ``size=``).
    """

    #: the LUN a volume is exported at (tgtd: 1, LUN 0 is its controller; LIO: 0)
    volume_lun: int = 0
    #: a short name used in lock names and logs
    kind: str = "iscsi"

    def __init__(self, *, portals: Sequence[Union[str, Portal]], iqn_prefix: str = DEFAULT_IQN_PREFIX,
                 name_template: str = "volume-{}", discard: bool = False, backing_dir: Optional[str] = None,
                 lock_path: str = "/run/blocklink/locks") -> None:
        if isinstance(portals, (str, Portal)):
            portals = [portals]
        if not portals:
            raise InvalidConnectionInfo("portals", "at least one portal is needed")
        self.portals: Tuple[Portal, ...] = tuple(_portal(p, i) for i, p in enumerate(portals))
        if not isinstance(iqn_prefix, str) or not _PREFIX_RE.match(iqn_prefix):
            raise InvalidConnectionInfo("iqn_prefix", f"{str(iqn_prefix)[:64]!r} is not a lowercase IQN prefix "
                                                      "such as 'iqn.2010-10.org.openstack:'")
        if name_template.count("{}") != 1:
            raise InvalidConnectionInfo("name_template", "must contain exactly one '{}'")
        self.iqn_prefix = iqn_prefix
        self.name_template = name_template
        self.discard = discard
        if backing_dir is not None and not os.path.isabs(backing_dir):
            raise InvalidConnectionInfo("backing_dir", "expected an absolute path")
        self.backing_dir = backing_dir
        self.locks = LockFactory(lock_path)
        self.target_iqn("probe")  # the prefix + template must give valid names

    # ------------------------------------------------------------------ names
    def volume_name(self, volume_id: str) -> str:
        return self.name_template.format(check_volume_id(volume_id))

    def target_iqn(self, volume_id: str) -> str:
        iqn = self.iqn_prefix + self.volume_name(volume_id)
        return check_iscsi_name(iqn, "volume_id")

    def volume_id_of(self, iqn: str) -> Optional[str]:
        """The volume id behind one of our target IQNs (None for targets this helper does not own)."""
        head, _, tail = self.name_template.partition("{}")
        name = iqn[len(self.iqn_prefix):] if iqn.startswith(self.iqn_prefix) else None
        if name is None or not name.startswith(head) or not name.endswith(tail) or len(name) <= len(head + tail):
            return None
        vid = name[len(head):len(name) - len(tail)]
        return vid if _VOLUME_ID_RE.match(vid) else None

    def _volume_lock(self, volume_id: str) -> Any:
        return self.locks.lock(f"{self.kind}-{self.lock_scope()}-{volume_id}")

    def lock_scope(self) -> str:
        """What distinguishes one target instance from another on this host (tgtd: control port)."""
        return "default"

    # ------------------------------------------------------------------ the interface
    @abc.abstractmethod
    def create_export(self, volume_id: str, device_path: Optional[str] = None, *, size: Optional[int] = None,
                      chap: Union[bool, ChapCredentials, Tuple[str, str], None] = True,
                      mutual_chap: Union[bool, ChapCredentials, Tuple[str, str], None] = False) -> Export:
        """Export ``device_path`` (block device or file) as a new target with one LUN.

        ``chap=True`` generates per-volume credentials; pass credentials to reuse known ones, or
        ``False`` for none. ``mutual_chap`` likewise adds the target's own credentials.
        ``size`` creates a missing backing file of that many bytes (sparse, 0600).
        """

    @abc.abstractmethod
    def remove_export(self, volume_id: str) -> None:
        """Remove the volume's target, LUN, ACLs and CHAP state; a missing export is not an error."""

    @abc.abstractmethod
    def ensure_export(self, volume_id: str, device_path: Optional[str] = None, *, size: Optional[int] = None,
                      chap: Union[bool, ChapCredentials, Tuple[str, str], None] = True,
                      mutual_chap: Union[bool, ChapCredentials, Tuple[str, str], None] = False) -> Export:
        """Make the export exist as recorded (idempotent): re-creates what a restarted target lost."""

    @abc.abstractmethod
    def get_export(self, volume_id: str) -> Optional[Export]:
        """The volume's export as the target has it now, or None."""

    @abc.abstractmethod
    def list_exports(self) -> List[str]:
        """Volume ids of the exports this helper manages on the target."""

    @abc.abstractmethod
    def _allow_initiator(self, volume_id: str, initiator: str) -> Union[Export, Access]:
        """Let ``initiator`` log in to the volume's target (idempotent); returns the export, or at
        least the :class:`Access` part of it (target, LUN, credentials)."""

    @abc.abstractmethod
    def _deny_initiator(self, volume_id: str, initiator: str) -> None:
        """Remove ``initiator``'s access and end its sessions (idempotent; no export is fine)."""

    def initialize_connection(self, volume_id: str, host_connector: Union[HostConnector, Mapping[str, Any]],
                              *, access_mode: str = "rw", encrypted: bool = False) -> IscsiInfo:
        """Allow the connector's initiator and return Cinder-format iSCSI connection info.

        The connector is validated first (:class:`InvalidConnector` naming ``initiator``); nothing
        on the target changes when it is invalid.
        """
        check_volume_id(volume_id)
        hc = validate_connector(host_connector)
        if access_mode not in ("rw", "ro"):
            raise InvalidConnectionInfo("access_mode", "expected 'rw' or 'ro'")
        assert hc.initiator is not None
        export = self._allow_initiator(volume_id, hc.initiator)
        LOG.info("%s: initiator %s allowed on %s", self.kind, hc.initiator, export.iqn)
        return self.connection_info(export, multipath=hc.multipath, access_mode=access_mode, encrypted=encrypted)

    def terminate_connection(self, volume_id: str, host_connector: Union[HostConnector, Mapping[str, Any]]) -> None:
        """Remove the connector's initiator from the volume's ACL and end its sessions."""
        check_volume_id(volume_id)
        hc = validate_connector(host_connector)
        assert hc.initiator is not None
        self._deny_initiator(volume_id, hc.initiator)
        LOG.info("%s: initiator %s removed from volume %s", self.kind, hc.initiator, volume_id)

    def connection_info(self, export: Union[Export, Access], *, multipath: bool = False, access_mode: str = "rw",
                        encrypted: bool = False) -> IscsiInfo:
        """Cinder's ``_get_iscsi_properties`` for an export: plural keys with several portals or multipath."""
        targets = tuple(IscsiTarget(p, export.iqn, export.lun) for p in export.portals)
        form = "both" if len(targets) > 1 or multipath else "single"
        chap, mutual = export.chap, export.mutual_chap
        return IscsiInfo(
            targets=targets, primary=targets[0], form=form, volume_id=export.volume_id, target_discovered=False,
            auth_method="CHAP" if chap else None, auth_username=chap.username if chap else None,
            auth_password=chap.password if chap else None,
            auth_username_in=mutual.username if mutual else None,
            auth_password_in=mutual.password if mutual else None,
            discard=self.discard, encrypted=encrypted, access_mode=access_mode)

    # ------------------------------------------------------------------ helpers for subclasses
    @staticmethod
    def _credentials(value: Union[bool, ChapCredentials, Tuple[str, str], None], where: str,
                     ) -> Optional[ChapCredentials]:
        if value is True:
            return ChapCredentials.generate()
        if value is False or value is None:
            return None
        return ChapCredentials.coerce(value, where)

    def device_path_for(self, volume_id: str, device_path: Optional[str] = None) -> str:
        if device_path is not None:
            return device_path
        if self.backing_dir is None:
            raise InvalidConnectionInfo("device_path", "missing (and the helper has no backing_dir)")
        return os.path.join(self.backing_dir, self.volume_name(volume_id))

    @staticmethod
    def _prepare_backing(device_path: str, size: Optional[int]) -> bool:
        """Check the backing device/file; create a missing file of ``size`` bytes. True if created."""
        if not isinstance(device_path, str) or not device_path.startswith("/") or "\x00" in device_path \
                or "," in device_path or "\n" in device_path:
            raise InvalidConnectionInfo("device_path", "expected an absolute path without ',' or newlines")
        if os.path.exists(device_path):
            return False
        if size is None:
            raise InvalidConnectionInfo("device_path", f"{device_path} does not exist (pass size= to create a file)")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % 512:
            raise InvalidConnectionInfo("size", "expected a positive multiple of 512 bytes")
        fd = os.open(device_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return True
