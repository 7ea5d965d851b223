"""The host connector (get_connector_properties output) and what connect_volume returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

from blocklink.errors import InvalidConnectionInfo, InvalidConnector
from blocklink.models.fields import (check_name, _describe, _extra, _list, _opt_bool, _opt_int, _opt_text, _put,
                                      _text)


@dataclass(frozen=True)
class HostConnector:
    host: str
    ip: Optional[str] = None
    initiator: Optional[str] = None
    wwpns: Optional[Tuple[str, ...]] = None
    wwnns: Optional[Tuple[str, ...]] = None
    nqn: Optional[str] = None
    nvme_hostid: Optional[str] = None
    uuid: Optional[str] = None
    multipath: bool = False
    enforce_multipath: Optional[bool] = None
    platform: Optional[str] = None
    os_type: Optional[str] = None
    do_local_attach: Optional[bool] = None
    nvme_native_multipath: Optional[bool] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)

    _TEXT: ClassVar[Tuple[str, ...]] = ("ip", "nvme_hostid", "uuid", "platform", "os_type")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HostConnector":
        if not isinstance(d, Mapping):
            raise InvalidConnector("connector", f"expected a dict, got {_describe(d)}")
        err = InvalidConnector
        host = d.get("host")
        if host is None:
            raise err("host", "missing")
        kw: Dict[str, Any] = {k: _opt_text(d, k, "", err) for k in cls._TEXT}
        ini = d.get("initiator")
        kw["initiator"] = None if ini is None else check_name(ini, "initiator", err, max_len=223)
        nqn = d.get("nqn")
        kw["nqn"] = None if nqn is None else check_name(nqn, "nqn", err, max_len=223)
        for k in ("wwpns", "wwnns"):
            v = d.get(k)
            if v is not None:
                if isinstance(v, str):
                    v = [v]
                kw[k] = tuple(check_name(w, f"{k}[{i}]", err, max_len=64) for i, w in enumerate(_list(v, k, err)))
        kw["multipath"] = bool(_opt_bool(d, "multipath", "", err))
        kw["enforce_multipath"] = _opt_bool(d, "enforce_multipath", "", err)
        kw["do_local_attach"] = _opt_bool(d, "do_local_attach", "", err)
        kw["nvme_native_multipath"] = _opt_bool(d, "nvme_native_multipath", "", err)
        known = cls._TEXT + ("host", "initiator", "nqn", "wwpns", "wwnns", "multipath", "enforce_multipath",
                             "do_local_attach", "nvme_native_multipath")
        return cls(host=_text(host, "host", err), extra=_extra(d, known), **kw)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.extra)
        out["host"] = self.host
        out["multipath"] = self.multipath
        for k in self._TEXT + ("initiator", "nqn", "enforce_multipath", "do_local_attach", "nvme_native_multipath"):
            _put(out, k, getattr(self, k))
        for k in ("wwpns", "wwnns"):
            v = getattr(self, k)
            if v is not None:
                out[k] = list(v)
        return out


# ---------------------------------------------------------------------------------------------
# what connect_volume returns
# ---------------------------------------------------------------------------------------------

class DeviceKind(str, enum.Enum):
    """What ``AttachedDevice.path`` (or ``handle``) is. A ``str`` enum: ``kind == "block"`` holds."""

    BLOCK = "block"     # a block device node (/dev/sdX, /dev/dm-N, /dev/rbdN, /dev/nvmeXnY)
    FILE = "file"       # a regular file holding the volume (a FUSE export)
    SOCKET = "socket"   # a unix socket serving the volume (NBD, vhost-user-blk): not openable as a file
    HANDLE = "handle"   # no path: ``handle`` is a file-like object (librbd)

    def __str__(self) -> str:
        return self.value


_TEXT_FIELDS = ("volume", "export", "bridge", "run_dir", "uri", "nbd_export", "nqn", "uuid")
_INT_FIELDS = ("pid", "size", "nsid")
_LIST_FIELDS = ("paths", "controllers")
# dict keys of the typed fields (os-brick's names where it has one)
_KEYS = ("protocol", "type", "path", "scsi_wwn", "multipath_id", "read_only", "handle") + _TEXT_FIELDS \
    + _INT_FIELDS + _LIST_FIELDS


@dataclass(frozen=True)
class AttachedDevice:
    """A connected volume. ``path`` is a block device, file or socket; ``handle`` a file-like (RBD, no path).

    Every result a protocol returns is a typed field (``None`` or empty when the protocol has none):
    ``volume`` names the volume (RBD/userspace), ``size`` is its size in bytes when known, ``read_only``;
    multipath: ``wwn``, ``multipath_id``, ``paths`` (the single-path devices under it); NVMe: ``nqn``,
    ``nsid``, ``uuid``, ``controllers``; userspace (qemu-storage-daemon): ``pid``, ``export``,
    ``bridge``, ``run_dir``, ``uri`` and ``nbd_export``. ``extra`` keeps keys of a foreign dict it does
    not know. ``to_dict`` gives os-brick's shape (``type``, ``path``, ``scsi_wwn``, ``multipath_id``)
    plus the typed fields that are set; ``from_dict(d.to_dict())`` gives ``d`` back.
    """

    protocol: str
    path: Optional[str] = None
    handle: Any = field(default=None, compare=False, repr=False)
    type: str = DeviceKind.BLOCK  # a DeviceKind (plain strings are converted)
    wwn: Optional[str] = None
    multipath_id: Optional[str] = None
    paths: Tuple[str, ...] = ()
    volume: Optional[str] = None
    size: Optional[int] = None
    read_only: Optional[bool] = None
    nqn: Optional[str] = None
    nsid: Optional[int] = None
    uuid: Optional[str] = None
    controllers: Tuple[str, ...] = ()
    pid: Optional[int] = None
    export: Optional[str] = None
    bridge: Optional[str] = None
    run_dir: Optional[str] = None
    uri: Optional[str] = None
    nbd_export: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "type", DeviceKind(self.type))
        except ValueError:
            raise InvalidConnectionInfo("type", f"unknown device type {self.type!r}; expected one of "
                                        f"{', '.join(k.value for k in DeviceKind)}") from None
        if self.path is None and self.handle is None:
            raise InvalidConnectionInfo("path", "an attached device needs a path or a handle")
        for k in _LIST_FIELDS:
            object.__setattr__(self, k, tuple(getattr(self, k)))
        clash = sorted(set(self.extra) & set(_KEYS))
        if clash:
            raise InvalidConnectionInfo(f"extra.{clash[0]}", "is a typed field of the device, not an extra key")

    @property
    def kind(self) -> DeviceKind:
        return DeviceKind(self.type)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], protocol: str = "") -> "AttachedDevice":
        if not isinstance(d, Mapping):
            raise InvalidConnectionInfo("device", f"expected a dict, got {_describe(d)}")
        p = d.get("path")
        handle = d.get("handle")
        if p is not None and not isinstance(p, str):  # os-brick's RBD: {'path': RBDVolumeIOWrapper}
            handle, p = p, None
        kind = _opt_text(d, "type", "device") or ("handle" if handle is not None and p is None else "block")
        kw: Dict[str, Any] = {k: _opt_text(d, k, "device") for k in _TEXT_FIELDS}
        kw.update({k: _opt_int(d, k, "device") for k in _INT_FIELDS})
        for k in _LIST_FIELDS:
            v = d.get(k)
            kw[k] = () if v is None else tuple(_text(x, f"device.{k}[{i}]", InvalidConnectionInfo)
                                               for i, x in enumerate(_list(v, f"device.{k}", InvalidConnectionInfo)))
        return cls(protocol=_opt_text(d, "protocol", "device") or protocol, path=p, handle=handle, type=kind,
                   wwn=_opt_text(d, "scsi_wwn", "device"), multipath_id=_opt_text(d, "multipath_id", "device"),
                   read_only=_opt_bool(d, "read_only", "device"), extra=_extra(d, _KEYS), **kw)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.extra)
        out["protocol"] = self.protocol
        out["type"] = DeviceKind(self.type).value
        out["path"] = self.path if self.path is not None else self.handle
        if self.path is not None and self.handle is not None:
            out["handle"] = self.handle
        _put(out, "scsi_wwn", self.wwn)
        _put(out, "multipath_id", self.multipath_id)
        _put(out, "read_only", self.read_only)
        for k in _TEXT_FIELDS + _INT_FIELDS:
            _put(out, k, getattr(self, k))
        for k in _LIST_FIELDS:
            if getattr(self, k):
                out[k] = list(getattr(self, k))
        return out
