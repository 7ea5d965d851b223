"""libvirt domain events without polling: the default event loop in a thread, and device-removal waits.

libvirt delivers events only on connections opened *after* an event implementation was registered,
so :func:`ensure_event_loop` must run before ``libvirt.open`` (``LibvirtHost`` does this). The loop
is process-wide by libvirt's design: one daemon thread runs ``virEventRunDefaultImpl`` forever.
"""

from __future__ import annotations

import threading
import time
from typing import Any, List, Optional, Tuple

from blocklink.errors import MissingDependency
from blocklink.masking import get_logger

LOG = get_logger(__name__)

__all__ = ["ensure_event_loop", "event_loop_running", "quiet_libvirt_errors", "DeviceRemovalWatch"]

_lock = threading.Lock()
_thread: Optional[threading.Thread] = None


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise MissingDependency("libvirt", "install libvirt-python (pip install blocklink[libvirt])") from None
    return libvirt


def _run_loop(lv: Any) -> None:
    while True:
        try:
            lv.virEventRunDefaultImpl()
        except Exception:  # noqa: BLE001 - the loop must survive a failing callback
            LOG.exception("libvirt event loop iteration failed")


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and start its thread (once per process)."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        lv = _libvirt()
        lv.virEventRegisterDefaultImpl()
        t = threading.Thread(target=_run_loop, args=(lv,), name="libvirt-events", daemon=True)
        t.start()
        _thread = t


def _ignore_error(opaque: Any, error: Any) -> None:
    """libvirt's default handler prints every error to stderr; ours surface as exceptions instead."""


def quiet_libvirt_errors() -> None:
    """Stop libvirt-python printing errors to stderr (they are raised as exceptions anyway), as Nova does."""
    _libvirt().registerErrorHandler(_ignore_error, None)


def event_loop_running() -> bool:
    return _thread is not None and _thread.is_alive()


class DeviceRemovalWatch:
    """Collects DEVICE_REMOVED / DEVICE_REMOVAL_FAILED events of one domain while it is open.

    Open it *before* asking for the detach, so an event cannot slip by between request and wait.
    """

    def __init__(self, conn: Any, dom: Any) -> None:
        self._conn = conn
        self._dom = dom
        self._cond = threading.Condition()
        self._events: List[Tuple[str, str]] = []
        self._ids: List[int] = []

    def __enter__(self) -> "DeviceRemovalWatch":
        lv = _libvirt()
        try:
            self._ids.append(self._conn.domainEventRegisterAny(
                self._dom, lv.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._removed, None))
            self._ids.append(self._conn.domainEventRegisterAny(
                self._dom, lv.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, self._failed, None))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        while self._ids:
            cb = self._ids.pop()
            try:
                self._conn.domainEventDeregisterAny(cb)
            except Exception:  # noqa: BLE001 - the connection may already be gone
                LOG.debug("could not deregister libvirt event callback %s", cb)

    def _removed(self, conn: Any, dom: Any, alias: str, opaque: Any) -> None:
        self._add("removed", alias)

    def _failed(self, conn: Any, dom: Any, alias: str, opaque: Any) -> None:
        self._add("failed", alias)

    def _add(self, kind: str, alias: str) -> None:
        with self._cond:
            self._events.append((kind, alias))
            self._cond.notify_all()

    def wait(self, alias: str, timeout: float) -> Optional[str]:
        """``"removed"`` or ``"failed"`` once such an event for ``alias`` arrived; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for kind, a in self._events:
                    if a == alias:
                        return kind
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
