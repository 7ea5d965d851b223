"""os-brick/Cinder connection info (+ the host device, if any) -> :class:`DiskConfig` -> ``<disk>`` XML.

Two ways a volume reaches a guest:

* **host-attached**: a connector made a block device (iSCSI/FC/NVMe session, ``rbd map``) or a file
  (userspace export) on the host -> ``type='block'`` (or ``'file'``) with that path. The path comes
  from ``device`` (:class:`~blocklink.connection.AttachedDevice`) or, as Nova stores it, from
  ``data.device_path``.
* **QEMU-native**: no host device -> ``type='network'``: ``rbd`` (every monitor, cephx user and
  ``ceph`` secret) or ``iscsi`` (``IQN/LUN`` on the first portal, CHAP through an ``iscsi`` secret).

The rest follows Nova's volume drivers: ``serial`` and the ``ua-<volume id>`` alias, ``readonly``
for ``access_mode='ro'``, ``shareable`` for multiattach, ``discard='unmap'`` when ``data.discard``
is True, ``io='native'`` for host block devices of iSCSI/FC/RBD (not NVMe, as in Nova), cache
``none`` forced on a shareable disk (Nova's rule: a host cache on a shared disk corrupts data), ``<blockio>`` from the
block sizes, ``<iotune>`` from ``qos_specs`` (:mod:`blocklink.hypervisor.qos`) and LUKS
``<encryption>`` when given the passphrase secret's UUID.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Tuple, Union

from blocklink.connection import AttachedDevice, ConnectionInfo, IscsiInfo, RbdInfo, parse_connection_info
from blocklink.errors import InvalidConnectionInfo
from blocklink.hypervisor.disk import (BlockSource, DiskAuth, DiskConfig, DiskDriver, DiskEncryption, DriveAddress,
                                       FileSource, InvalidDiskConfig, NetworkHost, NetworkSource, Source)
from blocklink.hypervisor.qos import iotune_from_qos
from blocklink.hypervisor.xml import format_disk
from blocklink.masking import get_logger

LOG = get_logger(__name__)

__all__ = ["AUTO", "disk_config", "disk_xml", "VolumeView"]


class _Auto:
    """Marker for "derive it from the connection info" (distinct from None = "leave it out")."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()
# Nova sets io='native' for host block devices in iscsi.py, fibrechannel.py and net.py (an RBD
# block device), not in nvme.py: NVMe disks keep QEMU's default aio mode, as under Nova
_NATIVE_IO_PROTOCOLS = ("iscsi", "fibre_channel", "rbd")
_ALIAS_OK = re.compile(r"^[a-zA-Z0-9_\-.]+$")


class VolumeView:
    """The facts about a volume the XML needs, from a typed info or a raw dict (Nova's shape)."""

    def __init__(self, connection_info: Any, protocol: Optional[str] = None) -> None:
        self.typed: Optional[ConnectionInfo] = None
        if isinstance(connection_info, ConnectionInfo):
            self.typed = connection_info
            self.protocol: Optional[str] = connection_info.driver_volume_type
            self.envelope: Mapping[str, Any] = connection_info.envelope
            self.extra: Mapping[str, Any] = connection_info.extra
            return
        if not isinstance(connection_info, Mapping):
            raise InvalidConnectionInfo("connection_info", f"expected a dict or typed info, got "
                                                           f"{type(connection_info).__name__}")
        data = connection_info.get("data", {})
        if not isinstance(data, Mapping):
            raise InvalidConnectionInfo("data", f"expected a dict, got {type(data).__name__}")
        dvt = connection_info.get("driver_volume_type")
        if dvt is not None and not isinstance(dvt, str):
            raise InvalidConnectionInfo("driver_volume_type", "not a string")
        self.protocol = protocol
        if dvt:
            try:  # a known protocol: validate every field the typed model knows
                self.typed = parse_connection_info(connection_info)
                self.protocol = self.typed.driver_volume_type
            except InvalidConnectionInfo as e:
                if e.field != "driver_volume_type":  # (that one only means: not a known protocol)
                    raise
        # "fake", "local" or no type at all (Nova's test shapes): only the generic keys matter
        self.envelope = {k: v for k, v in connection_info.items() if k != "data"}
        self.extra = data

    def get(self, key: str) -> Any:
        """A ``data`` key: from the typed model's attributes, else its unparsed extras."""
        if self.typed is not None and key in getattr(self.typed, "__dataclass_fields__", {}) and key != "extra":
            return getattr(self.typed, key)
        return self.extra.get(key)

    @property
    def volume_id(self) -> Optional[str]:
        v = self.get("volume_id")
        return v if isinstance(v, str) and v else None

    def access_mode(self) -> Optional[str]:
        mode = self.get("access_mode")
        if mode in (None, ""):
            return None
        if mode not in ("rw", "ro"):
            raise InvalidConnectionInfo("data.access_mode", f"expected 'rw' or 'ro', got {str(mode)[:40]!r}")
        return str(mode)


def _source(view: VolumeView, device: Union[AttachedDevice, Mapping[str, Any], None], initiator_iqn: Optional[str],
            rbd_config_file: Optional[str]) -> Tuple[Source, bool]:
    """(source, host_attached)."""
    if device is not None:
        if not isinstance(device, AttachedDevice):
            device = AttachedDevice.from_dict(device, view.protocol or "")
        if device.path is None:
            raise InvalidConnectionInfo("device", "the attached device has no path (an in-process handle "
                                                  "cannot be given to a VM; use device=None for a network disk)")
        if device.type == "socket":  # an NBD / vhost-user socket is neither a file nor a block node
            raise InvalidConnectionInfo("device", f"{device.path} is a {device.type} export; attach the volume "
                                                  "with a file bridge or on the host for a VM disk")
        return (FileSource(device.path) if device.type == "file" else BlockSource(device.path)), True
    path = view.get("device_path")
    if path is not None:
        if not isinstance(path, str):
            raise InvalidConnectionInfo("data.device_path", "expected a string")
        return BlockSource(path), True
    info = view.typed
    if isinstance(info, RbdInfo):
        hosts = tuple(NetworkHost(h, p) for h, p in info.monitors)
        return NetworkSource("rbd", info.name, hosts, config_file=rbd_config_file), False
    if isinstance(info, IscsiInfo):
        t = info.primary or info.targets[0]
        return NetworkSource("iscsi", f"{t.iqn}/{t.lun}", (NetworkHost(t.portal.host, t.portal.port),),
                             initiator_iqn), False
    what = view.protocol or "this volume"
    raise InvalidConnectionInfo("device", f"{what} has no QEMU-native form: connect it on the host first and "
                                          "pass the AttachedDevice (or data.device_path)")


def _rbd_auth(info: RbdInfo, secret_uuid: Optional[str], rbd_user: Optional[str],
              rbd_secret_uuid: Optional[str]) -> Optional[DiskAuth]:
    """Cinder's auth values win; Nova's host-config fallback for pre-Ocata infos is kept."""
    if info.secret_type not in (None, "ceph"):
        raise InvalidConnectionInfo("data.secret_type", f"expected 'ceph', got {info.secret_type[:40]!r}")
    if info.auth_enabled:
        if info.secret_uuid is not None or secret_uuid is not None:
            user, uuid = info.auth_username, secret_uuid or info.secret_uuid
        else:
            user, uuid = rbd_user or info.auth_username, rbd_secret_uuid
            if uuid is None:
                raise InvalidConnectionInfo("data.secret_uuid", "auth is enabled but no libvirt secret UUID is "
                                                                "known (pass secret_uuid= or rbd_secret_uuid=)")
    elif secret_uuid is not None or rbd_secret_uuid is not None:
        user, uuid = rbd_user or info.auth_username, secret_uuid or rbd_secret_uuid
    else:
        return None
    if not user:
        raise InvalidConnectionInfo("data.auth_username", "missing (the cephx user QEMU connects as)")
    return DiskAuth(user, "ceph", secret_uuid=uuid)


def _iscsi_auth(info: IscsiInfo, secret_uuid: Optional[str], secret_usage: Optional[str]) -> Optional[DiskAuth]:
    if info.auth_username_in or info.auth_password_in:
        raise InvalidConnectionInfo("data.auth_username_in", "mutual CHAP is not supported by QEMU's iSCSI "
                                                             "initiator; connect the volume on the host instead")
    if not info.chap:
        if info.auth_method not in (None, "", "None", "none"):
            raise InvalidConnectionInfo("data.auth_method", f"unsupported {info.auth_method[:20]!r} (only CHAP)")
        return None
    if not info.auth_username:
        raise InvalidConnectionInfo("data.auth_username", "CHAP without a user name")
    if secret_uuid is None and secret_usage is None:
        raise InvalidConnectionInfo("secret_uuid", "CHAP needs a libvirt 'iscsi' secret holding the password: "
                                                   "define one (blocklink.hypervisor.secrets) and pass secret_uuid=")
    return DiskAuth(info.auth_username, "iscsi", secret_uuid=secret_uuid,
                    secret_usage=None if secret_uuid is not None else secret_usage)


def _block_size(view: VolumeView, key: str, given: Any) -> Optional[int]:
    v = view.get(key) if given is AUTO else given
    if v is None:
        return None
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise InvalidConnectionInfo(f"data.{key}", f"expected an integer, got {str(v)[:20]!r}")


def disk_config(connection_info: Union[ConnectionInfo, Mapping[str, Any]],
                device: Union[AttachedDevice, Mapping[str, Any], None] = None, *, target_dev: str,
                bus: str = "virtio", device_type: str = "disk", protocol: Optional[str] = None,
                driver_name: Optional[str] = "qemu", driver_format: Optional[str] = "raw",
                cache: Optional[str] = "none", io: Any = AUTO, discard: Any = AUTO, serial: Any = AUTO,
                alias: Any = AUTO, readonly: Optional[bool] = None, shareable: Optional[bool] = None,
                qos_specs: Any = AUTO, volume_size_gb: Optional[int] = None,
                secret_uuid: Optional[str] = None, secret_usage: Optional[str] = None,
                rbd_user: Optional[str] = None, rbd_secret_uuid: Optional[str] = None,
                encryption_secret_uuid: Optional[str] = None, unit: Optional[int] = None,
                boot_order: Optional[int] = None, logical_block_size: Any = AUTO, physical_block_size: Any = AUTO,
                initiator_iqn: Optional[str] = None, rbd_config_file: Optional[str] = None) -> DiskConfig:
    """Build the typed disk for a volume. See :func:`disk_xml` for the options."""
    view = VolumeView(connection_info, protocol)
    source, host_attached = _source(view, device, initiator_iqn, rbd_config_file)
    is_lun = device_type == "lun"

    auth = None
    if not host_attached:
        if isinstance(view.typed, RbdInfo):
            auth = _rbd_auth(view.typed, secret_uuid, rbd_user, rbd_secret_uuid)
        elif isinstance(view.typed, IscsiInfo):
            auth = _iscsi_auth(view.typed, secret_uuid, secret_usage)

    if shareable is None:
        shareable = bool(view.envelope.get("multiattach", False))
    if shareable and cache not in (None, "none"):
        # as Nova's driver does: a host page cache on a disk other hosts write corrupts data
        LOG.warning("disk of volume %s is shareable (multiattach): cache %r replaced by 'none'", view.volume_id or "?",
                    cache)
        cache = "none"
    if io is AUTO:
        io = ("native" if host_attached and isinstance(source, BlockSource) and cache in ("none", "directsync")
              and view.protocol in _NATIVE_IO_PROTOCOLS else None)
    if discard is AUTO:
        discard = "unmap" if view.get("discard") is True else None

    vol_id = view.volume_id
    env_serial = view.envelope.get("serial")
    if serial is AUTO:
        serial = None if is_lun else (env_serial if isinstance(env_serial, str) and env_serial else vol_id)
    if alias is AUTO:
        ident = vol_id or (env_serial if isinstance(env_serial, str) else None)
        alias = f"ua-{ident}" if ident and _ALIAS_OK.match(ident) else None

    if qos_specs is AUTO:
        qos_specs = view.get("qos_specs")
    iotune = iotune_from_qos(qos_specs, size_gb=volume_size_gb, where="data.qos_specs")

    mode = view.access_mode()
    if readonly is None:
        readonly = mode == "ro"

    if view.get("encrypted") is True and encryption_secret_uuid is None:
        LOG.warning("volume %s is encrypted but no LUKS secret was given: the guest sees the device as is "
                    "(decrypt it on the host, or pass encryption_secret_uuid=)", vol_id or "?")
    address = None
    if unit is not None:
        if bus != "scsi":
            raise InvalidDiskConfig("unit", "a unit number applies to the scsi bus only")
        address = DriveAddress(controller=0, unit=unit)

    return DiskConfig(
        source=source, target_dev=target_dev, bus=bus, device=device_type,
        driver=DiskDriver(name=driver_name, format=driver_format, cache=cache, io=io, discard=discard),
        alias=alias, auth=auth, serial=serial, iotune=iotune,
        logical_block_size=None if is_lun else _block_size(view, "logical_block_size", logical_block_size),
        physical_block_size=None if is_lun else _block_size(view, "physical_block_size", physical_block_size),
        readonly=readonly, shareable=shareable, boot_order=boot_order, address=address,
        encryption=DiskEncryption(encryption_secret_uuid) if encryption_secret_uuid else None)


def disk_xml(connection_info: Union[ConnectionInfo, Mapping[str, Any]],
             device: Union[AttachedDevice, Mapping[str, Any], None] = None, *, target_dev: str,
             bus: str = "virtio", **options: Any) -> str:
    """The libvirt ``<disk>`` XML for a volume.

    ``connection_info``: the os-brick/Cinder dict (``{"driver_volume_type", "data", "serial",
    "multiattach"}``) or a typed info. ``device``: what ``connect_volume`` returned when the volume
    is connected on the host (block device or file); None for a QEMU-native rbd/iscsi disk.

    Options (keyword): ``device_type`` ('disk'|'lun'|'cdrom'), ``cache`` ('none'), ``io`` (AUTO:
    'native' for host block devices of iSCSI/FC/RBD; None to omit), ``discard`` (AUTO: 'unmap'
    when data.discard is True), ``driver_name``/``driver_format``, ``serial``/``alias`` (AUTO: the
    envelope's serial or the volume id; None to omit), ``readonly``/``shareable`` (None: from
    access_mode / multiattach; a shareable disk always gets cache 'none'), ``qos_specs`` (AUTO: data.qos_specs), ``volume_size_gb`` (resolves
    ``*_per_gb`` QoS), ``secret_uuid``/``secret_usage`` (the libvirt secret for cephx or CHAP),
    ``rbd_user``/``rbd_secret_uuid`` (host defaults, Nova's fallback for infos without a secret),
    ``encryption_secret_uuid`` (LUKS passphrase secret), ``unit`` (SCSI unit on controller 0),
    ``boot_order``, ``logical_block_size``/``physical_block_size``, ``initiator_iqn`` (the iSCSI
    name QEMU logs in with), ``rbd_config_file`` (a ceph.conf for QEMU's librados, e.g. to bound
    ``client_mount_timeout``), ``protocol`` (for dicts without driver_volume_type).
    """
    return format_disk(disk_config(connection_info, device, target_dev=target_dev, bus=bus, **options))
