"""Field readers and validators shared by the connection models (no I/O)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any, ClassVar, Dict, Iterable, Mapping, Optional, Tuple, Type, TypeVar

from blocklink.errors import InvalidConnectionInfo
from blocklink.masking import Secret, reveal
from blocklink.models.protocols import canonical_protocol

T = TypeVar("T")
_Err = Type[InvalidConnectionInfo]

# iSCSI names (RFC 3720: iqn./eui./naa.), WWNs, NQNs and the like: no whitespace, no path or
# shell metacharacters. Permissive enough for every real driver's output (and test fixtures).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9_])?$")
_CEPH_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-+=~]+$")  # pool / namespace / image / user names
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")


def _path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _text(v: Any, where: str, err: _Err) -> str:
    if not isinstance(v, str):
        raise err(where, f"expected a string, got {type(v).__name__}")
    if _CONTROL_RE.search(v):
        raise err(where, "contains control characters")
    return v


def _opt_text(d: Mapping[str, Any], key: str, prefix: str, err: _Err = InvalidConnectionInfo,
              ) -> Optional[str]:
    v = d.get(key)
    return None if v is None else _text(v, _path(prefix, key), err)


def _opt_secret(d: Mapping[str, Any], key: str, prefix: str, err: _Err = InvalidConnectionInfo,
                ) -> Optional[Secret]:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, Secret):
        return v
    if not isinstance(v, str):
        raise err(_path(prefix, key), f"expected a string, got {type(v).__name__}")
    return Secret(v)


def _bool(v: Any, where: str, err: _Err) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
        return v.lower() in ("true", "yes", "1")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise err(where, f"expected a boolean, got {_describe(v)}")


def _opt_bool(d: Mapping[str, Any], key: str, prefix: str, err: _Err = InvalidConnectionInfo,
              ) -> Optional[bool]:
    v = d.get(key)
    return None if v is None else _bool(v, _path(prefix, key), err)


def _int(v: Any, where: str, err: _Err, lo: int = 0, hi: int = 2**64 - 1) -> int:
    if isinstance(v, bool):
        raise err(where, "expected an integer, got a boolean")
    if isinstance(v, str) and re.fullmatch(r"[0-9]+", v.strip()):
        v = int(v.strip())
    if not isinstance(v, int):
        raise err(where, f"expected an integer, got {_describe(v)}")
    if not lo <= v <= hi:
        raise err(where, f"{v} is out of range [{lo}, {hi}]")
    return v


def _opt_int(d: Mapping[str, Any], key: str, prefix: str, err: _Err = InvalidConnectionInfo,
             lo: int = 0, hi: int = 2**64 - 1) -> Optional[int]:
    v = d.get(key)
    return None if v is None else _int(v, _path(prefix, key), err, lo, hi)


def _list(v: Any, where: str, err: _Err) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return list(v)
    raise err(where, f"expected a list, got {_describe(v)}")


def _describe(v: Any) -> str:
    s = repr(v)
    return f"{type(v).__name__} {s[:40]}" if len(s) <= 40 else f"{type(v).__name__} {s[:37]}..."


def check_name(value: Any, where: str, err: _Err = InvalidConnectionInfo, max_len: int = 255) -> str:
    """An identifier that will reach a path, argv or sysfs write: strict character set."""
    v = _text(value, where, err)
    if not v:
        raise err(where, "is empty")
    if len(v) > max_len:
        raise err(where, f"longer than {max_len} characters")
    if not _NAME_RE.match(v):
        raise err(where, "may contain only letters, digits and . _ : - (and must not start with a symbol)")
    return v


def check_host(value: Any, where: str, err: _Err = InvalidConnectionInfo) -> str:
    """An IPv4/IPv6 address (IPv6 without brackets) or a DNS name."""
    v = _text(value, where, err)
    try:
        ipaddress.ip_address(v)
        return v
    except ValueError:
        pass
    if not v or len(v) > 253 or not _HOST_RE.match(v):
        raise err(where, f"{v[:60]!r} is not an IP address or host name")
    return v


def check_ceph_name(value: Any, where: str, err: _Err = InvalidConnectionInfo) -> str:
    v = _text(value, where, err)
    # a leading '-' would make "pool/image" an option of the rbd/rbd-nbd command line
    if not v or v in (".", "..") or v.startswith("-") or not _CEPH_NAME_RE.match(v) or len(v) > 255:
        raise err(where, f"{v[:60]!r} is not a valid Ceph pool/namespace/image/user name")
    return v


def _extra(d: Mapping[str, Any], known: Iterable[str]) -> Dict[str, Any]:
    known = set(known)
    return {k: v for k, v in d.items() if k not in known}


def _put(out: Dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = reveal(value) if isinstance(value, Secret) else value


# ---------------------------------------------------------------------------------------------
# envelope handling shared by every protocol's info
# ---------------------------------------------------------------------------------------------

_ENVELOPE_KEYS = ("driver_volume_type", "data")


def _split_envelope(d: Any, expected_type: str) -> Tuple[Mapping[str, Any], Dict[str, Any], str]:
    """Returns (data, envelope extras, key-path prefix for errors)."""
    if not isinstance(d, Mapping):
        raise InvalidConnectionInfo("connection_info", f"expected a dict, got {_describe(d)}")
    if "driver_volume_type" in d or "data" in d:
        dvt = d.get("driver_volume_type")
        if dvt is not None and (not isinstance(dvt, str) or canonical_protocol(dvt) != expected_type):
            raise InvalidConnectionInfo("driver_volume_type", f"expected {expected_type!r}, got {_describe(dvt)}")
        data = d.get("data")
        if not isinstance(data, Mapping):
            raise InvalidConnectionInfo("data", f"expected a dict, got {_describe(data)}")
        return data, _extra(d, _ENVELOPE_KEYS), "data"
    return d, {}, ""


class ConnectionInfo:
    """Behaviour shared by the per-protocol info dataclasses."""

    driver_volume_type: ClassVar[str]
    extra: Dict[str, Any]
    envelope: Dict[str, Any]

    @classmethod
    def from_dict(cls: Type[T], d: Mapping[str, Any]) -> T:
        data, env, prefix = _split_envelope(d, cls.driver_volume_type)  # type: ignore[attr-defined]
        return cls._from_data(data, prefix, env)  # type: ignore[attr-defined,no-any-return]

    def to_dict(self) -> Dict[str, Any]:
        """The os-brick/Cinder envelope: ``{"driver_volume_type": ..., "data": {...}}``."""
        out: Dict[str, Any] = {"driver_volume_type": self.driver_volume_type, "data": self.data_dict()}
        out.update(self.envelope)
        return out

    def data_dict(self) -> Dict[str, Any]:  # pragma: no cover - each subclass defines it
        raise NotImplementedError

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

