"""``connector_for(protocol, **options)``: built-in connectors plus the ``blocklink.connectors`` entry points."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable, Dict, List

from blocklink.errors import UnknownProtocol

ENTRY_POINT_GROUP = "blocklink.connectors"

# imported on first use so `import blocklink` stays cheap
_BUILTIN: Dict[str, str] = {
    "rbd": "blocklink.initiator.rbd:RBDConnector",
    "iscsi": "blocklink.initiator.iscsi:ISCSIConnector",
    "fibre_channel": "blocklink.initiator.fc:FibreChannelConnector",
    "nvmeof": "blocklink.initiator.nvmeof:NVMeOFConnector",
}
# attach="userspace": the volume is served by one qemu-storage-daemon per volume (no kernel initiator)
_USERSPACE: Dict[str, str] = {
    "iscsi": "blocklink.initiator.userspace:UserspaceISCSIConnector",
    "rbd": "blocklink.initiator.userspace:UserspaceRBDConnector",
}
_ALIASES = {"fc": "fibre_channel", "ceph": "rbd", "nvme": "nvmeof", "nvme_tcp": "nvmeof"}
_extra: Dict[str, Callable[..., Any]] = {}


def register_connector(protocol: str, factory: Callable[..., Any]) -> None:
    """Register a connector factory at run time (entry points are the packaged way)."""
    _extra[protocol.lower()] = factory


def _entry_points() -> Dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name.lower(): ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load(ref: str) -> Any:
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


def _available(name: str) -> bool:
    ref = _BUILTIN.get(name)
    if ref is None:
        return False
    return importlib.util.find_spec(ref.partition(":")[0]) is not None


def known_protocols() -> List[str]:
    names = {n for n in _BUILTIN if _available(n)} | set(_extra)
    names |= set(_entry_points())
    return sorted(names)


def connector_for(protocol: str, **options: Any) -> Any:
    """A connector for ``protocol`` ("rbd", "iscsi", "fibre_channel", "nvmeof", or a plugin's name).

    ``options`` go to the connector's constructor (``executor=``, ``paths=``, protocol options);
    ``attach="userspace"`` picks the qemu-storage-daemon connector of that protocol instead of the
    kernel initiator.
    """
    if not isinstance(protocol, str):
        raise UnknownProtocol(repr(protocol), known_protocols())
    name = _ALIASES.get(protocol.lower(), protocol.lower())
    attach = options.pop("attach", "kernel")
    if attach == "userspace":
        if name not in _USERSPACE:
            raise UnknownProtocol(f"{protocol} (attach='userspace')", list(_USERSPACE))
        return _load(_USERSPACE[name])(**options)
    if attach != "kernel":
        from blocklink.errors import InvalidConnectionInfo

        raise InvalidConnectionInfo("attach", f"expected 'kernel' or 'userspace', got {attach!r}")
    if name in _extra:
        return _extra[name](**options)
    if name in _BUILTIN and _available(name):
        return _load(_BUILTIN[name])(**options)
    eps = _entry_points()
    if name in eps:
        return eps[name].load()(**options)
    raise UnknownProtocol(protocol, known_protocols())
