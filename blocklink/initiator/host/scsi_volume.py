"""What every SCSI-transport connector (iSCSI, Fibre Channel, any later one) does the same way.

A SCSI volume on this host is one or more disks (sdX, one per path) carrying the volume's WWN,
perhaps held by a dm-multipath map. How the disks come to exist is the transport's business
(iSCSI sessions, FC remote ports); everything after that is policy shared here, in one place:

* **WWN checks.** A disk is handed out, flushed or removed only if its WWN is the volume's
  (``info.wwn``, or the one kept in ``AttachedDevice.wwn`` at connect). A device of another volume
  raises :class:`DeviceMismatch` before anything is touched, and is left in place.
* **Teardown order.** Flush the map's buffers and the map itself, then remove the SCSI disks,
  then the transport's own steps (an iSCSI logout). A step that fails stops the detach, unless
  ``force``: then the rest still runs and :class:`DetachIncomplete` lists what was left undone.
* **One flush policy.** ``multipath -f`` is retried only while the map reports "in use" (udev's
  probe after the last close holds it briefly), re-tried on events, until ``flush_timeout``; then
  :class:`DeviceBusy`. Any other failure is :class:`DeviceBusy` at once.
* **One lock rule.** Connect, disconnect and extend of a volume run under that volume's lock, for
  their whole length (transports may take narrower locks inside, e.g. per iSCSI target).
* **Extend**, **LUN addressing** and the multipath hand-out (``min_paths``, ``enforce_multipath``,
  falling back to one path) are the same for every transport.

A transport subclasses :class:`ScsiConnector` and writes ``_connect`` and the few hooks below.
"""

from __future__ import annotations

import abc
import contextlib
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from blocklink.connection import AttachedDevice
from blocklink.errors import (BlocklinkError, CommandFailed, ConnectionFailed, DetachIncomplete, DeviceBusy,
                              DeviceMismatch, DeviceNotFound, InvalidConnectionInfo)
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.base import Connector, DeviceLike, InfoLike
from blocklink.initiator.host import scsi
from blocklink.initiator.host.multipath import DmMap, Multipath, map_for_wwid, map_holding, read_map, wait_for_map
from blocklink.initiator.host.wait import Pacer, wait_for
from blocklink.initiator.host.wwn import device_wwid, same_wwn
from blocklink.initiator.options import count, flag, fold_renamed, seconds
from blocklink.locks import LockFactory
from blocklink.masking import get_logger
from blocklink.trace import span

LOG = get_logger(__name__)

_RESIZE_RETRY = 0.25  # seconds between "multipathd resize map" attempts it refused
ADDRESSING_MODES = ("SAM", "transparent", "SAM2", "SAM3-flat")

T = TypeVar("T")
Step = Tuple[str, Callable[[], object]]  # what (for the failure list), action


def lun_for_addressing(lun: int, mode: Optional[str]) -> int:
    """The LUN number Linux uses for ``lun`` under the array's addressing mode (SAM-2/3 flat space
    adds 0x4000; SAM and "transparent" use the number as is)."""
    mode = mode or "SAM"
    if mode not in ADDRESSING_MODES:
        raise InvalidConnectionInfo("addressing_mode", f"expected one of {', '.join(ADDRESSING_MODES)}")
    if mode == "SAM3-flat" or (mode == "SAM2" and lun >= 256):
        return lun + 16384
    return lun


class Steps:
    """Run teardown steps: the first failure raises, unless ``force`` (then it is recorded)."""

    def __init__(self, force: bool) -> None:
        self.force = force
        self.failures: List[str] = []

    def run(self, what: str, fn: Callable[..., object], *args: Any) -> bool:
        try:
            with span("teardown", action=what):
                fn(*args)
            return True
        except (BlocklinkError, OSError) as e:
            if not self.force:
                raise
            LOG.warning("forced disconnect: %s failed: %s", what, e)
            self.failures.append(f"{what}: {e}")
            return False


class ScsiConnector(Connector):
    """Base of the SCSI-transport connectors.

    Options shared by all of them: ``use_multipath`` (attach every path and return the
    dm-multipath device; default False), ``min_paths`` (paths needed before a multipath attach
    succeeds), ``enforce_multipath`` (fail instead of falling back to one path when no map
    appears), ``timeout`` (seconds to wait for disks and maps), ``flush_timeout`` (how long a map
    may stay "in use" at disconnect), ``lock_path`` (directory of the lock files; default under
    ``run_dir``). ``device_timeout`` and ``flush_retry_seconds`` are the deprecated old names.
    """

    label: str = "SCSI"  # how messages name the transport ("iSCSI volume ...")

    def __init__(self, *, use_multipath: bool = False, min_paths: int = 1, enforce_multipath: bool = False,
                 timeout: float = 30.0, flush_timeout: float = 15.0, lock_path: Optional[str] = None,
                 run_dir: str = "/run/blocklink", executor: Optional[Executor] = None,
                 paths: Optional[HostPaths] = None, **legacy: Any) -> None:
        opts = fold_renamed(type(self).__name__, legacy, {"timeout": timeout, "flush_timeout": flush_timeout})
        self.use_multipath = flag("use_multipath", use_multipath)
        self.min_paths = count("min_paths", min_paths, minimum=1)
        self.enforce_multipath = flag("enforce_multipath", enforce_multipath)
        self.timeout = seconds("timeout", opts["timeout"])
        self.flush_timeout = seconds("flush_timeout", opts["flush_timeout"], allow_zero=True)
        super().__init__(executor=executor, paths=paths)
        self.multipath = Multipath(self.executor, self.paths)
        self.locks = LockFactory(lock_path or os.path.join(run_dir, "locks"))
        self._uevents = self.paths.sysfs == "/sys"  # a fake tree has no kernel behind it

    # ------------------------------------------------------------------ transport hooks
    @abc.abstractmethod
    def _volume_lock(self, vol: Any) -> str:
        """Name of the volume's lock, the same for every info naming the volume the same way."""

    @abc.abstractmethod
    def _describe(self, vol: Any) -> str:
        """The volume's address for messages (target and LUN)."""

    @abc.abstractmethod
    def _connect(self, vol: Any) -> AttachedDevice:
        """Make the volume's disks appear and hand them out (runs under the volume's lock)."""

    @abc.abstractmethod
    def _address_devices(self, vol: Any) -> Dict[str, str]:
        """Disks (sdX -> how found) at the info's addresses on this host, whatever LU they hold."""

    @abc.abstractmethod
    def _on_transport(self, name: str) -> bool:
        """Whether disk ``name`` is reached over this transport (a map may mix transports)."""

    def _same_lu_elsewhere(self, vol: Any, expected: str) -> Dict[str, str]:
        """Further disks of LU ``expected`` reached over this transport (e.g. discovered portals)."""
        return {}

    def _protocol_teardown(self, vol: Any, names: Sequence[str]) -> List[Step]:
        """Transport steps to run once the disks are gone (e.g. logouts). Planned before anything is
        removed, while the disks still show which sessions or ports they used."""
        return []

    # ------------------------------------------------------------------ the interface
    @contextlib.contextmanager
    def _locked(self, vol: Any) -> Iterator[None]:
        name = self._volume_lock(vol)
        with contextlib.ExitStack() as held:
            with span("lock_volume", lock=name):
                held.enter_context(self.locks.lock(name))
            yield

    def connect_volume(self, info: InfoLike) -> AttachedDevice:
        vol = self._info(info)
        with self._locked(vol):
            return self._connect(vol)

    def disconnect_volume(self, info: InfoLike, device: DeviceLike = None, force: bool = False) -> None:
        vol = self._info(info)
        dev = self._device(device)
        with self._locked(vol):
            with span("find_devices", volume=self._describe(vol)):
                used = self.dev_name(dev.path) if dev is not None and dev.path else None
                if used is not None and not self.paths.exists(self.paths.sys("block", used)):
                    used = None  # already gone
                expected = self.expected_wwn(vol, dev.wwn if dev is not None else None, used)
                names = self.volume_devices(vol, expected, used)
            self._teardown(vol, names, expected, used, force)

    def extend_volume(self, info: InfoLike) -> int:
        vol = self._info(info)
        with self._locked(vol):
            names = self.volume_devices(vol, vol.wwn)
            if not names:
                raise DeviceNotFound(f"{self.label} volume {vol.wwn or self._describe(vol)}")
            return self._extend(names)

    def get_volume_paths(self, info: InfoLike) -> List[str]:
        vol = self._info(info)
        return [f"/dev/{n}" for n in self.volume_devices(vol, vol.wwn)]

    # ------------------------------------------------------------------ finding the volume
    def dev_name(self, path: str) -> str:
        """Kernel name (sda, dm-3) of a device path, following /dev/disk/* and /dev/mapper/* links."""
        return os.path.basename(self.paths.realpath(self.paths.from_host(path)))

    def wwn_of(self, name: str) -> Optional[str]:
        """The WWN a disk or multipath map (dm-N) carries."""
        m = read_map(self.paths, name) if name.startswith("dm-") else None
        return m.wwid if m is not None else device_wwid(self.paths, name)

    def expected_wwn(self, vol: Any, recorded: Optional[str], used: Optional[str]) -> Optional[str]:
        """The WWN of the volume being detached, after checking that the caller's device ``used``
        (present on this host, or None), the WWN ``recorded`` at connect, ``info.wwn`` and the LU
        now at the info's address agree. A device of another volume raises :class:`DeviceMismatch`."""
        path = f"/dev/{used}" if used else "device"
        found = self.wwn_of(used) if used else None
        if recorded and found and not same_wwn(recorded, found):
            raise DeviceMismatch(path, recorded, found)  # the name now holds another LU
        mine = recorded or found
        if vol.wwn and mine and not same_wwn(vol.wwn, mine):
            if used:
                raise DeviceMismatch(path, vol.wwn, mine)
            mine = None  # our device is gone; the recorded WWN is not this info's volume
        if used and mine and not vol.wwn:
            at_address = [w for w in (device_wwid(self.paths, n) for n in self._address_devices(vol)) if w]
            if not at_address and not recorded:
                # nothing is at the volume's address and nothing says which LU the caller's device held:
                # the name may have been reused by another volume since (Nova passes only device_path)
                raise DeviceMismatch(path, f"the LU of {self._describe(vol)} (none at its address)", mine)
            if at_address and not any(same_wwn(w, mine) for w in at_address):
                raise DeviceMismatch(path, at_address[0], mine)  # the info names another LU than the device
        return vol.wwn or mine

    def volume_devices(self, vol: Any, expected: Optional[str], used: Optional[str] = None) -> List[str]:
        """The volume's disks on this host, in any state: at the info's addresses, elsewhere on the
        transport with the same WWN, and the paths of the map the caller used. With a known WWN,
        disks of another LU are left out (and alone)."""
        found = self._address_devices(vol)
        if expected:
            for name, how in self._same_lu_elsewhere(vol, expected).items():
                found.setdefault(name, how)
        m = read_map(self.paths, used) if used and used.startswith("dm-") else None
        for slave in m.slaves if m is not None else ():
            if self._on_transport(slave):
                found.setdefault(slave, f"path of /dev/{used}")
        names = []
        for name in sorted(found):
            wwid = device_wwid(self.paths, name)
            if expected and (wwid is None or not same_wwn(expected, wwid)):
                LOG.warning("leaving /dev/%s (%s) alone: WWN %s is not this volume's %s", name, found[name],
                            wwid, expected)
                continue
            names.append(name)
        return names

    # ------------------------------------------------------------------ connect helpers
    def split_by_wwn(self, expected: Optional[str], items: Sequence[T], name: Callable[[T], str]
                     ) -> Tuple[List[T], List[T], str]:
        """``items`` (each naming a disk) of the expected LU, or of the most common WWN when none is
        expected; the others; and the WWN. Raises :class:`DeviceNotFound` if no disk has a WWN."""
        ids = [device_wwid(self.paths, name(i)) or "" for i in items]
        if items and not any(ids):
            ids = self._await_wwids([name(i) for i in items])
        if expected:
            wwid = next((w for w in ids if w and same_wwn(expected, w)), expected)
            mine = [bool(w) and same_wwn(expected, w) for w in ids]
        else:
            counts: Dict[str, int] = {}
            for w in ids:
                if w:
                    counts[w] = counts.get(w, 0) + 1
            if not counts:
                raise DeviceNotFound(f"a WWN for /dev/{name(items[0])} (no VPD page 0x83 or wwid in sysfs)")
            wwid = max(counts, key=lambda w: (counts[w], -list(counts).index(w)))  # ties: first seen
            mine = [w == wwid for w in ids]
        return ([i for i, ok in zip(items, mine) if ok], [i for i, ok in zip(items, mine) if not ok], wwid)

    def _await_wwids(self, names: Sequence[str]) -> List[str]:
        """WWIDs of disks that appeared showing none. The kernel reads a disk's VPD pages when it adds
        it; an INQUIRY the target answers late (6.12 guest under load, an FC re-attach) leaves the
        disk without page 0x83 until a rescan reads the pages again. Rescanned at most every second,
        until one has a WWID or ``timeout`` passes (then still none: the caller raises)."""
        rescans = Pacer(1.0)

        def check() -> Optional[List[str]]:
            if rescans.due():  # the caller has just read none: the first check rescans at once
                for n in names:
                    with contextlib.suppress(OSError, BlocklinkError):
                        scsi.rescan(self.paths, n)
            ids = [device_wwid(self.paths, n) or "" for n in names]
            return ids if any(ids) else None

        try:
            found = wait_for(check, timeout=self.timeout, uevents=self._uevents, recheck=0.25,
                             what=f"a WWID for {', '.join('/dev/' + n for n in names)}")
        except DeviceNotFound:
            return [""] * len(names)
        LOG.info("a rescan gave %s the WWID it lacked when it appeared", ", ".join(names))
        return found

    def mismatch(self, expected: Optional[str], name: str) -> DeviceMismatch:
        return DeviceMismatch(f"/dev/{name}", expected or "", device_wwid(self.paths, name) or "")

    def _hand_out(self, what: str, wwid: str, names: Sequence[str], tried: int) -> AttachedDevice:
        """The device for disks ``names`` of LU ``wwid`` (reached over ``tried`` paths): the first
        disk, or with ``use_multipath`` the map over them. Raises if ``min_paths`` are not up or,
        with ``enforce_multipath``, if no map appears; the caller then removes what it surfaced."""
        devices = tuple(f"/dev/{n}" for n in names)
        if not self.use_multipath:
            LOG.info("attached %s as %s", what, devices[0])
            return AttachedDevice(self.protocol, path=devices[0], wwn=wwid, paths=devices)
        if len(names) < self.min_paths:
            raise ConnectionFailed(what, f"{len(names)} of {tried} path(s) up, {self.min_paths} required")
        with span("wait_multipath_map", wwn=wwid, paths=",".join(names)):
            dm = wait_for_map(self.multipath, wwid, names, timeout=self.timeout, uevents=self._uevents,
                              min_paths=self.min_paths)
        if dm is None:
            if self.enforce_multipath:
                raise DeviceNotFound(f"multipath map mpath-{wwid}", self.timeout)
            LOG.warning("no multipath map for %s appeared; returning single path %s", wwid, devices[0])
            return AttachedDevice(self.protocol, path=devices[0], wwn=wwid, paths=devices)
        LOG.info("attached %s as /dev/%s over %d of %d path(s)", what, dm.dm, len(names), tried)
        return AttachedDevice(self.protocol, path=f"/dev/{dm.dm}", wwn=wwid, multipath_id=wwid, paths=devices)

    # ------------------------------------------------------------------ disconnect / extend
    def _teardown(self, vol: Any, names: List[str], expected: Optional[str], used: Optional[str],
                  force: bool) -> None:
        """Flush (the map, else the disk the caller used), remove the disks, then the transport's steps."""
        with span("plan_teardown", devices=",".join(names)):
            after = self._protocol_teardown(vol, names)
            m = map_holding(self.paths, names) or (map_for_wwid(self.paths, expected) if expected else None)
        if m is not None and expected and not same_wwn(expected, m.wwid):
            raise DeviceMismatch(m.path, expected, m.wwid)
        steps = Steps(force)
        if m is not None:
            if used is None or used == m.dm:
                steps.run(f"flush {m.path}", scsi.flush, self.executor, self.paths, m.dm)
            if not steps.run(f"flush multipath map {m.name}", self.flush_map, m):
                steps.run(f"remove map {m.name} from multipathd", self.multipath.del_map, m.name)
        else:
            for name in names:
                if used is None or used == name:  # paths under a map were flushed with it
                    steps.run(f"flush /dev/{name}", scsi.flush, self.executor, self.paths, name)
        for name in names:
            hctl = scsi.device_hctl(self.paths, name)
            if hctl is not None:
                steps.run(f"delete /dev/{name}", scsi.delete, self.paths, hctl)
        for what, action in after:
            steps.run(what, action)
        label = f"{self.label} volume {expected or self._describe(vol)}"
        if steps.failures:
            raise DetachIncomplete(label, steps.failures)
        LOG.info("detached %s (%d device(s))", label, len(names))

    def flush_map(self, m: DmMap) -> None:
        """``multipath -f``, re-tried while the map is only "in use" (udev's probe after the last
        close, say) until ``flush_timeout``; a map still in use then, or any other failure, raises
        :class:`DeviceBusy` and leaves the map and its disks in place."""
        def attempt() -> Optional[bool]:
            try:
                self.multipath.flush(m.name)
                return True
            except CommandFailed as e:
                if "in use" in f"{e.stdout} {e.stderr}":
                    return None
                raise DeviceBusy(m.path, f"multipath -f {m.name} failed: {e}") from None

        try:
            wait_for(attempt, timeout=self.flush_timeout, uevents=self._uevents, what=f"{m.path} to close",
                     recheck=0.25)
        except DeviceNotFound:
            raise DeviceBusy(m.path, f"multipath map {m.name} still in use after {self.flush_timeout:g}s") from None

    def _extend(self, names: List[str]) -> int:
        """Rescan every path (all must be running), then grow the map; returns the new size."""
        for n in names:
            hctl = scsi.device_hctl(self.paths, n)
            dev = scsi.scsi_device(self.paths, hctl) if hctl is not None else None
            if dev is None or dev.state != "running":
                raise DeviceBusy(f"/dev/{n}", f"path is {dev.state if dev else 'gone'}; all paths must be up")
        for n in names:
            scsi.rescan(self.paths, n)
        size = max(scsi.size_bytes(self.paths, n) or 0 for n in names)
        m = map_holding(self.paths, names)
        if m is None:
            return size
        refused: List[CommandFailed] = []
        asks = Pacer(_RESIZE_RETRY)

        def grown() -> Optional[int]:
            """The map's size once it holds ``size``; until then multipathd is asked to resize it.
            multipathd answers "fail" while the map it last created or reloaded still waits for its
            udev event ("device not fully created, failing resize": a loaded host, seen in the guest
            right after the rescan) and "timeout" during a reconfigure; both pass, so it is asked again
            (at most every _RESIZE_RETRY seconds, however many /dev events wake this check)."""
            now = scsi.size_bytes(self.paths, m.dm) or 0
            if now >= size:
                return now
            if not asks.due():
                return None  # woken by a /dev event soon after a refusal: not asked again yet
            try:
                self.multipath.resize(m.name)
            except CommandFailed as e:
                if e.exit_code not in (0, 1):
                    raise
                refused.append(e)
                return None
            now = scsi.size_bytes(self.paths, m.dm) or 0
            return now if now >= size else None

        try:
            return wait_for(grown, timeout=self.timeout, watch=[self.paths.dev], uevents=self._uevents,
                            what=f"{m.path} to grow to {size} bytes", recheck=_RESIZE_RETRY)
        except DeviceNotFound:
            if refused:
                raise DeviceBusy(m.path, f"multipathd did not resize map {m.name} to {size} bytes in "
                                         f"{self.timeout:g}s ({len(refused)} attempts, last: {refused[-1]})") from None
            raise


__all__ = ["ADDRESSING_MODES", "ScsiConnector", "Step", "Steps", "lun_for_addressing"]
