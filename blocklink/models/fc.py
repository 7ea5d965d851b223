"""Fibre Channel connection info and WWN normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterable, Mapping, Optional, Tuple, Union

from blocklink.errors import InvalidConnectionInfo
from blocklink.models.fields import (check_name, ConnectionInfo, _describe, _extra, _HEX_RE, _int, _list, _opt_bool,
                                     _opt_int, _opt_text, _path, _put)


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


