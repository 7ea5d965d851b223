"""Fibre Channel connector: targeted LUN scans over the zoned HBAs, WWN-checked devices, dm-multipath.

How it differs from os-brick's, on purpose:

* **Only this volume's LUN is scanned, only where it can be.** For every HBA the
  ``initiator_target_map`` names (every online HBA without a map) and every remote port with a
  target WWPN of the volume, the connector writes ``"C T L"`` for that port's channel and SCSI
  target id to the HBA's ``scan`` file. There is no wildcard scan, ever: a wildcard would surface
  other volumes' LUNs (and the FC transport cannot find a port it has not logged in with anyway).
* **Event-driven, bounded waits.** A remote port that is not logged in yet, or whose disk is
  still binding, is re-checked on uevents and inotify until ``device_timeout``; a LUN that every
  reachable target port declines to report fails at once with :class:`VolumeNotFound`.
* **A device is handed out or flushed only if its WWN is the volume's** (``info.wwn``, or the one
  read at connect and kept in ``AttachedDevice.wwn``), as in the iSCSI connector.
* **Per-volume locks**, not a host-wide one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from blocklink.connection import AttachedDevice, FcInfo, normalize_wwn
from blocklink.errors import (BlocklinkError, CommandFailed, ConnectionFailed, DetachIncomplete, DeviceBusy, DeviceMismatch,
                              DeviceNotFound, InvalidConnectionInfo, VolumeNotFound)
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.base import Connector, DeviceLike, InfoLike
from blocklink.initiator.host import fc, scsi
from blocklink.initiator.host.fc import FcHost, RemotePort
from blocklink.initiator.host.multipath import DmMap, Multipath, map_for_wwid, map_holding, read_map, wait_for_map
from blocklink.initiator.host.scsi import Hctl
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.host.wwn import device_wwid, same_wwn
from blocklink.initiator.iscsi import lun_for_addressing
from blocklink.initiator.properties import protocol_properties
from blocklink.locks import LockFactory
from blocklink.masking import get_logger

LOG = get_logger(__name__)


@dataclass(frozen=True)
class Route:
    """One way to the volume: an HBA, a target port WWPN and the Linux LUN number."""

    hba: FcHost
    wwpn: str
    lun: int


@dataclass
class _Probe:
    """What one look at the routes found."""

    ready: Dict[Hctl, str] = field(default_factory=dict)  # hctl -> sdX, running, node present
    pending: Dict[Hctl, str] = field(default_factory=dict)  # device there, not usable yet: why
    binding: bool = False  # a pending device is only waiting for its disk driver and /dev node
    declined: List[Hctl] = field(default_factory=list)  # scanned, the target reports no such LUN
    problems: List[str] = field(default_factory=list)  # routes without a usable remote port
    refused: bool = False  # a target port is logged in but offers us no FCP target role


class FibreChannelConnector(Connector):
    """Attach Fibre Channel (and FCoE) volumes through the kernel's FC transport.

    Options: ``use_multipath`` (scan every route and return the dm-multipath device),
    ``min_paths`` (paths needed for a multipath attach), ``enforce_multipath`` (fail instead of
    falling back to a single path when no map appears), ``device_timeout`` (seconds to wait for
    remote ports, disks and maps), ``flush_retry_seconds`` (how long a multipath map reported "in
    use" is retried at disconnect), ``lock_path`` for the per-volume locks.
    """

    protocol = "fibre_channel"
    info_type = FcInfo

    def __init__(self, *, use_multipath: bool = False, min_paths: int = 1, enforce_multipath: bool = False,
                 device_timeout: float = 30.0, flush_retry_seconds: float = 10.0, lock_path: Optional[str] = None,
                 run_dir: str = "/run/blocklink", executor: Optional[Executor] = None,
                 paths: Optional[HostPaths] = None) -> None:
        super().__init__(executor=executor, paths=paths)
        if min_paths < 1:
            raise ValueError("min_paths must be at least 1")
        self.use_multipath = use_multipath
        self.min_paths = min_paths
        self.enforce_multipath = enforce_multipath
        self.device_timeout = device_timeout
        self.flush_retry_seconds = flush_retry_seconds
        self.multipath = Multipath(self.executor, self.paths)
        self.locks = LockFactory(lock_path or os.path.join(run_dir, "locks"))
        self._uevents = self.paths.sysfs == "/sys"  # a fake tree has no kernel behind it

    def get_connector_properties(self, **kwargs: Any) -> Dict[str, Any]:
        return protocol_properties(self.protocol, self.paths)

    # ------------------------------------------------------------------ what to reach
    def targets(self, info: FcInfo) -> List[Tuple[str, int]]:
        """(target WWPN, Linux LUN) pairs of the volume; bad WWNs and empty info raise."""
        for key in ("target_wwn", "target_wwns"):
            value = getattr(info, key)
            for i, w in enumerate((value,) if isinstance(value, str) else value or ()):
                if normalize_wwn(w) is None:
                    where = key if isinstance(value, str) else f"{key}[{i}]"
                    raise InvalidConnectionInfo(where, f"{w[:40]!r} is not a WWN (up to 16 hex digits)")
        pairs = [(w, lun_for_addressing(lun, info.addressing_mode)) for w, lun in info.target_paths()]
        if not pairs:
            raise InvalidConnectionInfo("target_wwn", "no target port WWPN in target_wwn, target_wwns or "
                                                      "initiator_target_map")
        if any(lun < 0 for _, lun in pairs):
            raise InvalidConnectionInfo("target_lun", "must not be negative")
        return pairs

    def routes(self, info: FcInfo) -> List[Route]:
        """The (online HBA, target port, LUN) combinations to scan: the map's pairs when the info has
        an ``initiator_target_map``, else every online HBA with every target port."""
        targets = self.targets(info)
        hbas = fc.fc_hosts(self.paths)
        online = [h for h in hbas if h.online]
        if not online:
            seen = ", ".join(str(h) for h in hbas) or "none"
            raise ConnectionFailed(_what(targets), f"no online FC HBA on this host (HBAs: {seen})")
        itmap = self._itmap(info)
        if itmap is None:
            return [Route(h, w, lun) for h in online for w, lun in targets]
        routes = [Route(h, w, lun) for h in online for w, lun in targets if w in itmap.get(h.wwpn, ())]
        if not routes:
            mine = ", ".join(f"0x{h.wwpn}" for h in online)
            raise ConnectionFailed(_what(targets), f"initiator_target_map pairs none of this host's online HBAs "
                                                   f"({mine}) with a target port of the volume")
        return routes

    @staticmethod
    def _itmap(info: FcInfo) -> Optional[Dict[str, Set[str]]]:
        if not info.initiator_target_map:
            return None
        out: Dict[str, Set[str]] = {}
        for ini, tgts in info.initiator_target_map.items():
            key = normalize_wwn(ini)
            if key is None:
                LOG.warning("ignoring initiator_target_map entry %.40r: not a WWN", ini)
                continue
            out.setdefault(key, set()).update(n for n in (normalize_wwn(t) for t in tgts) if n)
        return out

    # ------------------------------------------------------------------ connect
    def connect_volume(self, info: InfoLike) -> AttachedDevice:
        vol: FcInfo = self._info(info)
        routes = self.routes(vol)
        targets = self.targets(vol)
        with self.locks.lock(_lock_name(targets)):
            scanned: Set[Hctl] = set()
            new: Set[Hctl] = set()
            last: List[_Probe] = []
            try:
                probe = self._wait_for_devices(routes, scanned, new, last, targets)
                return self._finish_connect(vol, probe, new, targets)
            except BaseException:
                self._release(new)
                raise

    def _wait_for_devices(self, routes: List[Route], scanned: Set[Hctl], new: Set[Hctl], last: List[_Probe],
                          targets: List[Tuple[str, int]]) -> _Probe:
        def check() -> Optional[_Probe]:
            probe = self._probe(routes, scanned, new)
            last[:] = [probe]
            if probe.ready and (not self.use_multipath or not probe.pending):
                return probe
            if not probe.ready and not probe.pending and probe.declined:
                raise VolumeNotFound(_what(targets), "the target ports report no such LUN to this host ("
                                     + ", ".join(f"scanned {h}" for h in probe.declined) + ")")
            return None

        try:
            return wait_for(check, timeout=self.device_timeout, watch=[self.paths.dev,
                            self.paths.devpath("disk", "by-path")], uevents=self._uevents, what=_what(targets))
        except DeviceNotFound:
            probe = last[0] if last else _Probe()
            if probe.ready:  # multipath: some paths came, others did not in time
                return probe
            why = "; ".join(list(probe.pending.values()) + probe.problems) or "no route to the target"
            err = VolumeNotFound if probe.refused and not probe.pending else ConnectionFailed
            raise err(_what(targets), f"no usable device within {self.device_timeout:g}s: {why}") from None

    def _probe(self, routes: List[Route], scanned: Set[Hctl], new: Set[Hctl]) -> _Probe:
        """Look at every route once; scan a LUN on a target port at most once per connect."""
        probe = _Probe()
        rports: Dict[int, List[RemotePort]] = {}
        for r in routes:
            if not self.use_multipath and (probe.ready or probe.binding):
                break  # single path: one device is enough, surface no more
            ports = [p for p in rports.setdefault(r.hba.host, fc.remote_ports(self.paths, r.hba.host))
                     if p.wwpn == r.wwpn]
            if not ports:
                probe.problems.append(f"{r.hba.name} (0x{r.hba.wwpn}) sees no remote port 0x{r.wwpn}")
            for p in ports:
                if not p.online:
                    probe.problems.append(f"{r.hba.name}: remote port {p}")
                    continue
                if not p.is_target:
                    probe.refused = True
                    probe.problems.append(f"{r.hba.name}: remote port {p} is not an FCP target for this "
                                          f"initiator (zoning or host mapping on the array?)")
                    continue
                assert p.target_id is not None
                hctl = Hctl(p.host, p.channel, p.target_id, r.lun)
                dev = scsi.scsi_device(self.paths, hctl)
                if dev is None and hctl not in scanned:
                    scanned.add(hctl)
                    t0 = time.monotonic()
                    try:
                        fc.scan_lun(self.paths, p, r.lun)
                    except OSError as e:
                        probe.problems.append(f"scan of {hctl} failed: {e.strerror or e}")
                        continue
                    dev = scsi.scsi_device(self.paths, hctl)
                    LOG.debug("scanned %s via %s in %.3fs: %s", hctl, p.name, time.monotonic() - t0,
                              "found" if dev is not None else "no such LUN")
                    if dev is not None:
                        new.add(hctl)
                if dev is None:
                    probe.declined.append(hctl)
                elif not dev.name or not self.paths.exists(self.paths.devpath(dev.name)):
                    probe.pending[hctl] = f"{hctl} has no block device yet"
                    probe.binding = True
                elif dev.state != "running":
                    probe.pending[hctl] = f"/dev/{dev.name} ({hctl}) is {dev.state}"
                else:
                    probe.ready[hctl] = dev.name
        return probe

    def _finish_connect(self, vol: FcInfo, probe: _Probe, new: Set[Hctl],
                        targets: List[Tuple[str, int]]) -> AttachedDevice:
        found = sorted(probe.ready.items())
        LOG.debug("devices ready: %s", ", ".join(f"{h}={n}" for h, n in found))
        good, bad, wwid = self._split_by_wwn(vol.wwn, found)
        if bad:
            mismatch = DeviceMismatch(f"/dev/{bad[0][1]}", vol.wwn or "", device_wwid(self.paths, bad[0][1]) or "")
            LOG.warning("ignoring devices of another LU: %s", ", ".join(f"/dev/{n}" for _, n in bad))
            self._release({h for h, _ in bad} & new)
            new.difference_update(h for h, _ in bad)
            if not good:
                raise mismatch
        devices = tuple(f"/dev/{n}" for _, n in good)
        if not self.use_multipath:
            LOG.info("attached %s as %s", _what(targets), devices[0])
            new.clear()  # handed out: no rollback from here on
            return AttachedDevice(self.protocol, path=devices[0], wwn=wwid, paths=devices)
        if len(good) < self.min_paths:
            raise ConnectionFailed(_what(targets), f"{len(good)} path(s) up, {self.min_paths} required")
        names = [n for _, n in good]
        dm = wait_for_map(self.multipath, wwid, names, timeout=self.device_timeout, uevents=self._uevents,
                          min_paths=self.min_paths)
        if dm is None and self.enforce_multipath:
            raise DeviceNotFound(f"multipath map mpath-{wwid}", self.device_timeout)
        new.clear()
        if dm is None:
            LOG.warning("no multipath map for %s appeared; returning single path %s", wwid, devices[0])
            return AttachedDevice(self.protocol, path=devices[0], wwn=wwid, paths=devices)
        LOG.info("attached %s as /dev/%s over %d path(s)", _what(targets), dm.dm, len(good))
        return AttachedDevice(self.protocol, path=f"/dev/{dm.dm}", wwn=wwid, multipath_id=wwid, paths=devices)

    def _split_by_wwn(self, expected: Optional[str], found: List[Tuple[Hctl, str]]
                      ) -> Tuple[List[Tuple[Hctl, str]], List[Tuple[Hctl, str]], str]:
        """Devices of the expected LU (or of the most common WWN when none is expected), the others, the WWN."""
        ids = {name: device_wwid(self.paths, name) or "" for _, name in found}
        if expected:
            good = [d for d in found if ids[d[1]] and same_wwn(expected, ids[d[1]])]
            wwid = ids[good[0][1]] if good else expected
        else:
            counts: Dict[str, int] = {}
            for _, name in found:
                counts[ids[name]] = counts.get(ids[name], 0) + 1
            wwid = max(counts, key=lambda w: (counts[w], -list(counts).index(w)))
            if not wwid:
                raise DeviceNotFound(f"a WWN for /dev/{found[0][1]} (no VPD page 0x83 or wwid in sysfs)")
            good = [d for d in found if ids[d[1]] == wwid]
        return good, [d for d in found if d not in good], wwid

    def _release(self, hctls: Set[Hctl]) -> None:
        """Undo a failed attach: remove the disks our scans surfaced (never ones that were there)."""
        for hctl in sorted(hctls):
            try:
                scsi.delete(self.paths, hctl)
            except OSError as e:
                LOG.warning("could not remove %s after a failed attach: %s", hctl, e)

    # ------------------------------------------------------------------ disconnect
    def disconnect_volume(self, info: InfoLike, device: DeviceLike = None, force: bool = False) -> None:
        vol: FcInfo = self._info(info)
        dev = self._device(device)
        targets = self.targets(vol)
        with self.locks.lock(_lock_name(targets)):
            self._disconnect(vol, dev, targets, force)

    def _disconnect(self, vol: FcInfo, dev: Optional[AttachedDevice], targets: List[Tuple[str, int]],
                    force: bool) -> None:
        expected = (dev.wwn if dev is not None and dev.wwn else None) or vol.wwn
        used = self._dev_name(dev.path) if dev is not None and dev.path else None
        if used is not None and not self.paths.exists(self.paths.sys("block", used)):
            used = None  # already gone
        if used:
            found = self._wwn_of(used)
            if expected and found is not None and not same_wwn(expected, found):
                raise DeviceMismatch(f"/dev/{used}", expected, found)
            # the device handed to us must sit where the info points (or be a map over such a disk)
            here = self.volume_devices(vol, None, None, targets)
            m_used = read_map(self.paths, used) if used.startswith("dm-") else None
            mine = set(m_used.slaves) if m_used is not None else {used}
            if here and not mine & set(here):
                raise DeviceMismatch(f"/dev/{used}", self._wwn_of(here[0]) or "", found or "")
            expected = expected or found
        names = self.volume_devices(vol, expected, used, targets)
        failures: List[str] = []

        def step(what: str, fn: Any, *args: Any) -> bool:
            try:
                fn(*args)
                return True
            except (BlocklinkError, OSError) as e:
                if not force:
                    raise
                LOG.warning("forced disconnect: %s failed: %s", what, e)
                failures.append(f"{what}: {e}")
                return False

        m = map_holding(self.paths, names) or (map_for_wwid(self.paths, expected) if expected else None)
        if m is not None:
            if expected and not same_wwn(expected, m.wwid):
                raise DeviceMismatch(m.path, expected, m.wwid)
            if used is None or used == m.dm:
                step(f"flush {m.path}", scsi.flush, self.executor, self.paths, m.dm)
            if not step(f"flush multipath map {m.name}", self._flush_map, m):
                step(f"remove map {m.name} from multipathd", self.multipath.del_map, m.name)
        for name in names:
            if m is None and (used is None or used == name):  # paths under a map were flushed with it
                step(f"flush /dev/{name}", scsi.flush, self.executor, self.paths, name)
        for name in names:
            hctl = scsi.device_hctl(self.paths, name)
            if hctl is not None:
                step(f"delete /dev/{name}", scsi.delete, self.paths, hctl)
        if failures:
            raise DetachIncomplete(f"FC volume {expected or _what(targets)}", failures)
        LOG.info("detached %s (%d device(s))", expected or _what(targets), len(names))

    def _flush_map(self, m: DmMap) -> None:
        """``multipath -f``, retried for a few seconds while the map is "in use": right after I/O,
        udev's probe of the map's change event holds it open briefly. A real holder stays and fails."""
        import tenacity  # lazy: only needed for multipath detach

        def in_use(e: BaseException) -> bool:
            return isinstance(e, CommandFailed) and "in use" in (e.stderr + e.stdout)

        try:
            tenacity.Retrying(retry=tenacity.retry_if_exception(in_use), reraise=True,
                              stop=tenacity.stop_after_delay(self.flush_retry_seconds),
                              wait=tenacity.wait_exponential(multiplier=0.1, max=1.0))(self.multipath.flush, m.name)
        except BlocklinkError as e:
            raise DeviceBusy(m.path, f"multipath -f {m.name} failed: {e}") from None

    def _dev_name(self, path: str) -> str:
        return os.path.basename(self.paths.realpath(self.paths.from_host(path)))

    def _wwn_of(self, name: str) -> Optional[str]:
        m = read_map(self.paths, name) if name.startswith("dm-") else None
        return m.wwid if m is not None else device_wwid(self.paths, name)

    def volume_devices(self, vol: FcInfo, expected: Optional[str] = None, used: Optional[str] = None,
                       targets: Optional[List[Tuple[str, int]]] = None) -> List[str]:
        """The volume's disks (sdX) on any FC HBA of this host, in any state: by the target ports'
        SCSI addresses, by their by-path links, and as paths of the map the caller used. With a
        known WWN, disks of another LU are left out (and alone)."""
        targets = targets if targets is not None else self.targets(vol)
        found: Dict[str, str] = {}  # sdX -> how it was found
        for hba in fc.fc_hosts(self.paths):
            for wwpn, lun in targets:
                for d in fc.lun_devices(self.paths, hba.host, wwpn, lun):
                    if d.name:
                        found.setdefault(d.name, str(d.hctl))
        for wwpn, lun in targets:
            for name, link in fc.by_path_devices(self.paths, wwpn, lun).items():
                if self._on_fc_host(name):
                    found.setdefault(name, link)
        if used and used.startswith("dm-"):
            m = read_map(self.paths, used)
            for slave in m.slaves if m is not None else ():
                if self._on_fc_host(slave):
                    found.setdefault(slave, f"path of {used}")
        names = []
        for name in sorted(found):
            wwid = device_wwid(self.paths, name)
            if expected and (wwid is None or not same_wwn(expected, wwid)):
                LOG.warning("leaving /dev/%s (%s) alone: WWN %s is not this volume's %s", name, found[name],
                            wwid, expected)
                continue
            names.append(name)
        return names

    def _on_fc_host(self, name: str) -> bool:
        hctl = scsi.device_hctl(self.paths, name)
        return hctl is not None and fc.is_fc_host(self.paths, hctl.host)

    # ------------------------------------------------------------------ extend / paths
    def extend_volume(self, info: InfoLike) -> int:
        vol: FcInfo = self._info(info)
        names = self.volume_devices(vol, vol.wwn)
        if not names:
            raise DeviceNotFound(f"FC volume {vol.wwn or _what(self.targets(vol))}")
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
        self.multipath.resize(m.name)

        def check() -> Optional[int]:
            now = scsi.size_bytes(self.paths, m.dm) or 0
            return now if now >= size else None

        return wait_for(check, timeout=self.device_timeout, watch=[self.paths.dev], uevents=self._uevents,
                        what=f"{m.path} to grow to {size} bytes")

    def get_volume_paths(self, info: InfoLike) -> List[str]:
        vol: FcInfo = self._info(info)
        return [f"/dev/{n}" for n in self.volume_devices(vol, vol.wwn)]


def _what(targets: List[Tuple[str, int]]) -> str:
    ports = ", ".join(dict.fromkeys(f"0x{w}" for w, _ in targets))
    luns = sorted({lun for _, lun in targets})
    return f"FC target {ports} LUN {', '.join(map(str, luns))}"


def _lock_name(targets: List[Tuple[str, int]]) -> str:
    wwpn, lun = min(targets)
    return f"fc-{wwpn}-lun-{lun}"


__all__ = ["FibreChannelConnector", "Route"]
