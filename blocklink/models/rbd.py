"""RBD connection info (Cinder's RBD driver format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

from blocklink.errors import InvalidConnectionInfo
from blocklink.masking import Secret
from blocklink.models.fields import (check_ceph_name, check_host, ConnectionInfo, _extra, _int, _list, _opt_bool,
                                     _opt_secret, _opt_text, _path, _put, _text)


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


