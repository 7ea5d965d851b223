"""NVMe-oF connection info (os-brick's new portals form and the legacy single-portal form)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, FrozenSet, Mapping, Optional, Tuple

from blocklink.dhchap import parse_key
from blocklink.errors import InvalidConnectionInfo
from blocklink.masking import Secret
from blocklink.models.fields import (check_host, check_name, ConnectionInfo, _extra, _int, _list, _opt_bool, _opt_int,
                                     _opt_secret, _opt_text, _path, _put, _text)

_SECRETS = ("dhchap_secret", "dhchap_ctrl_secret")


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
    # NVMe in-band authentication (DH-HMAC-CHAP, Linux 6.0+ host): no os-brick/Cinder key exists for these;
    # the names are the kernel's fabrics options (and nvme-cli's --dhchap-secret/--dhchap-ctrl-secret).
    # dhchap_secret: the host's DHHC-1 key; dhchap_ctrl_secret: the controller's (bidirectional auth).
    dhchap_secret: Optional[Secret] = None
    dhchap_ctrl_secret: Optional[Secret] = None
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
        known += ("vol_uuid", "volume_nguid", "ns_id", "host_nqn", "volume_id", "discard", "encrypted", "access_mode",
                  *_SECRETS)
        secrets = {k: _opt_secret(d, k, prefix) for k in _SECRETS}
        for k, v in secrets.items():
            if v is not None:
                parse_key(v, _path(prefix, k))
        if secrets["dhchap_ctrl_secret"] is not None and secrets["dhchap_secret"] is None:
            raise InvalidConnectionInfo(_path(prefix, "dhchap_ctrl_secret"), "needs dhchap_secret (the host's key)")
        return cls(target_nqn=nqn, portals=tuple(portals), form=form, vol_uuid=uuid, volume_nguid=nguid,
                   ns_id=_opt_int(d, "ns_id", prefix, lo=1, hi=2**32 - 1),
                   host_nqn=None if hn is None else check_name(hn, _path(prefix, "host_nqn"), max_len=223),
                   volume_id=_opt_text(d, "volume_id", prefix), discard=_opt_bool(d, "discard", prefix),
                   encrypted=_opt_bool(d, "encrypted", prefix), access_mode=access, **secrets,
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
        for k in ("vol_uuid", "volume_nguid", "ns_id", "host_nqn", "volume_id", "discard", "encrypted", "access_mode",
                  *_SECRETS):
            _put(out, k, getattr(self, k))
        return out

    @property
    def read_only(self) -> bool:
        return self.access_mode == "ro"


