"""``connector_for(protocol, **options)``: built-in connectors plus the ``blocklink.connectors`` entry points.

The overloads give each built-in protocol name (and alias) its concrete connector type, so
``connector_for("iscsi")`` is an :class:`~blocklink.initiator.iscsi.ISCSIConnector` to a type checker;
a plugin's name gives a :class:`~blocklink.initiator.base.Connector`. Aliases come from the one table in
:mod:`blocklink.models.protocols` that :func:`~blocklink.connection.parse_connection_info` also reads.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Literal, Mapping, overload

from blocklink.errors import InvalidOption, UnknownProtocol
from blocklink.models.protocols import canonical_protocol

if TYPE_CHECKING:  # the connector modules load on first use so `import blocklink` stays cheap
    from blocklink.initiator.base import Connector
    from blocklink.initiator.fc import FibreChannelConnector
    from blocklink.initiator.iscsi import ISCSIConnector
    from blocklink.initiator.nvmeof import NVMeOFConnector
    from blocklink.initiator.rbd import RBDConnector
    from blocklink.initiator.userspace import UserspaceISCSIConnector, UserspaceRBDConnector

ENTRY_POINT_GROUP = "blocklink.connectors"

# canonical protocol -> "module:class" of its kernel-initiator connector
BUILTIN_CONNECTORS: Mapping[str, str] = {
    "rbd": "blocklink.initiator.rbd:RBDConnector",
    "iscsi": "blocklink.initiator.iscsi:ISCSIConnector",
    "fibre_channel": "blocklink.initiator.fc:FibreChannelConnector",
    "nvmeof": "blocklink.initiator.nvmeof:NVMeOFConnector",
}
# attach="userspace": the volume is served by one qemu-storage-daemon per volume (no kernel initiator)
USERSPACE_CONNECTORS: Mapping[str, str] = {
    "iscsi": "blocklink.initiator.userspace:UserspaceISCSIConnector",
    "rbd": "blocklink.initiator.userspace:UserspaceRBDConnector",
}
ATTACH_MODES = ("kernel", "userspace")
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
    ref = BUILTIN_CONNECTORS.get(name)
    if ref is None:
        return False
    return importlib.util.find_spec(ref.partition(":")[0]) is not None


def known_protocols() -> List[str]:
    names = {n for n in BUILTIN_CONNECTORS if _available(n)} | set(_extra)
    names |= set(_entry_points())
    return sorted(names)


def _build(factory: Callable[..., Any], options: Dict[str, Any]) -> Any:
    """``factory(**options)``; an option the factory cannot take is :class:`InvalidOption`, not a TypeError."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let it check its own arguments
        return factory(**options)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        accepted = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                         inspect.Parameter.POSITIONAL_OR_KEYWORD)}
        for name in options:
            if name not in accepted:
                raise InvalidOption(name, f"{getattr(factory, '__name__', 'the connector')} has no such option")
    return factory(**options)


@overload
def connector_for(protocol: Literal["iscsi"], *, attach: Literal["kernel"] = ..., **options: Any) -> ISCSIConnector: ...
@overload
def connector_for(protocol: Literal["iscsi"], *, attach: Literal["userspace"],
                  **options: Any) -> UserspaceISCSIConnector: ...
@overload
def connector_for(protocol: Literal["rbd", "ceph"], *, attach: Literal["kernel"] = ...,
                  **options: Any) -> RBDConnector: ...
@overload
def connector_for(protocol: Literal["rbd", "ceph"], *, attach: Literal["userspace"],
                  **options: Any) -> UserspaceRBDConnector: ...
@overload
def connector_for(protocol: Literal["fibre_channel", "fc"], *, attach: Literal["kernel"] = ...,
                  **options: Any) -> FibreChannelConnector: ...
@overload
def connector_for(protocol: Literal["nvmeof", "nvme", "nvme_tcp"], *, attach: Literal["kernel"] = ...,
                  **options: Any) -> NVMeOFConnector: ...
@overload
def connector_for(protocol: str, **options: Any) -> Connector: ...


def connector_for(protocol: str, *, attach: str = "kernel", **options: Any) -> Connector:
    """A connector for ``protocol`` ("rbd", "iscsi", "fibre_channel", "nvmeof", an alias, or a plugin's name).

    ``options`` go to the connector's constructor (``executor=``, ``paths=``, protocol options; an
    unknown one raises :class:`~blocklink.errors.InvalidOption`); ``attach="userspace"`` picks the
    qemu-storage-daemon connector of that protocol instead of the kernel initiator.
    """
    if not isinstance(protocol, str):
        raise UnknownProtocol(repr(protocol), known_protocols())
    if attach not in ATTACH_MODES:
        raise InvalidOption("attach", f"expected one of {', '.join(map(repr, ATTACH_MODES))}, got {attach!r}")
    name = canonical_protocol(protocol)
    conn: Connector
    if attach == "userspace":
        if name not in USERSPACE_CONNECTORS:
            raise UnknownProtocol(f"{protocol} (attach='userspace')", list(USERSPACE_CONNECTORS))
        conn = _build(_load(USERSPACE_CONNECTORS[name]), options)
    elif name in _extra:
        conn = _build(_extra[name], options)
    elif name in BUILTIN_CONNECTORS and _available(name):
        conn = _build(_load(BUILTIN_CONNECTORS[name]), options)
    else:
        eps = _entry_points()
        if name not in eps:
            raise UnknownProtocol(protocol, known_protocols())
        conn = _build(eps[name].load(), options)
    return conn
