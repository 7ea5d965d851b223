"""iSCSI connection info: portals, targets, CHAP (Cinder's single, multi-portal and plural-only forms)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, FrozenSet, Mapping, Optional, Tuple

from blocklink.errors import InvalidConnectionInfo
from blocklink.masking import Secret
from blocklink.models.fields import (check_host, check_name, ConnectionInfo, _Err, _extra, _int, _list, _opt_bool,
                                     _opt_secret, _opt_text, _path, _put, _text)


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


