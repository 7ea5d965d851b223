"""The host connector (get_connector_properties output) and what connect_volume returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

from blocklink.errors import InvalidConnectionInfo, InvalidConnector
from blocklink.models.fields import (check_name, _describe, _extra, _list, _opt_bool, _opt_text, _put, _text)


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
        known = cls._TEXT + ("host", "initiator", "nqn", "wwpns", "wwnns", "multipath", "enforce_multipath",
                             "do_local_attach")
        return cls(host=_text(host, "host", err), extra=_extra(d, known), **kw)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.extra)
        out["host"] = self.host
        out["multipath"] = self.multipath
        for k in self._TEXT + ("initiator", "nqn", "enforce_multipath", "do_local_attach"):
            _put(out, k, getattr(self, k))
        for k in ("wwpns", "wwnns"):
            v = getattr(self, k)
            if v is not None:
                out[k] = list(v)
        return out


# ---------------------------------------------------------------------------------------------
# what connect_volume returns
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttachedDevice:
    """A connected volume. ``path`` is a block device or file; ``handle`` a file-like (RBD, no path).

    ``to_dict`` gives os-brick's shape (``type``, ``path``, ``scsi_wwn``, ``multipath_id``).
    """

    protocol: str
    path: Optional[str] = None
    handle: Any = field(default=None, compare=False, repr=False)
    type: str = "block"  # "block" | "file" | "handle"
    wwn: Optional[str] = None
    multipath_id: Optional[str] = None
    paths: Tuple[str, ...] = ()  # the single-path devices under a multipath device
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.type not in ("block", "file", "handle"):
            raise InvalidConnectionInfo("type", f"unknown device type {self.type!r}")
        if self.path is None and self.handle is None:
            raise InvalidConnectionInfo("path", "an attached device needs a path or a handle")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], protocol: str = "") -> "AttachedDevice":
        if not isinstance(d, Mapping):
            raise InvalidConnectionInfo("device", f"expected a dict, got {_describe(d)}")
        p = d.get("path")
        handle = None
        if p is not None and not isinstance(p, str):  # os-brick's RBD: {'path': RBDVolumeIOWrapper}
            handle, p = p, None
        kind = _opt_text(d, "type", "device") or ("handle" if handle is not None else "block")
        return cls(protocol=_opt_text(d, "protocol", "device") or protocol, path=p, handle=handle, type=kind,
                   wwn=_opt_text(d, "scsi_wwn", "device"), multipath_id=_opt_text(d, "multipath_id", "device"),
                   extra=_extra(d, ("path", "type", "scsi_wwn", "multipath_id", "protocol")))

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.extra)
        out["type"] = self.type
        out["path"] = self.path if self.path is not None else self.handle
        _put(out, "scsi_wwn", self.wwn)
        _put(out, "multipath_id", self.multipath_id)
        return out


