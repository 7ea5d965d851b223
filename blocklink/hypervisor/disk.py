"""A typed model of one libvirt ``<disk>``: validated so that every instance formats to schema-valid XML.

The checks mirror libvirt's RelaxNG grammar (``/usr/share/libvirt/schemas/domaincommon.rng``) and the
limits QEMU enforces at attach time (throttling pairs, block sizes), so a bad value fails here, with
the offending field named, instead of deep inside libvirtd. :mod:`blocklink.hypervisor.xml` turns a
:class:`DiskConfig` into XML; :mod:`blocklink.hypervisor.adapter` builds one from connection info.
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from blocklink.errors import InvalidDiskConfig

__all__ = [
    "InvalidDiskConfig", "DiskDriver", "BlockSource", "FileSource", "NetworkHost", "NetworkSource",
    "DiskAuth", "IoTune", "DriveAddress", "PciAddress", "DiskEncryption", "DiskConfig",
    "BUSES", "CACHE_MODES", "IO_MODES", "DISCARD_MODES", "DEVICE_TYPES", "PROTOCOLS", "IOTUNE_ORDER", "NOVA_IOTUNE_ORDER",
    "normalize_target_dev", "check_uuid",
]


# value sets from libvirt's schema (the subset a volume attachment can use)
BUSES = ("virtio", "scsi", "ide", "sata", "usb", "fdc", "xen")
DEVICE_TYPES = ("disk", "lun", "cdrom")
CACHE_MODES = ("default", "none", "writethrough", "writeback", "directsync", "unsafe")
IO_MODES = ("threads", "native", "io_uring")
DISCARD_MODES = ("unmap", "ignore")
FORMATS = ("raw", "qcow2", "qcow", "qed", "vmdk", "vpc", "vdi", "luks", "dmg", "bochs", "cloop", "parallels",
           "iso", "host_device")
PROTOCOLS = ("rbd", "iscsi", "nbd", "gluster", "http", "https", "ftp", "ftps", "tftp", "sheepdog", "vxhs", "nfs",
             "ssh")

# <iotune> children in the order libvirt itself writes them (virDomainDiskDefFormatIotune). The grammar
# interleaves them, so any order is valid in principle, but libxml2's RelaxNG validator rejects some
# orders of a valid set - Nova's order among them (50 of the 1249 valid combinations); this one passes all.
IOTUNE_ORDER = (
    "total_bytes_sec", "read_bytes_sec", "write_bytes_sec", "total_iops_sec", "read_iops_sec", "write_iops_sec",
    "total_bytes_sec_max", "read_bytes_sec_max", "write_bytes_sec_max", "total_iops_sec_max", "read_iops_sec_max",
    "write_iops_sec_max", "size_iops_sec",
)
# the order Nova writes (for comparisons with Nova's XML)
NOVA_IOTUNE_ORDER = (
    "read_bytes_sec", "read_iops_sec", "write_bytes_sec", "write_iops_sec", "total_bytes_sec", "total_iops_sec",
    "read_bytes_sec_max", "write_bytes_sec_max", "total_bytes_sec_max", "read_iops_sec_max", "write_iops_sec_max",
    "total_iops_sec_max", "size_iops_sec",
)
_THROTTLE_MAX = 10 ** 15  # QEMU's THROTTLE_VALUE_MAX

_TARGET_RE = re.compile(r"^(fd|hd|sd|vd|xvd|ubd)[a-zA-Z0-9_]+$")
_SERIAL_RE = re.compile(r"^[A-Za-z0-9_.+\- ]+$")
_ALIAS_RE = re.compile(r"^ua-[a-zA-Z0-9_\-.]+$")
_GENERIC_NAME_RE = re.compile(r"^[a-zA-Z0-9_+\-]+$")  # libvirt's genericName (auth usernames)
_DNS_RE = re.compile(r"^[a-zA-Z0-9.\-]+$")
# control characters, and what XML 1.0 cannot carry at all (lone surrogates, U+FFFE/U+FFFF)
_CONTROL_RE = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def _err(where: str, reason: str) -> InvalidDiskConfig:
    return InvalidDiskConfig(where, reason)


def _text(v: Any, where: str, *, empty_ok: bool = False) -> str:
    if not isinstance(v, str):
        raise _err(where, f"expected a string, got {type(v).__name__}")
    if not v and not empty_ok:
        raise _err(where, "is empty")
    if _CONTROL_RE.search(v):
        raise _err(where, "contains control characters")
    return v


def _abs_path(v: Any, where: str) -> str:
    v = _text(v, where)
    if not v.startswith("/") or len(v) < 2:
        raise _err(where, f"expected an absolute path, got {v[:60]!r}")
    return v


def _uint(v: Any, where: str, lo: int = 0, hi: int = 2 ** 64 - 1) -> int:
    if isinstance(v, bool):
        raise _err(where, "expected an integer, got a boolean")
    if isinstance(v, str) and re.fullmatch(r"\s*[0-9]+\s*", v):
        v = int(v)
    if not isinstance(v, int):
        raise _err(where, f"expected a non-negative integer, got {str(v)[:40]!r}")
    if not lo <= v <= hi:
        raise _err(where, f"{v} is out of range [{lo}, {hi}]")
    return v


def check_uuid(v: Any, where: str) -> str:
    v = _text(v, where)
    try:
        uuidlib.UUID(v)
    except ValueError:
        raise _err(where, f"{v[:60]!r} is not a UUID") from None
    if not re.fullmatch(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}", v):
        raise _err(where, f"{v[:60]!r} is not in libvirt's UUID form")
    return v


def _choice(v: Any, where: str, allowed: Tuple[str, ...]) -> str:
    if v not in allowed:
        raise _err(where, f"expected one of {', '.join(allowed)}; got {str(v)[:40]!r}")
    return str(v)


def normalize_target_dev(v: Any, where: str = "target_dev") -> str:
    """``vdb`` or ``/dev/vdb`` -> ``vdb``; anything libvirt's grammar refuses raises."""
    v = _text(v, where)
    if v.startswith("/dev/"):
        v = v[len("/dev/"):]
    if not _TARGET_RE.match(v):
        raise _err(where, f"{v[:40]!r} is not a disk target name (vdX, sdX, hdX, xvdX, fdX)")
    return v


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


# ---------------------------------------------------------------------------------------------
# parts
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiskDriver:
    """``<driver name type cache io discard>``; every attribute optional (None = not written)."""

    name: Optional[str] = "qemu"
    format: Optional[str] = "raw"
    cache: Optional[str] = "none"
    io: Optional[str] = None
    discard: Optional[str] = None

    def __post_init__(self) -> None:
        if self.name is not None:
            _choice(self.name, "driver.name", ("qemu", "file", "tap", "tap2", "phy"))
        if self.format is not None:
            _choice(self.format, "driver.format", FORMATS)
        if self.cache is not None:
            _choice(self.cache, "driver.cache", CACHE_MODES)
        if self.io is not None:
            _choice(self.io, "driver.io", IO_MODES)
            if self.io == "native" and self.cache not in ("none", "directsync"):
                raise _err("driver.io", "io='native' needs cache 'none' or 'directsync' (QEMU needs O_DIRECT)")
        if self.discard is not None:
            _choice(self.discard, "driver.discard", DISCARD_MODES)

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.name, self.format, self.cache, self.io, self.discard))


@dataclass(frozen=True)
class BlockSource:
    """A host block device (``type='block'``)."""

    dev: str

    def __post_init__(self) -> None:
        _abs_path(self.dev, "source.dev")


@dataclass(frozen=True)
class FileSource:
    """A file on the host (``type='file'``): a userspace-attach export, an image."""

    path: str

    def __post_init__(self) -> None:
        _abs_path(self.path, "source.file")


@dataclass(frozen=True)
class NetworkHost:
    """A ``<host name port>`` of a network source. IPv6 addresses are written bare, as Nova does."""

    name: str
    port: Optional[int] = None

    def __post_init__(self) -> None:
        name = _text(self.name, "source.host.name")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not _DNS_RE.match(name) or len(name) > 253:
                raise _err("source.host.name", f"{name[:60]!r} is not an IP address or DNS name") from None
        if self.port is not None:
            _set(self, "port", _uint(self.port, "source.host.port", 0, 65535))


@dataclass(frozen=True)
class NetworkSource:
    """A network disk source (``type='network'``): ``rbd`` pool/image, ``iscsi`` IQN/LUN, ..."""

    protocol: str
    name: Optional[str] = None
    hosts: Tuple[NetworkHost, ...] = ()
    initiator_iqn: Optional[str] = None  # iSCSI only: the name QEMU logs in with
    config_file: Optional[str] = None  # rbd only: a ceph.conf for QEMU's librados (timeouts, ms options)

    def __post_init__(self) -> None:
        _choice(self.protocol, "source.protocol", PROTOCOLS)
        if self.name is not None:
            _text(self.name, "source.name")
        elif self.protocol in ("iscsi", "rbd"):
            raise _err("source.name", f"a {self.protocol} source needs a name")
        _set(self, "hosts", tuple(self.hosts))
        for h in self.hosts:
            if not isinstance(h, NetworkHost):
                raise _err("source.host", "expected NetworkHost values")
        if self.protocol == "iscsi" and len(self.hosts) != 1:
            raise _err("source.host", "an iscsi source takes exactly one host (portal)")
        if self.initiator_iqn is not None:
            if self.protocol != "iscsi":
                raise _err("source.initiator", "only iscsi sources have an initiator name")
            v = _text(self.initiator_iqn, "source.initiator")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:\-]*", v):
                raise _err("source.initiator", "not an iSCSI name")
        if self.config_file is not None:
            if self.protocol != "rbd":
                raise _err("source.config", "only rbd sources take a config file")
            _abs_path(self.config_file, "source.config")


@dataclass(frozen=True)
class DiskAuth:
    """``<auth username><secret type uuid|usage/></auth>``: which libvirt secret QEMU logs in with."""

    username: str
    secret_type: str
    secret_uuid: Optional[str] = None
    secret_usage: Optional[str] = None

    def __post_init__(self) -> None:
        user = _text(self.username, "auth.username")
        if not _GENERIC_NAME_RE.match(user):
            raise _err("auth.username", "libvirt accepts only letters, digits and _ + - in an auth username")
        _choice(self.secret_type, "auth.secret.type", ("ceph", "iscsi"))
        if (self.secret_uuid is None) == (self.secret_usage is None):
            raise _err("auth.secret", "give exactly one of secret_uuid and secret_usage")
        if self.secret_uuid is not None:
            check_uuid(self.secret_uuid, "auth.secret.uuid")
        if self.secret_usage is not None and "/" in _text(self.secret_usage, "auth.secret.usage"):
            raise _err("auth.secret.usage", "libvirt's grammar allows no '/' in a secret usage name")


def _validate_iotune(values: Mapping[str, Optional[int]], where: str) -> None:
    """What libvirt's grammar insists on, and what QEMU needs to apply the limits at all; ``where`` names the key."""
    for k, v in values.items():
        if v is not None:
            _uint(v, f"{where}.{k}", 0, _THROTTLE_MAX)
    for kind in ("bytes", "iops"):
        for suffix in ("", "_max"):
            total = f"total_{kind}_sec{suffix}"
            rw = [f"{d}_{kind}_sec{suffix}" for d in ("read", "write")]
            if values.get(total) is not None and any(values.get(k) is not None for k in rw):
                raise _err(f"{where}.{total}", f"cannot be combined with {' or '.join(rw)} (libvirt refuses it)")
    for k in IOTUNE_ORDER:
        if not k.endswith("_max"):
            continue
        burst, base = values.get(k), values.get(k[:-len("_max")])
        # libvirt accepts both of these, and then QEMU applies no throttling at all (not even the base)
        if burst:
            if not base:
                raise _err(f"{where}.{k}", f"a burst limit needs {k[:-len('_max')]} set "
                                           "(else QEMU throttles nothing)")
            if burst < base:
                raise _err(f"{where}.{k}", f"burst {burst} is below the base limit {base} "
                                           "(else QEMU throttles nothing)")


@dataclass(frozen=True)
class IoTune:
    """``<iotune>``: QEMU I/O throttling. ``*_max`` are burst limits; 0 means unlimited."""

    read_bytes_sec: Optional[int] = None
    read_iops_sec: Optional[int] = None
    write_bytes_sec: Optional[int] = None
    write_iops_sec: Optional[int] = None
    total_bytes_sec: Optional[int] = None
    total_iops_sec: Optional[int] = None
    read_bytes_sec_max: Optional[int] = None
    write_bytes_sec_max: Optional[int] = None
    total_bytes_sec_max: Optional[int] = None
    read_iops_sec_max: Optional[int] = None
    write_iops_sec_max: Optional[int] = None
    total_iops_sec_max: Optional[int] = None
    size_iops_sec: Optional[int] = None

    def __post_init__(self) -> None:
        for k in IOTUNE_ORDER:
            v = getattr(self, k)
            if v is not None:
                _set(self, k, _uint(v, f"iotune.{k}", 0, _THROTTLE_MAX))
        _validate_iotune(self.as_dict(), "iotune")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "iotune") -> "IoTune":
        """Build from ``{element: value}``; errors name ``<where>.<key>`` (e.g. ``data.qos_specs.x``)."""
        unknown = [k for k in values if k not in IOTUNE_ORDER]
        if unknown:
            raise _err(f"{where}.{unknown[0]}", "not an iotune setting")
        ints = {k: None if v is None else _uint(v, f"{where}.{k}", 0, _THROTTLE_MAX) for k, v in values.items()}
        _validate_iotune(ints, where)
        return cls(**ints)

    def as_dict(self) -> Dict[str, Optional[int]]:
        return {k: getattr(self, k) for k in IOTUNE_ORDER}

    def items(self) -> Tuple[Tuple[str, int], ...]:
        """The set limits in libvirt's own element order."""
        return tuple((k, v) for k, v in self.as_dict().items() if v is not None)


@dataclass(frozen=True)
class DriveAddress:
    """``<address type='drive'>``: a SCSI/IDE/SATA slot (Nova sets controller 0 + unit for virtio-scsi)."""

    controller: Optional[int] = 0
    bus: Optional[int] = None
    target: Optional[int] = None
    unit: Optional[int] = None

    def __post_init__(self) -> None:
        for k in ("controller", "bus", "target", "unit"):
            v = getattr(self, k)
            if v is not None:
                _set(self, k, _uint(v, f"address.{k}", 0, 2 ** 32 - 1))

    def attributes(self) -> Tuple[Tuple[str, str], ...]:
        return (("type", "drive"),) + tuple(
            (k, str(getattr(self, k))) for k in ("controller", "bus", "target", "unit") if getattr(self, k) is not None)


@dataclass(frozen=True)
class PciAddress:
    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0

    def __post_init__(self) -> None:
        limits = {"domain": 0xFFFF, "bus": 0xFF, "slot": 0x1F, "function": 7}
        for k, hi in limits.items():
            _set(self, k, _uint(getattr(self, k), f"address.{k}", 0, hi))

    def attributes(self) -> Tuple[Tuple[str, str], ...]:
        return (("type", "pci"),) + tuple((k, str(getattr(self, k))) for k in ("domain", "bus", "slot", "function"))


@dataclass(frozen=True)
class DiskEncryption:
    """``<encryption format='luks'><secret type='passphrase' uuid/></encryption>`` (QEMU opens LUKS)."""

    secret_uuid: str
    format: str = "luks"

    def __post_init__(self) -> None:
        check_uuid(self.secret_uuid, "encryption.secret.uuid")
        _choice(self.format, "encryption.format", ("luks", "qcow"))


Source = Union[BlockSource, FileSource, NetworkSource]
Address = Union[DriveAddress, PciAddress]


# ---------------------------------------------------------------------------------------------
# the disk
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiskConfig:
    """One guest disk. Build it directly or with :func:`blocklink.hypervisor.disk_config`."""

    source: Source
    target_dev: str
    bus: str = "virtio"
    device: str = "disk"
    driver: Optional[DiskDriver] = field(default_factory=DiskDriver)
    alias: Optional[str] = None
    auth: Optional[DiskAuth] = None
    serial: Optional[str] = None
    iotune: Optional[IoTune] = None
    logical_block_size: Optional[int] = None
    physical_block_size: Optional[int] = None
    readonly: bool = False
    shareable: bool = False
    boot_order: Optional[int] = None
    address: Optional[Address] = None
    encryption: Optional[DiskEncryption] = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, (BlockSource, FileSource, NetworkSource)):
            raise _err("source", "expected BlockSource, FileSource or NetworkSource")
        _set(self, "target_dev", normalize_target_dev(self.target_dev))
        _choice(self.bus, "bus", BUSES)
        _choice(self.device, "device", DEVICE_TYPES)
        if self.device == "lun":
            if not (isinstance(self.source, BlockSource) or
                    (isinstance(self.source, NetworkSource) and self.source.protocol == "iscsi")):
                raise _err("device", "a 'lun' passes SCSI commands through: it needs a block or iscsi source")
            if self.bus not in ("scsi", "virtio"):
                raise _err("device", "a 'lun' needs bus 'scsi' (or 'virtio')")
            # QEMU's scsi-block takes both from the real LUN (Nova drops them silently; we say so)
            if self.serial is not None:
                raise _err("serial", "a 'lun' reports the LUN's own serial; do not set one")
            if self.logical_block_size is not None or self.physical_block_size is not None:
                raise _err("logical_block_size", "a 'lun' reports the LUN's own block sizes; do not set them")
        if self.alias is not None and not _ALIAS_RE.match(_text(self.alias, "alias")):
            raise _err("alias", "a user alias must start with 'ua-' and contain only letters, digits and _ - .")
        if self.auth is not None:
            if not isinstance(self.source, NetworkSource):
                raise _err("auth", "only network disks log in")
            want = {"rbd": "ceph", "iscsi": "iscsi"}.get(self.source.protocol)
            if want != self.auth.secret_type:
                raise _err("auth.secret.type", f"a {self.source.protocol} source needs a {want!r} secret")
        if self.serial is not None:
            s = _text(self.serial, "serial")
            if not _SERIAL_RE.match(s):
                raise _err("serial", "libvirt accepts only letters, digits, space and _ . + - in a serial")
        for k in ("logical_block_size", "physical_block_size"):
            v = getattr(self, k)
            if v is not None:
                v = _uint(v, k, 512, 2 ** 21)
                if v & (v - 1):
                    raise _err(k, f"{v} is not a power of two")
                _set(self, k, v)
        if (self.logical_block_size and self.physical_block_size
                and self.physical_block_size < self.logical_block_size):
            raise _err("physical_block_size", "is smaller than logical_block_size")
        if self.boot_order is not None:
            _set(self, "boot_order", _uint(self.boot_order, "boot_order", 1, 2 ** 31 - 1))
        if isinstance(self.address, DriveAddress) and self.bus not in ("scsi", "ide", "sata", "usb", "fdc"):
            raise _err("address", f"a drive address does not fit bus {self.bus!r}")
        if self.address is not None and not isinstance(self.address, (DriveAddress, PciAddress)):
            raise _err("address", "expected DriveAddress or PciAddress")
        if self.driver is not None and self.driver.empty:
            _set(self, "driver", None)

    @property
    def source_type(self) -> str:
        if isinstance(self.source, BlockSource):
            return "block"
        if isinstance(self.source, FileSource):
            return "file"
        return "network"
