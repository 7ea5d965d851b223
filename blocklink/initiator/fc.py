"""Fibre Channel connector: targeted LUN scans over the zoned HBAs, WWN-checked devices, dm-multipath.

How it differs from os-brick's, on purpose:

* **Only this volume's LUN is scanned, only where it can be.** For every HBA the
  ``initiator_target_map`` names (every online HBA without a map) and every remote port with a
  target WWPN of the volume, the connector writes ``"C T L"`` for that port's channel and SCSI
  target id to the HBA's ``scan`` file. There is no wildcard scan, ever: a wildcard would surface
  other volumes' LUNs (and the FC transport cannot find a port it has not logged in with anyway).
* **Event-driven, bounded waits.** A remote port that is not logged in yet, or whose disk is
  still binding, is re-checked on uevents and inotify until ``timeout``; a LUN that every
  reachable target port declines to report fails at once with :class:`VolumeNotFound`.
* **A device is handed out or flushed only if its WWN is the volume's**; that, the teardown order,
  the flush policy and the per-volume lock are the shared SCSI volume layer's
  (:mod:`blocklink.initiator.host.scsi_volume`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from blocklink.connection import AttachedDevice, FcInfo, normalize_wwn
from blocklink.errors import ConnectionFailed, DeviceNotFound, InvalidConnectionInfo, VolumeNotFound
from blocklink.initiator.host import fc, scsi
from blocklink.initiator.host.fc import FcHost, RemotePort
from blocklink.initiator.host.scsi import Hctl
from blocklink.initiator.host.scsi_volume import ScsiConnector, lun_for_addressing
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.properties import protocol_properties
from blocklink.masking import get_logger
from blocklink.trace import span

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


class FibreChannelConnector(ScsiConnector):
    """Attach Fibre Channel (and FCoE) volumes through the kernel's FC transport.

    Options: the shared ones of :class:`ScsiConnector` (``use_multipath`` scans every route and
    returns the dm-multipath device; ``timeout`` also bounds the wait for remote ports).
    """

    protocol = "fibre_channel"
    info_type = FcInfo
    label = "FC"

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
    def _volume_lock(self, vol: FcInfo) -> str:
        wwpn, lun = min(self.targets(vol))
        return f"fc-{wwpn}-lun-{lun}"

    def _describe(self, vol: FcInfo) -> str:
        return _what(self.targets(vol))

    def _connect(self, vol: FcInfo) -> AttachedDevice:
        routes = self.routes(vol)
        targets = self.targets(vol)
        scanned: Set[Hctl] = set()
        new: Set[Hctl] = set()
        last: List[_Probe] = []
        try:
            with span("scan_and_wait", targets=_what(targets)):
                probe = self._wait_for_devices(routes, scanned, new, last, targets)
            with span("hand_out", paths=len(probe.ready)):
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
            return wait_for(check, timeout=self.timeout, watch=[self.paths.dev,
                            self.paths.devpath("disk", "by-path")], uevents=self._uevents, what=_what(targets))
        except DeviceNotFound:
            probe = last[0] if last else _Probe()
            if probe.ready:  # multipath: some paths came, others did not in time
                return probe
            why = "; ".join(list(probe.pending.values()) + probe.problems) or "no route to the target"
            err = VolumeNotFound if probe.refused and not probe.pending else ConnectionFailed
            raise err(_what(targets), f"no usable device within {self.timeout:g}s: {why}") from None

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
        good, bad, wwid = self.split_by_wwn(vol.wwn, found, _name)
        if bad:
            mismatch = self.mismatch(vol.wwn, bad[0][1])
            LOG.warning("ignoring devices of another LU: %s", ", ".join(f"/dev/{n}" for _, n in bad))
            self._release({h for h, _ in bad} & new)
            new.difference_update(h for h, _ in bad)
            if not good:
                raise mismatch
        dev = self._hand_out(_what(targets), wwid, [n for _, n in good], len(found))
        new.clear()  # handed out: no rollback from here on
        return dev

    def _release(self, hctls: Set[Hctl]) -> None:
        """Undo a failed attach: remove the disks our scans surfaced (never ones that were there)."""
        for hctl in sorted(hctls):
            try:
                scsi.delete(self.paths, hctl)
            except OSError as e:
                LOG.warning("could not remove %s after a failed attach: %s", hctl, e)

    # ------------------------------------------------------------------ finding the volume
    def _address_devices(self, vol: FcInfo) -> Dict[str, str]:
        """By the target ports' SCSI addresses on every FC HBA, and by their by-path links (which
        outlive a port that left the fabric)."""
        targets = self.targets(vol)
        found: Dict[str, str] = {}  # sdX -> how it was found
        for hba in fc.fc_hosts(self.paths):
            for wwpn, lun in targets:
                for d in fc.lun_devices(self.paths, hba.host, wwpn, lun):
                    if d.name:
                        found.setdefault(d.name, str(d.hctl))
        for wwpn, lun in targets:
            for name, link in fc.by_path_devices(self.paths, wwpn, lun).items():
                if self._on_transport(name):
                    found.setdefault(name, link)
        return found

    def _on_transport(self, name: str) -> bool:
        hctl = scsi.device_hctl(self.paths, name)
        return hctl is not None and fc.is_fc_host(self.paths, hctl.host)


def _what(targets: List[Tuple[str, int]]) -> str:
    ports = ", ".join(dict.fromkeys(f"0x{w}" for w, _ in targets))
    luns = sorted({lun for _, lun in targets})
    return f"FC target {ports} LUN {', '.join(map(str, luns))}"


def _name(device: Tuple[Hctl, str]) -> str:
    return device[1]


__all__ = ["FibreChannelConnector", "Route"]
