"""Typed, validated connection models in the os-brick/Cinder dict format.

Each model parses the envelope ``{"driver_volume_type": ..., "data": {...}}`` or the bare ``data``
dict, validates every field it understands, keeps every key it does not (``extra``), and gives the
same dict back from :meth:`to_dict`. A value of ``None`` means "key absent", so a dict never grows
keys it did not have. Anything wrong raises :class:`~blocklink.errors.InvalidConnectionInfo` naming
the key path (``data.target_portals[1]``); secrets never appear in ``repr`` or in error text.

Descriptive fields (``volume_id``, ``auth_username``) accept any printable text, because real
drivers emit odd values; identifiers that end up in paths, command arguments or sysfs writes
(IQNs, portals, WWNs, pool and image names) are checked strictly here, at the boundary.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, FrozenSet, Iterable, Mapping, Optional, Tuple, Type, TypeVar, Union

from blocklink.errors import InvalidConnectionInfo, InvalidConnector
from blocklink.masking import Secret, reveal

__all__ = [
    "Portal", "IscsiTarget", "IscsiInfo", "RbdInfo", "FcInfo", "NvmeofInfo", "NvmePortal",
    "HostConnector", "AttachedDevice", "ConnectionInfo", "parse_connection_info", "register_info_type",
]

T = TypeVar("T")
_Err = Type[InvalidConnectionInfo]

# iSCSI names (RFC 3720: iqn./eui./naa.), WWNs, NQNs and the like: no whitespace, no path or
# shell metacharacters. Permissive enough for every real driver's output (and test fixtures).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9_])?$")
_CEPH_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-+=~]+$")  # pool / namespace / image / user names
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")


# ---------------------------------------------------------------------------------------------
# field readers: each takes the mapping, the key and the key path for error messages
# ---------------------------------------------------------------------------------------------

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


def check_name(v: Any, where: str, err: _Err = InvalidConnectionInfo, max_len: int = 255) -> str:
    """An identifier that will reach a path, argv or sysfs write: strict character set."""
    v = _text(v, where, err)
    if not v:
        raise err(where, "is empty")
    if len(v) > max_len:
        raise err(where, f"longer than {max_len} characters")
    if not _NAME_RE.match(v):
        raise err(where, "may contain only letters, digits and . _ : - (and must not start with a symbol)")
    return v


def check_host(v: Any, where: str, err: _Err = InvalidConnectionInfo) -> str:
    """An IPv4/IPv6 address (IPv6 without brackets) or a DNS name."""
    v = _text(v, where, err)
    try:
        ipaddress.ip_address(v)
        return v
    except ValueError:
        pass
    if not v or len(v) > 253 or not _HOST_RE.match(v):
        raise err(where, f"{v[:60]!r} is not an IP address or host name")
    return v


def check_ceph_name(v: Any, where: str, err: _Err = InvalidConnectionInfo) -> str:
    v = _text(v, where, err)
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
        if dvt is not None and (not isinstance(dvt, str) or _ALIASES.get(dvt.lower(), dvt.lower()) != expected_type):
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


# ---------------------------------------------------------------------------------------------
# iSCSI
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Portal:
    """``ip:port``, ``[ipv6]:port``, ``host:port`` or a bare address (port 3260); keeps its text."""

    text: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: Any, where: str = "portal", err: _Err = InvalidConnectionInfo,
              default_port: int = 3260) -> "Portal":
        text = _text(text, where, err)
        s = text.strip()
        port: Optional[str] = None
        if s.startswith("["):
            end = s.find("]")
            if end < 0:
                raise err(where, "unterminated '[' in IPv6 portal")
            host, rest = s[1:end], s[end + 1:]
            if rest:
                if not rest.startswith(":"):
                    raise err(where, "expected ':port' after ']'")
                port = rest[1:]
            try:
                ipaddress.IPv6Address(host.split("%")[0])
            except ValueError:
                raise err(where, f"{host!r} is not an IPv6 address") from None
        elif s.count(":") > 1:  # bare IPv6, no port
            host = s
            try:
                ipaddress.IPv6Address(host.split("%")[0])
            except ValueError:
                raise err(where, f"{host!r} is not an address") from None
        else:
            host, _, port_text = s.partition(":")
            port = port_text if ":" in s else None
            check_host(host, where, err)
        if port is None:
            port_num = default_port
        else:
            port_num = _int(port, where, err, 0, 65535) if port else -1
            if port_num < 0:
                raise err(where, "empty port")
        return cls(text=text, host=host, port=port_num)

    @classmethod
    def of(cls, host: str, port: int = 3260) -> "Portal":
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls.parse(text)

    @property
    def address(self) -> str:
        """``host:port`` with IPv6 bracketed, normalised (what iscsiadm -p and by-path links use)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class IscsiTarget:
    portal: Portal
    iqn: str
    lun: int


@dataclass(frozen=True)
class IscsiInfo(ConnectionInfo):
    """Cinder's iSCSI connection info (single-portal, multi-portal and plural-only forms).

    ``targets`` is what to log in to (the plural keys when present, else the singular ones);
    ``primary`` is the singular ``target_portal/iqn/lun`` triple when the dict had it. ``form``
    records which key families were present so :meth:`to_dict` gives the same dict back.
    """

    driver_volume_type: ClassVar[str] = "iscsi"

    targets: Tuple[IscsiTarget, ...]
    primary: Optional[IscsiTarget] = None
    form: str = "both"  # "single" | "multi" | "both"
    volume_id: Optional[str] = None
    target_discovered: Optional[bool] = None
    auth_method: Optional[str] = None
    auth_username: Optional[str] = None
    auth_password: Optional[Secret] = None
    # mutual CHAP (blocklink extension; open-iscsi's username_in/password_in): the target's credentials
    auth_username_in: Optional[str] = None
    auth_password_in: Optional[Secret] = None
    discovery_auth_method: Optional[str] = None
    discovery_auth_username: Optional[str] = None
    discovery_auth_password: Optional[Secret] = None
    encrypted: Optional[bool] = None
    discard: Optional[bool] = None
    access_mode: Optional[str] = None
    addressing_mode: Optional[str] = None
    wwn: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)
    envelope: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    absent_keys: FrozenSet[str] = field(default=frozenset(), compare=False, repr=False)

    _SCALARS: ClassVar[Tuple[str, ...]] = (
        "volume_id", "auth_method", "auth_username", "auth_username_in", "discovery_auth_method",
        "discovery_auth_username", "addressing_mode")
    _SECRETS: ClassVar[Tuple[str, ...]] = ("auth_password", "auth_password_in", "discovery_auth_password")
    _BOOLS: ClassVar[Tuple[str, ...]] = ("target_discovered", "encrypted", "discard")
    _TARGET_KEYS: ClassVar[Tuple[str, ...]] = (
        "target_portal", "target_iqn", "target_lun", "target_portals", "target_iqns", "target_luns")

    def __post_init__(self) -> None:
        if not self.targets:
            raise InvalidConnectionInfo("target_portal", "no target given")
        if self.form not in ("single", "multi", "both"):
            raise InvalidConnectionInfo("form", f"unknown form {self.form!r}")
        if self.primary is None and self.form != "multi":
            object.__setattr__(self, "primary", self.targets[0])
        if self.access_mode not in (None, "rw", "ro"):
            raise InvalidConnectionInfo("access_mode", f"expected 'rw' or 'ro', got {self.access_mode!r}")

    @classmethod
    def _from_data(cls, d: Mapping[str, Any], prefix: str, env: Dict[str, Any]) -> "IscsiInfo":
        single_keys = [k for k in ("target_portal", "target_iqn", "target_lun") if d.get(k) is not None]
        multi_keys = [k for k in ("target_portals", "target_iqns", "target_luns") if d.get(k) is not None]
        primary = None
        if single_keys:
            for k in ("target_portal", "target_iqn", "target_lun"):
                if d.get(k) is None:
                    raise InvalidConnectionInfo(_path(prefix, k), "missing (the other singular target keys are set)")
            primary = IscsiTarget(
                Portal.parse(d["target_portal"], _path(prefix, "target_portal")),
                check_name(d["target_iqn"], _path(prefix, "target_iqn"), max_len=223),
                _int(d["target_lun"], _path(prefix, "target_lun"), InvalidConnectionInfo, 0, 2**64 - 1))
        targets: Tuple[IscsiTarget, ...]
        if multi_keys:
            for k in ("target_portals", "target_iqns"):
                if d.get(k) is None:
                    raise InvalidConnectionInfo(_path(prefix, k), "missing (target_portals and target_iqns go together)")
            portals = _list(d["target_portals"], _path(prefix, "target_portals"), InvalidConnectionInfo)
            iqns = _list(d["target_iqns"], _path(prefix, "target_iqns"), InvalidConnectionInfo)
            luns = (_list(d["target_luns"], _path(prefix, "target_luns"), InvalidConnectionInfo)
                    if d.get("target_luns") is not None else None)
            if luns is None:
                if primary is None:
                    raise InvalidConnectionInfo(_path(prefix, "target_luns"), "missing (no target_lun either)")
                luns = [primary.lun] * len(portals)
            if not portals:
                raise InvalidConnectionInfo(_path(prefix, "target_portals"), "is empty")
            if not (len(portals) == len(iqns) == len(luns)):
                raise InvalidConnectionInfo(
                    _path(prefix, "target_iqns"),
                    f"target_portals/target_iqns/target_luns lengths differ ({len(portals)}/{len(iqns)}/{len(luns)})")
            targets = tuple(
                IscsiTarget(Portal.parse(p, f"{_path(prefix, 'target_portals')}[{i}]"),
                            check_name(q, f"{_path(prefix, 'target_iqns')}[{i}]", max_len=223),
                            _int(n, f"{_path(prefix, 'target_luns')}[{i}]", InvalidConnectionInfo))
                for i, (p, q, n) in enumerate(zip(portals, iqns, luns)))
            form = "both" if primary else "multi"
        elif primary is not None:
            targets, form = (primary,), "single"
        else:
            raise InvalidConnectionInfo(_path(prefix, "target_portal"), "missing (and no target_portals)")

        kw: Dict[str, Any] = {k: _opt_text(d, k, prefix) for k in cls._SCALARS}
        kw.update({k: _opt_secret(d, k, prefix) for k in cls._SECRETS})
        kw.update({k: _opt_bool(d, k, prefix) for k in cls._BOOLS})
        kw["access_mode"] = _opt_text(d, "access_mode", prefix)
        if kw["access_mode"] not in (None, "rw", "ro"):
            raise InvalidConnectionInfo(_path(prefix, "access_mode"), "expected 'rw' or 'ro'")
        wwn = d.get("wwn")
        kw["wwn"] = None if wwn is None else check_name(wwn, _path(prefix, "wwn"))
        known = cls._SCALARS + cls._SECRETS + cls._BOOLS + cls._TARGET_KEYS + ("access_mode", "wwn")
        absent = frozenset({"target_luns"}) if multi_keys and d.get("target_luns") is None else frozenset()
        return cls(targets=targets, primary=primary, form=form, extra=_extra(d, known), envelope=env,
                   absent_keys=absent, **kw)

    def data_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.extra)
        if self.form in ("single", "both") and self.primary is not None:
            out["target_portal"] = self.primary.portal.text
            out["target_iqn"] = self.primary.iqn
            out["target_lun"] = self.primary.lun
        if self.form in ("multi", "both"):
            out["target_portals"] = [t.portal.text for t in self.targets]
            out["target_iqns"] = [t.iqn for t in self.targets]
            if "target_luns" not in self.absent_keys:
                out["target_luns"] = [t.lun for t in self.targets]
        for k in self._SCALARS + self._SECRETS + self._BOOLS + ("access_mode", "wwn"):
            _put(out, k, getattr(self, k))
        return out

    @property
    def chap(self) -> bool:
        return (self.auth_method or "").upper() == "CHAP"

    @property
    def discovery_chap(self) -> bool:
        return (self.discovery_auth_method or "").upper() == "CHAP"

    @property
    def read_only(self) -> bool:
        return self.access_mode == "ro"


# ---------------------------------------------------------------------------------------------
# RBD
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RbdInfo(ConnectionInfo):
    """Cinder's RBD connection info. ``name`` is ``pool/image`` (or ``pool/namespace/image``)."""

    driver_volume_type: ClassVar[str] = "rbd"

    name: str
    hosts: Tuple[str, ...] = ()
    ports: Tuple[Optional[str], ...] = ()  # strings as Cinder sends them; None: the default ports
    cluster_name: Optional[str] = None
    auth_enabled: Optional[bool] = None
    auth_username: Optional[str] = None
    secret_type: Optional[str] = None
    secret_uuid: Optional[str] = None
    volume_id: Optional[str] = None
    discard: Optional[bool] = None
    keyring: Optional[Secret] = None
    access_mode: Optional[str] = None
    encrypted: Optional[bool] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)
    envelope: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    _SCALARS: ClassVar[Tuple[str, ...]] = ("secret_type", "secret_uuid", "volume_id")
    _BOOLS: ClassVar[Tuple[str, ...]] = ("auth_enabled", "discard", "encrypted")

    def __post_init__(self) -> None:
        parts = self.name.split("/") if isinstance(self.name, str) else []
        if len(parts) not in (2, 3):
            raise InvalidConnectionInfo("name", "expected 'pool/image' or 'pool/namespace/image'")
        for p in parts:
            check_ceph_name(p, "name")
        if len(self.hosts) != len(self.ports):
            raise InvalidConnectionInfo("ports", f"{len(self.ports)} ports for {len(self.hosts)} hosts")
        if self.access_mode not in (None, "rw", "ro"):
            raise InvalidConnectionInfo("access_mode", f"expected 'rw' or 'ro', got {self.access_mode!r}")

    @classmethod
    def _from_data(cls, d: Mapping[str, Any], prefix: str, env: Dict[str, Any]) -> "RbdInfo":
        name = d.get("name")
        if name is None:
            raise InvalidConnectionInfo(_path(prefix, "name"), "missing")
        name = _text(name, _path(prefix, "name"), InvalidConnectionInfo)
        parts = name.split("/")
        if len(parts) not in (2, 3):
            raise InvalidConnectionInfo(_path(prefix, "name"), "expected 'pool/image' or 'pool/namespace/image'")
        for p in parts:
            check_ceph_name(p, _path(prefix, "name"))
        hosts = tuple(check_host(h, f"{_path(prefix, 'hosts')}[{i}]") for i, h in
                      enumerate(_list(d.get("hosts", []), _path(prefix, "hosts"), InvalidConnectionInfo)))
        ports_in = _list(d.get("ports", []), _path(prefix, "ports"), InvalidConnectionInfo)
        ports: list[Optional[str]] = []
        for i, p in enumerate(ports_in):
            if p is None:  # Nova writes <host> without a port: the client's default monitor ports
                ports.append(None)
                continue
            where = f"{_path(prefix, 'ports')}[{i}]"
            _int(p, where, InvalidConnectionInfo, 1, 65535)
            ports.append(p if isinstance(p, str) else str(p))
        if len(hosts) != len(ports):
            raise InvalidConnectionInfo(_path(prefix, "ports"), f"{len(ports)} ports for {len(hosts)} hosts")
        user = d.get("auth_username")
        kw: Dict[str, Any] = {k: _opt_text(d, k, prefix) for k in cls._SCALARS}
        kw.update({k: _opt_bool(d, k, prefix) for k in cls._BOOLS})
        kw["auth_username"] = None if user is None else check_ceph_name(user, _path(prefix, "auth_username"))
        cluster = d.get("cluster_name")
        kw["cluster_name"] = None if cluster is None else check_ceph_name(cluster, _path(prefix, "cluster_name"))
        kw["keyring"] = _opt_secret(d, "keyring", prefix)
        kw["access_mode"] = _opt_text(d, "access_mode", prefix)
        if kw["access_mode"] not in (None, "rw", "ro"):
            raise InvalidConnectionInfo(_path(prefix, "access_mode"), "expected 'rw' or 'ro'")
        known = cls._SCALARS + cls._BOOLS + ("name", "hosts", "ports", "auth_username", "cluster_name",
                                             "keyring", "access_mode")
        return cls(name=name, hosts=hosts, ports=tuple(ports), extra=_extra(d, known), envelope=env, **kw)

    def data_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.extra)
        out["name"] = self.name
        if self.hosts or "hosts" in self.extra or self.ports:
            out["hosts"] = list(self.hosts)
            out["ports"] = list(self.ports)
        for k in self._SCALARS + self._BOOLS + ("auth_username", "cluster_name", "keyring", "access_mode"):
            _put(out, k, getattr(self, k))
        return out

    @property
    def pool(self) -> str:
        return self.name.split("/")[0]

    @property
    def namespace(self) -> str:
        parts = self.name.split("/")
        return parts[1] if len(parts) == 3 else ""

    @property
    def image(self) -> str:
        return self.name.split("/")[-1]

    @property
    def monitors(self) -> Tuple[Tuple[str, Optional[int]], ...]:
        """(host, port) pairs; a port of None means the monitor's default ports (3300 and 6789)."""
        return tuple((h, None if p is None else int(p)) for h, p in zip(self.hosts, self.ports))

    @property
    def read_only(self) -> bool:
        return self.access_mode == "ro"


# ---------------------------------------------------------------------------------------------
# Fibre Channel
# ---------------------------------------------------------------------------------------------

def normalize_wwn(text: str) -> Optional[str]:
    """Lower-case hex WWN without ``0x`` or ``:``, left-padded to 16 digits; None if not hex."""
    s = text.strip().lower()
    if s.startswith("0x"):
        s = s[2:]
    s = s.replace(":", "")
    if not s or len(s) > 16 or not _HEX_RE.match(s):
        return None
    return s.zfill(16)


@dataclass(frozen=True)
class FcInfo(ConnectionInfo):
    """Cinder's FC connection info. WWNs keep their given text; use :func:`normalize_wwn` to match."""

    driver_volume_type: ClassVar[str] = "fibre_channel"

    target_wwn: Union[str, Tuple[str, ...], None] = None
    target_wwns: Optional[Tuple[str, ...]] = None
    target_lun: Optional[int] = None
    target_luns: Optional[Tuple[int, ...]] = None
    initiator_target_map: Optional[Dict[str, Tuple[str, ...]]] = None
    target_discovered: Optional[bool] = None
    volume_id: Optional[str] = None
    addressing_mode: Optional[str] = None
    discard: Optional[bool] = None
    encrypted: Optional[bool] = None
    access_mode: Optional[str] = None
    wwn: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)
    envelope: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def _from_data(cls, d: Mapping[str, Any], prefix: str, env: Dict[str, Any]) -> "FcInfo":
        def wwn(v: Any, where: str) -> str:
            return check_name(v, where, max_len=64)

        tw = d.get("target_wwn")
        target_wwn: Union[str, Tuple[str, ...], None]
        if tw is None:
            target_wwn = None
        elif isinstance(tw, str):
            target_wwn = wwn(tw, _path(prefix, "target_wwn"))
        else:
            target_wwn = tuple(wwn(w, f"{_path(prefix, 'target_wwn')}[{i}]") for i, w in
                               enumerate(_list(tw, _path(prefix, "target_wwn"), InvalidConnectionInfo)))
        tws = d.get("target_wwns")
        target_wwns = None if tws is None else tuple(
            wwn(w, f"{_path(prefix, 'target_wwns')}[{i}]")
            for i, w in enumerate(_list(tws, _path(prefix, "target_wwns"), InvalidConnectionInfo)))
        tls = d.get("target_luns")
        target_luns = None if tls is None else tuple(
            _int(n, f"{_path(prefix, 'target_luns')}[{i}]", InvalidConnectionInfo)
            for i, n in enumerate(_list(tls, _path(prefix, "target_luns"), InvalidConnectionInfo)))
        if target_wwns is not None and target_luns is not None and len(target_wwns) != len(target_luns):
            raise InvalidConnectionInfo(_path(prefix, "target_luns"), "length differs from target_wwns")
        itm = d.get("initiator_target_map")
        itmap: Optional[Dict[str, Tuple[str, ...]]] = None
        if itm is not None:
            where = _path(prefix, "initiator_target_map")
            if not isinstance(itm, Mapping):
                raise InvalidConnectionInfo(where, f"expected a dict, got {_describe(itm)}")
            itmap = {}
            for k, v in itm.items():
                key = wwn(k, f"{where}.{k!s:.40}")
                itmap[key] = tuple(wwn(w, f"{where}.{key}[{i}]")
                                   for i, w in enumerate(_list(v, f"{where}.{key}", InvalidConnectionInfo)))
        mode = _opt_text(d, "addressing_mode", prefix)
        access = _opt_text(d, "access_mode", prefix)
        if access not in (None, "rw", "ro"):
            raise InvalidConnectionInfo(_path(prefix, "access_mode"), "expected 'rw' or 'ro'")
        w = d.get("wwn")
        known = ("target_wwn", "target_wwns", "target_lun", "target_luns", "initiator_target_map",
                 "target_discovered", "volume_id", "addressing_mode", "discard", "encrypted", "access_mode", "wwn")
        return cls(
            target_wwn=target_wwn, target_wwns=target_wwns,
            target_lun=_opt_int(d, "target_lun", prefix), target_luns=target_luns,
            initiator_target_map=itmap,
            target_discovered=_opt_bool(d, "target_discovered", prefix),
            volume_id=_opt_text(d, "volume_id", prefix), addressing_mode=mode,
            discard=_opt_bool(d, "discard", prefix), encrypted=_opt_bool(d, "encrypted", prefix),
            access_mode=access, wwn=None if w is None else check_name(w, _path(prefix, "wwn")),
            extra=_extra(d, known), envelope=env)

    def data_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.extra)
        if self.target_wwn is not None:
            out["target_wwn"] = self.target_wwn if isinstance(self.target_wwn, str) else list(self.target_wwn)
        if self.target_wwns is not None:
            out["target_wwns"] = list(self.target_wwns)
        if self.target_luns is not None:
            out["target_luns"] = list(self.target_luns)
        if self.initiator_target_map is not None:
            out["initiator_target_map"] = {k: list(v) for k, v in self.initiator_target_map.items()}
        for k in ("target_lun", "target_discovered", "volume_id", "addressing_mode", "discard", "encrypted",
                  "access_mode", "wwn"):
            _put(out, k, getattr(self, k))
        return out

    def target_paths(self) -> Tuple[Tuple[str, int], ...]:
        """(normalised target WWPN, LUN) pairs, de-duplicated, in the driver's order.

        Plural ``target_wwns``/``target_luns`` win (os-brick semantics); else every ``target_wwn``
        with ``target_lun``; else the targets named in ``initiator_target_map``.
        """
        pairs: list[Tuple[str, int]] = []
        if self.target_wwns is not None and self.target_luns is not None:
            pairs = list(zip(self.target_wwns, self.target_luns))
        else:
            lun = self.target_lun if self.target_lun is not None else 0
            if self.target_wwns is not None:
                wwns: Iterable[str] = self.target_wwns
            elif self.target_wwn is not None:
                wwns = (self.target_wwn,) if isinstance(self.target_wwn, str) else self.target_wwn
            else:
                wwns = [w for ts in (self.initiator_target_map or {}).values() for w in ts]
            pairs = [(w, lun) for w in wwns]
        out: list[Tuple[str, int]] = []
        for w, lun in pairs:
            n = normalize_wwn(w)
            if n is not None and (n, lun) not in out:
                out.append((n, lun))
        return tuple(out)

    @property
    def read_only(self) -> bool:
        return self.access_mode == "ro"


# ---------------------------------------------------------------------------------------------
# NVMe-oF (both of os-brick's forms: new portals list and legacy single portal)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NvmePortal:
    address: str
    port: int
    transport: str  # "tcp" | "rdma" | "fc"; os-brick accepts "TCP", "RoCEv2" aliases


@dataclass(frozen=True)
class NvmeofInfo(ConnectionInfo):
    driver_volume_type: ClassVar[str] = "nvmeof"

    target_nqn: str
    portals: Tuple[NvmePortal, ...]
    form: str = "new"  # "new" (target_nqn + portals) | "legacy" (nqn/transport_type/target_portal/target_port)
    vol_uuid: Optional[str] = None
    volume_nguid: Optional[str] = None
    ns_id: Optional[int] = None
    host_nqn: Optional[str] = None
    volume_id: Optional[str] = None
    discard: Optional[bool] = None
    encrypted: Optional[bool] = None
    access_mode: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)
    envelope: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # legacy form only: target_port exactly as given (int or str) and whether transport_type was there
    legacy_port: Any = field(default=None, compare=False, repr=False)
    absent_keys: FrozenSet[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def _from_data(cls, d: Mapping[str, Any], prefix: str, env: Dict[str, Any]) -> "NvmeofInfo":
        def transport(v: Any, where: str) -> str:
            t = _text(v, where, InvalidConnectionInfo).lower()
            t = {"roce": "rdma", "rocev2": "rdma"}.get(t, t)
            if t not in ("tcp", "rdma", "fc", "loop"):
                raise InvalidConnectionInfo(where, f"unknown transport {v!r}")
            return t

        if d.get("target_nqn") is not None or d.get("portals") is not None:
            form = "new"
            nqn = check_name(d.get("target_nqn"), _path(prefix, "target_nqn"), max_len=223)
            raw = _list(d.get("portals", []), _path(prefix, "portals"), InvalidConnectionInfo)
            portals = []
            for i, p in enumerate(raw):
                where = f"{_path(prefix, 'portals')}[{i}]"
                p = _list(p, where, InvalidConnectionInfo)
                if len(p) != 3:
                    raise InvalidConnectionInfo(where, "expected [address, port, transport]")
                portals.append(NvmePortal(check_host(p[0], where), _int(p[1], where, InvalidConnectionInfo, 1, 65535),
                                          transport(p[2], where)))
            known: Tuple[str, ...] = ("target_nqn", "portals")
        else:
            form = "legacy"
            nqn = check_name(d.get("nqn"), _path(prefix, "nqn"), max_len=223)
            portals = [NvmePortal(check_host(d.get("target_portal"), _path(prefix, "target_portal")),
                                  _int(d.get("target_port"), _path(prefix, "target_port"), InvalidConnectionInfo, 1, 65535),
                                  transport(d.get("transport_type", "tcp"), _path(prefix, "transport_type")))]
            known = ("nqn", "target_portal", "target_port", "transport_type")
        if not portals:
            raise InvalidConnectionInfo(_path(prefix, "portals"), "is empty")
        uuid = _opt_text(d, "vol_uuid", prefix)
        nguid = _opt_text(d, "volume_nguid", prefix)
        hn = d.get("host_nqn")
        access = _opt_text(d, "access_mode", prefix)
        if access not in (None, "rw", "ro"):
            raise InvalidConnectionInfo(_path(prefix, "access_mode"), "expected 'rw' or 'ro'")
        known += ("vol_uuid", "volume_nguid", "ns_id", "host_nqn", "volume_id", "discard", "encrypted", "access_mode")
        return cls(target_nqn=nqn, portals=tuple(portals), form=form, vol_uuid=uuid, volume_nguid=nguid,
                   ns_id=_opt_int(d, "ns_id", prefix, lo=1, hi=2**32 - 1),
                   host_nqn=None if hn is None else check_name(hn, _path(prefix, "host_nqn"), max_len=223),
                   volume_id=_opt_text(d, "volume_id", prefix), discard=_opt_bool(d, "discard", prefix),
                   encrypted=_opt_bool(d, "encrypted", prefix), access_mode=access,
                   extra=_extra(d, known), envelope=env,
                   legacy_port=d.get("target_port") if form == "legacy" else None,
                   absent_keys=frozenset({"transport_type"}) if form == "legacy" and "transport_type" not in d
                   else frozenset())

    def data_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.extra)
        if self.form == "new":
            out["target_nqn"] = self.target_nqn
            out["portals"] = [[p.address, p.port, p.transport] for p in self.portals]
        else:
            p = self.portals[0]
            out["nqn"] = self.target_nqn
            out["target_portal"] = p.address
            out["target_port"] = self.legacy_port if self.legacy_port is not None else p.port
            if "transport_type" not in self.absent_keys:
                out["transport_type"] = p.transport
        for k in ("vol_uuid", "volume_nguid", "ns_id", "host_nqn", "volume_id", "discard", "encrypted", "access_mode"):
            _put(out, k, getattr(self, k))
        return out

    @property
    def read_only(self) -> bool:
        return self.access_mode == "ro"


# ---------------------------------------------------------------------------------------------
# host connector (get_connector_properties output; Cinder's "connector")
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------

_INFO_TYPES: Dict[str, Callable[[Mapping[str, Any]], ConnectionInfo]] = {
    "iscsi": IscsiInfo.from_dict,
    "rbd": RbdInfo.from_dict,
    "fibre_channel": FcInfo.from_dict,
    "nvmeof": NvmeofInfo.from_dict,
}
_ALIASES = {"fc": "fibre_channel", "ceph": "rbd", "nvme": "nvmeof"}


def register_info_type(driver_volume_type: str, parser: Callable[[Mapping[str, Any]], ConnectionInfo]) -> None:
    _INFO_TYPES[driver_volume_type] = parser


def parse_connection_info(d: Any) -> ConnectionInfo:
    """Parse an os-brick/Cinder connection-info envelope into the protocol's typed info."""
    if isinstance(d, ConnectionInfo):
        return d
    if not isinstance(d, Mapping):
        raise InvalidConnectionInfo("connection_info", f"expected a dict, got {_describe(d)}")
    dvt = d.get("driver_volume_type")
    if not isinstance(dvt, str):
        raise InvalidConnectionInfo("driver_volume_type", "missing" if dvt is None else f"not a string: {_describe(dvt)}")
    parser = _INFO_TYPES.get(_ALIASES.get(dvt.lower(), dvt.lower()))
    if parser is None:
        raise InvalidConnectionInfo("driver_volume_type", f"unknown type {dvt[:40]!r}; known: {', '.join(sorted(_INFO_TYPES))}")
    return parser(d)
