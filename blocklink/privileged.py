"""In-process privileged calls (rtslib-fb, sysfs writes), through oslo.privsep only when needed.

Running as root, a privileged function is simply called: no daemon, and oslo.privsep (with the
eventlet it pulls in) is never imported. Not root, the first call starts a privsep daemon through
the root helper and every later call goes over its channel. ``import blocklink`` never imports
oslo.privsep.

Functions are made privileged with :func:`entrypoint`; they must live in a ``blocklink`` module
and be importable by name, since the privsep daemon looks them up that way.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_context: Any = None
_ENTRYPOINT_ATTR = "privsep_entrypoint"  # oslo.privsep's marker attribute
# Forcing the privsep path even as root (tests), or disabling it: BLOCKLINK_PRIVSEP=force|off
_MODE = os.environ.get("BLOCKLINK_PRIVSEP", "auto")


def _build_context() -> Any:
    from oslo_privsep import capabilities as caps
    from oslo_privsep import priv_context

    return priv_context.PrivContext(
        "blocklink",
        cfg_section="blocklink_privileged",
        pypath=__name__ + ".context",
        capabilities=[caps.CAP_SYS_ADMIN, caps.CAP_DAC_OVERRIDE, caps.CAP_DAC_READ_SEARCH,
                      caps.CAP_SYS_MODULE, caps.CAP_NET_ADMIN],
    )


def __getattr__(name: str) -> Any:  # PEP 562: the daemon resolves "blocklink.privileged.context"
    global _context
    if name == "context":
        with _lock:
            if _context is None:
                _context = _build_context()
        return _context
    raise AttributeError(name)


def _direct() -> bool:
    if _MODE == "force":
        return False
    return _MODE == "off" or os.geteuid() == 0


class _Entrypoint:
    """Callable wrapper: direct call as root, privsep channel otherwise."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _direct():
            return self.func(*args, **kwargs)
        ctx = __getattr__("context")
        return ctx._wrap(self.func, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == _ENTRYPOINT_ATTR:  # asked by the privsep daemon before it runs us
            return __getattr__("context")
        raise AttributeError(name)


def entrypoint(func: F) -> F:
    if not func.__module__.startswith("blocklink"):
        raise AssertionError("privileged entrypoints must live in blocklink modules")
    return _Entrypoint(func)  # type: ignore[return-value]


def privsep_started() -> Optional[bool]:
    """Whether a privsep daemon channel exists (None if oslo.privsep was never loaded)."""
    if _context is None:
        return None
    return _context.channel is not None


@entrypoint
def write_sysfs(path: str, data: str) -> None:
    if not path.startswith("/sys/") or ".." in path.split("/"):
        raise PermissionError(f"refusing privileged write outside /sys: {path}")
    from blocklink.hostpaths import _write

    _write(path, data)


@entrypoint
def probe() -> tuple:
    """(pid, euid) of whoever runs privileged calls: this process as root, else the privsep daemon."""
    return os.getpid(), os.geteuid()
