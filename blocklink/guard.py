"""Live wrong-volume guard: take a SCSI disk offline the moment it stops carrying its volume's WWN.

When a storage array remaps a LUN number to another volume while a host still has the old one
attached (OSSA-2023-003), the host keeps sending I/O to ``host:channel:target:lun`` and the array
now routes it to someone else's volume. The kernel learns the new identity when it re-reads the
device's inquiry data (a rescan: another attach's session scan, ``iscsiadm --rescan``, an
``extend``, a udev rule reacting to a unit attention); from then on ``vpd_pg83``/``wwid`` in sysfs
name the new LU, but the disk stays ``running`` and writes go through.

:class:`WrongVolumeGuard` watches the SCSI disks of the attachments recorded for this host (each
record holds the WWN the device had at connect; a multipath map's paths are watched one by one)
and re-reads a disk's WWN

* on every kernel uevent about it: a ``change`` of the block device (``RESIZE=1`` after a rescan
  that changed the capacity), a ``change`` of the SCSI device carrying ``SDEV_UA`` (the unit
  attentions *inquiry data has changed*, *reported LUNs data has changed*, *capacity data has
  changed*, where the kernel reports them: on those the guard rescans the device itself, so the
  identity is re-read at once), an ``add`` or ``remove``;
* and on a short sweep (``interval``, 0.25 s by default), because a rescan that finds the same
  capacity raises no uevent at all, and Linux 6.1 reports none of those unit attentions as
  uevents (its ``evt_*`` switches are read-only and off; LIO sends no unit attention to the LUN
  it remaps either): the sweep is what bounds the time from "the kernel noticed" to "the disk is
  offline". The reads are of cached sysfs attributes (``vpd_pg83``, ``size``); no command reaches
  the device.

A WWN that is not the recorded one sets the disk's ``state`` to ``offline`` (through the host's
privileged sysfs writer): every later I/O to it fails with EIO instead of reaching the other
volume. The guard then logs it, adds a :class:`GuardEvent` to the attachment record's ``extra``
(``guard_events``) and calls the user's callback. A capacity change with the same WWN (a
legitimate ``extend_volume``, or the array growing the LU) is not a wrong volume: it is reported
as a ``resized`` event and the disk stays as it is. A disk that disappears is dropped from the
watch (``gone``).

Use it as a library object (``guard.start()`` / ``guard.stop()``, or ``with WrongVolumeGuard(...)``)
or as ``blocklink guard`` (JSON lines on stdout, one per event).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from blocklink.hostpaths import HostPaths
from blocklink.initiator.host import scsi
from blocklink.initiator.host.wwn import device_wwid, same_wwn
from blocklink.masking import get_logger

LOG = get_logger(__name__)

_NETLINK_KOBJECT_UEVENT = 15
# unit attentions (as the kernel names them in a scsi_device's SDEV_UA uevent) that make the guard rescan
RESCAN_ON = ("INQUIRY_DATA_HAS_CHANGED", "REPORTED_LUNS_DATA_HAS_CHANGED", "CAPACITY_DATA_HAS_CHANGED")
MAX_HISTORY = 1000

Callback = Callable[["GuardEvent"], None]


@dataclass(frozen=True)
class GuardEvent:
    """Something the guard saw. ``kind``: ``wwn_changed`` (the disk now carries another LU),
    ``resized`` (same LU, new capacity), ``gone`` (the disk disappeared), ``unit_attention`` (the
    kernel reported a sense the guard reacted to). ``action``: ``offline``, ``offline_failed``,
    ``rescan`` or ``none``. ``trigger``: what made the guard look (``uevent ...``, ``sweep``, ``start``)."""

    kind: str
    device: str
    action: str
    trigger: str
    expected_wwn: Optional[str] = None
    found_wwn: Optional[str] = None
    volume_id: Optional[str] = None
    attachment_id: Optional[str] = None
    detail: str = ""
    time: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Watched:
    """One SCSI disk under guard: the WWN it must keep, and what it looked like last time."""

    name: str
    wwn: str
    volume_id: Optional[str] = None
    attachment_id: Optional[str] = None
    explicit: bool = False
    size: Optional[int] = None
    tripped: bool = False  # taken offline already: reported once


def parse_uevent(data: bytes) -> Dict[str, str]:
    """A kernel uevent datagram (``ACTION@DEVPATH\\0KEY=VALUE\\0...``) as a dict; udev's own
    (``libudev`` magic header) messages give an empty dict."""
    if data.startswith(b"libudev"):
        return {}
    parts = data.split(b"\0")
    out: Dict[str, str] = {}
    for p in parts[1:]:
        k, sep, v = p.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    if "ACTION" not in out and b"@" in parts[0]:
        action, _, devpath = parts[0].partition(b"@")
        out["ACTION"], out["DEVPATH"] = action.decode(errors="replace"), devpath.decode(errors="replace")
    return out


def uevent_socket() -> Optional[socket.socket]:
    """A socket on the kernel's uevent multicast group, or None (not permitted, no netlink here)."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_KOBJECT_UEVENT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((0, 1))
    except OSError as e:
        LOG.warning("guard: no kernel uevents (%s); relying on the %s sweep", e, "periodic")
        return None
    s.setblocking(False)
    return s


class WrongVolumeGuard:
    """Watch attached SCSI disks; offline one whose WWN changes. See the module docstring.

    ``store``: an :class:`~blocklink.attach.records.AttachmentStore` (its active records of ``host``
    are watched and re-read every ``refresh`` seconds), or None to watch only what :meth:`watch`
    names. ``callback(event)`` runs on the guard's thread for every event. ``uevents``: the socket
    to read uevents from (default: the kernel's; tests pass one end of a socketpair), or False for
    none. ``rescan_on_unit_attention``: rescan a disk the kernel reports an identity/LUN/capacity
    unit attention for, so the identity is re-read at once."""

    def __init__(self, store: Any = None, *, paths: Optional[HostPaths] = None, host: Optional[str] = None,
                 callback: Optional[Callback] = None, interval: float = 0.25, refresh: float = 5.0,
                 uevents: Any = None, rescan_on_unit_attention: bool = True, record_events: bool = True) -> None:
        if interval <= 0 or refresh <= 0:
            raise ValueError("interval and refresh must be positive")
        self.store = store
        self.paths = paths or HostPaths()
        self.host = host or socket.gethostname()
        self.callback = callback
        self.interval = interval
        self.refresh_every = refresh
        self.rescan_on_unit_attention = rescan_on_unit_attention
        self.record_events = record_events
        self.events: List[GuardEvent] = []
        self._watched: Dict[str, Watched] = {}
        self._lock = threading.RLock()
        self._uevents_arg = uevents
        self._sock: Optional[socket.socket] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_refresh = 0.0

    # ------------------------------------------------------------------ what is watched
    def watch(self, device: str, wwn: str, *, volume_id: Optional[str] = None,
              attachment_id: Optional[str] = None) -> List[str]:
        """Guard ``device`` (``sdX``, ``/dev/...`` or a multipath ``dm-N``: its paths) for ``wwn``;
        returns the disks now watched for it."""
        names = self._disks_of(device)
        with self._lock:
            for n in names:
                self._add(Watched(n, wwn, volume_id, attachment_id, explicit=True))
        return names

    def unwatch(self, device: str) -> None:
        with self._lock:
            for n in self._disks_of(device) or [os.path.basename(device)]:
                self._watched.pop(n, None)

    def watched(self) -> Dict[str, str]:
        """``{disk: expected WWN}``."""
        with self._lock:
            return {n: w.wwn for n, w in self._watched.items()}

    def _add(self, w: Watched) -> None:
        old = self._watched.get(w.name)
        if old is not None and same_wwn(old.wwn, w.wwn):
            old.volume_id, old.attachment_id = w.volume_id or old.volume_id, w.attachment_id or old.attachment_id
            return
        w.size = scsi.size_bytes(self.paths, w.name)
        self._watched[w.name] = w
        LOG.info("guard: watching %s for WWN %s (volume %s)", w.name, w.wwn, w.volume_id)

    def _disks_of(self, device: str) -> List[str]:
        name = os.path.basename(self.paths.realpath(self.paths.from_host(device))) if "/" in device else device
        if name.startswith("dm-"):
            return [s for s in self.paths.listdir(self.paths.sys("block", name, "slaves")) if _is_scsi(self.paths, s)]
        return [name] if _is_scsi(self.paths, name) else []  # a disk gone already (a ghost) is not watched

    def refresh(self) -> None:
        """Re-read the store: watch the disks of new active records, drop those of records gone."""
        self._last_refresh = time.monotonic()
        if self.store is None:
            return
        from blocklink.attach.records import ACTIVE

        wanted: Dict[str, Watched] = {}
        for rec in self.store.list(statuses=ACTIVE):
            if rec.host != self.host or not rec.host_device or "connect" not in rec.steps:
                continue
            data = (rec.connection_info or {}).get("data") or {}
            wwn = rec.extra.get("device_wwn") or data.get("wwn")
            if not wwn:
                continue
            for n in self._disks_of(rec.host_device):
                wanted[n] = Watched(n, str(wwn), rec.volume_id, rec.id)
        with self._lock:
            for n, w in list(self._watched.items()):
                if not w.explicit and n not in wanted:
                    del self._watched[n]
            for w in wanted.values():
                if w.name not in self._watched or not self._watched[w.name].explicit:
                    self._add(w)

    # ------------------------------------------------------------------ checking
    def check(self, devices: Optional[Iterable[str]] = None, trigger: str = "sweep") -> List[GuardEvent]:
        """Compare each watched disk (or those of ``devices``) with its WWN now; act on a mismatch."""
        out: List[GuardEvent] = []
        with self._lock:
            names = list(self._watched) if devices is None else [d for d in devices if d in self._watched]
            for n in names:
                ev = self._check_one(self._watched[n], trigger)
                if ev is not None:
                    out.append(ev)
        return out

    def _check_one(self, w: Watched, trigger: str) -> Optional[GuardEvent]:
        if not self.paths.exists(self.paths.sys("block", w.name)):
            del self._watched[w.name]
            return self._emit(w, "gone", "none", trigger, detail=f"{w.name} disappeared")
        if w.tripped:
            return None
        # Size before identity: a rescan updates the cached VPD pages before the capacity, so a size
        # read first can never be newer than the WWN read after it. The other order let a rescan
        # landing between the two reads pass a remapped LU off as "resized, same WWN".
        size = scsi.size_bytes(self.paths, w.name)
        now = device_wwid(self.paths, w.name)
        if now is None:
            return None  # no identity readable right now (a device being set up or torn down)
        if not same_wwn(w.wwn, now):
            w.tripped = True
            action, detail = "offline", f"{w.name} now carries WWN {now}, not {w.wwn}: set offline"
            try:
                self.paths.write(self.paths.sys("block", w.name, "device", "state"), "offline\n")  # the kernel wants the newline
            except OSError as e:
                action, detail = "offline_failed", f"{w.name} now carries WWN {now}, not {w.wwn}; offline failed: {e}"
            return self._emit(w, "wwn_changed", action, trigger, found=now, detail=detail)
        if size is not None and w.size is not None and size != w.size:
            old, w.size = w.size, size
            return self._emit(w, "resized", "none", trigger, found=now,
                              detail=f"{w.name} went from {old} to {size} bytes with the same WWN")
        if w.size is None:
            w.size = size
        return None

    def _emit(self, w: Watched, kind: str, action: str, trigger: str, *, found: Optional[str] = None,
              detail: str = "") -> GuardEvent:
        ev = GuardEvent(kind, w.name, action, trigger, w.wwn, found, w.volume_id, w.attachment_id, detail,
                        time.time())
        level = 40 if kind == "wwn_changed" else 20
        LOG.log(level, "guard: %s (volume %s, trigger %s)", detail, w.volume_id, trigger)
        self.events.append(ev)
        del self.events[:-MAX_HISTORY]
        if self.callback is not None:  # first: the store's write may take a while
            try:
                self.callback(ev)
            except Exception:  # noqa: BLE001 - a callback never stops the guard
                LOG.exception("guard: the callback failed on %s", kind)
        if self.record_events and self.store is not None and w.attachment_id and kind != "resized":
            try:
                self.store.add_event(w.attachment_id, "guard_events", ev.to_dict())
            except Exception as e:  # noqa: BLE001 - the record is gone or busy: the event is out already
                LOG.warning("guard: cannot record the event on attachment %s: %s", w.attachment_id, e)
        return ev

    # ------------------------------------------------------------------ uevents
    def handle_uevent(self, ev: Dict[str, str]) -> List[GuardEvent]:
        """React to one parsed uevent (see :func:`parse_uevent`)."""
        action, subsystem = ev.get("ACTION", ""), ev.get("SUBSYSTEM", "")
        devpath = ev.get("DEVPATH", "")
        if subsystem == "block" and ev.get("DEVTYPE", "disk") == "disk":
            name = ev.get("DEVNAME") or os.path.basename(devpath)
            name = os.path.basename(name)
            if action == "add" and self.store is not None:
                self.refresh()  # a new path of a watched map, or a new attachment's disk
            return self.check([name], trigger=f"uevent {action} {name}" + (" RESIZE" if ev.get("RESIZE") else ""))
        if subsystem == "scsi" and ev.get("DEVTYPE") == "scsi_device":
            hctl = os.path.basename(devpath)
            names = self.paths.listdir(self.paths.sys("class", "scsi_device", hctl, "device", "block"))
            ua = ev.get("SDEV_UA", "")
            out: List[GuardEvent] = []
            if ua in RESCAN_ON:
                targets = names if ua != "REPORTED_LUNS_DATA_HAS_CHANGED" else self._same_target(hctl)
                with self._lock:
                    mine = [n for n in targets if n in self._watched]
                    for n in mine:
                        act = "none"
                        if self.rescan_on_unit_attention:
                            try:
                                scsi.rescan(self.paths, n)
                                act = "rescan"
                            except OSError as e:
                                LOG.warning("guard: rescan of %s after %s failed: %s", n, ua, e)
                        out.append(self._emit(self._watched[n], "unit_attention", act, f"uevent {ua}",
                                              detail=f"{n}: the target reported {ua.lower().replace('_', ' ')}"))
                    out += self.check(mine, trigger=f"uevent {ua}")
                return out
            return self.check(names, trigger=f"uevent {action} {hctl}")
        return []

    def _same_target(self, hctl: str) -> List[str]:
        prefix = hctl.rsplit(":", 1)[0] + ":"
        out = []
        with self._lock:
            for n in self._watched:
                h = scsi.device_hctl(self.paths, n)
                if h is not None and str(h).startswith(prefix):
                    out.append(n)
        return out

    # ------------------------------------------------------------------ the thread
    def start(self) -> "WrongVolumeGuard":
        """Read the records, check every disk once (a mismatch already there is acted on), then
        watch on a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return self
        if self._uevents_arg is None:
            self._sock = uevent_socket()
        elif self._uevents_arg is not False:
            self._sock = self._uevents_arg
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop.clear()
        self.refresh()
        self.check(trigger="start")
        self._thread = threading.Thread(target=self._run, name="blocklink-guard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        if self._wake_w is not None:
            self._wake_w.send(b"x")
        self._thread.join()
        self._thread = None
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None
        if self._sock is not None and self._uevents_arg is None:
            self._sock.close()  # ours; a socket the caller passed stays the caller's
        self._sock = None

    def __enter__(self) -> "WrongVolumeGuard":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        fds: List[Any] = [s for s in (self._sock, self._wake_r) if s is not None]
        next_sweep = time.monotonic() + self.interval
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(fds, [], [], max(0.0, next_sweep - time.monotonic()))
            except InterruptedError:
                continue
            try:
                if self._sock is not None and self._sock in ready:
                    for msg in self._drain(self._sock):
                        self.handle_uevent(msg)
                if time.monotonic() >= next_sweep:
                    if time.monotonic() - self._last_refresh >= self.refresh_every:
                        self.refresh()
                    self.check(trigger="sweep")
                    next_sweep = time.monotonic() + self.interval
            except Exception:  # noqa: BLE001 - the guard keeps guarding
                LOG.exception("guard: error while checking")
                next_sweep = time.monotonic() + self.interval

    @staticmethod
    def _drain(sock: socket.socket) -> List[Dict[str, str]]:
        out: List[Dict[str, str]] = []
        while True:
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # events were lost: the sweep re-checks everything
                    out.append({})
                    continue
                raise
            if not data:
                return out
            msg = parse_uevent(data)
            if msg:
                out.append(msg)


def _is_scsi(paths: HostPaths, name: str) -> bool:
    return scsi.device_hctl(paths, name) is not None


def guard(store: Any = None, **kwargs: Any) -> WrongVolumeGuard:
    """A started :class:`WrongVolumeGuard` (stop it with ``.stop()``)."""
    return WrongVolumeGuard(store, **kwargs).start()


__all__: Sequence[str] = ["GuardEvent", "WrongVolumeGuard", "Watched", "guard", "parse_uevent", "uevent_socket",
                          "RESCAN_ON"]
