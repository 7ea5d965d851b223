"""iSCSI connector (open-iscsi): single path or dm-multipath, CHAP and mutual CHAP, shared targets.

How it differs from os-brick's, on purpose:

* **Only this volume's LUN appears.** Sessions are created with ``node.session.scan = manual`` and
  the connector writes ``"0 <target id> <lun>"`` to the session's ``/sys/class/scsi_host/hostN/scan``,
  so logging in to a target shared by many volumes never surfaces other volumes' LUNs here.
* **A device is handed out or flushed only if its WWN is the volume's** (OSSA-2023-003): the WWN
  from ``info.wwn`` or, if absent, the one read at connect and kept in ``AttachedDevice.wwn`` is
  checked again at disconnect; a device of another volume raises :class:`DeviceMismatch` and is left
  alone.
* **Per-target locks, not a host-wide one**: session setup, scan and logout of one (IQN, portal)
  are serialised across processes; attaches to different targets run in parallel, and multipath
  portals log in in parallel threads.
* **No sleep-polling**: devices and maps are awaited on inotify/uevents with a deadline.
* **CHAP secrets never reach a command line** (see :mod:`blocklink.initiator.host.iscsiadm`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from blocklink.connection import AttachedDevice, IscsiInfo, IscsiTarget, Portal
from blocklink.errors import (AuthenticationFailed, BlocklinkError, CommandFailed, ConnectionFailed, DetachIncomplete, DeviceBusy,
                              DeviceMismatch, DeviceNotFound, InvalidConnectionInfo, VolumeNotFound)
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.base import Connector, DeviceLike, InfoLike
from blocklink.initiator.host import scsi
from blocklink.initiator.host.iscsiadm import Iscsiadm, RecordValue, iter_portals
from blocklink.initiator.host.multipath import DmMap, Multipath, map_for_wwid, map_holding, read_map, wait_for_map
from blocklink.initiator.host.scsi import Hctl, IscsiSession
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.host.wwn import device_wwid, same_wwn
from blocklink.initiator.properties import protocol_properties
from blocklink.locks import LockFactory
from blocklink.masking import Secret, get_logger

LOG = get_logger(__name__)

ADDRESSING_MODES = ("SAM", "transparent", "SAM2", "SAM3-flat")


@dataclass
class _Path:
    """One portal's share of an attach: the session and the SCSI address of our LUN on it."""

    target: IscsiTarget
    session: IscsiSession
    hctl: Hctl
    new_session: bool
    new_device: bool
    name: Optional[str] = None  # sdX once the disk driver bound


def lun_for_addressing(lun: int, mode: Optional[str]) -> int:
    """The LUN number Linux uses for ``lun`` under the array's addressing mode (SAM-2/3 flat space
    adds 0x4000; SAM and "transparent" use the number as is)."""
    mode = mode or "SAM"
    if mode not in ADDRESSING_MODES:
        raise InvalidConnectionInfo("addressing_mode", f"expected one of {', '.join(ADDRESSING_MODES)}")
    if mode == "SAM3-flat" or (mode == "SAM2" and lun >= 256):
        return lun + 16384
    return lun


class ISCSIConnector(Connector):
    """Attach iSCSI volumes with open-iscsi.

    Options: ``use_multipath`` (log in to every portal and return the dm-multipath device),
    ``min_paths`` (paths needed before a multipath attach succeeds; others may be down),
    ``enforce_multipath`` (fail instead of falling back to a single path when no map appears),
    ``iface`` (open-iscsi interface), ``device_timeout`` (seconds to wait for disks and maps),
    ``login_retries``/``login_timeout`` (node.session.initial_login_retry_max and
    node.conn[0].timeo.login_timeout for our node records; None keeps iscsid.conf's values),
    ``node_startup`` (node.startup of our records), ``flush_timeout`` (how long a multipath map may
    stay busy at disconnect), ``lock_path`` for the per-target locks.
    """

    protocol = "iscsi"
    info_type = IscsiInfo

    def __init__(self, *, use_multipath: bool = False, min_paths: int = 1, enforce_multipath: bool = False,
                 iface: str = "default", device_timeout: float = 30.0, login_retries: Optional[int] = None,
                 login_timeout: Optional[int] = None, node_startup: str = "automatic", flush_timeout: float = 15.0,
                 lock_path: Optional[str] = None, run_dir: str = "/run/blocklink",
                 iscsi_db_dirs: Optional[Sequence[str]] = None, executor: Optional[Executor] = None,
                 paths: Optional[HostPaths] = None) -> None:
        super().__init__(executor=executor, paths=paths)
        if min_paths < 1:
            raise ValueError("min_paths must be at least 1")
        if node_startup not in ("automatic", "manual", "onboot"):
            raise ValueError("node_startup must be automatic, manual or onboot")
        self.use_multipath = use_multipath
        self.min_paths = min_paths
        self.enforce_multipath = enforce_multipath
        self.device_timeout = device_timeout
        self.login_retries = login_retries
        self.login_timeout = login_timeout
        self.node_startup = node_startup
        self.flush_timeout = flush_timeout
        self.iscsiadm = Iscsiadm(self.executor, self.paths, iface=iface, db_dirs=iscsi_db_dirs)
        self.multipath = Multipath(self.executor, self.paths)
        self.locks = LockFactory(lock_path or os.path.join(run_dir, "locks"))
        self._uevents = self.paths.sysfs == "/sys"  # a fake tree has no kernel behind it
        self._manual_scan_checked = False

    def get_connector_properties(self, **kwargs: Any) -> Dict[str, Any]:
        return protocol_properties(self.protocol, self.paths)

    # ------------------------------------------------------------------ connect
    def connect_volume(self, info: InfoLike) -> AttachedDevice:
        vol: IscsiInfo = self._info(info)
        settings = self._node_settings(vol)
        targets = self._targets(vol)
        if self.use_multipath:
            return self._connect_multipath(vol, targets, settings)
        errors: List[BlocklinkError] = []
        for target in targets:  # single path: the first portal that works
            try:
                path = self._attach_path(target, settings)
            except BlocklinkError as e:
                LOG.warning("iSCSI %s at %s: %s", target.iqn, target.portal.address, e)
                errors.append(e)
                continue
            good, bad, wwid = self._split_by_wwn(vol.wwn, [path])
            if bad:
                err = self._mismatch(vol.wwn or "", bad[0])
                self._release(bad)
                raise err
            LOG.info("attached %s LUN %d at %s as /dev/%s", target.iqn, target.lun, target.portal.address, path.name)
            return AttachedDevice(self.protocol, path=f"/dev/{path.name}", wwn=wwid, paths=(f"/dev/{path.name}",))
        raise _most_telling(errors)

    def _connect_multipath(self, info: IscsiInfo, targets: List[IscsiTarget],
                           settings: Dict[str, RecordValue]) -> AttachedDevice:
        results: List[_Path] = []
        errors: List[BlocklinkError] = []
        with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="blocklink-iscsi") as pool:
            futures = [pool.submit(self._attach_path, t, settings) for t in targets]
            for t, fut in zip(targets, futures):
                try:
                    results.append(fut.result())
                except BlocklinkError as e:
                    LOG.warning("iSCSI path %s at %s is down: %s", t.iqn, t.portal.address, e)
                    errors.append(e)
        if not results:
            raise _most_telling(errors)
        good, bad, wwid = self._split_by_wwn(info.wwn, results)
        err = self._mismatch(wwid, bad[0]) if bad else None
        if bad:
            LOG.warning("ignoring paths of another LU: %s", ", ".join(f"/dev/{p.name}" for p in bad))
            self._release(bad)
        if not good:
            raise err or DeviceNotFound(f"{targets[0].iqn} LUN {targets[0].lun}")
        if len(good) < self.min_paths:
            self._release(good)
            what = f"{targets[0].iqn} LUN {targets[0].lun}"
            raise ConnectionFailed(what, f"{len(good)} of {len(targets)} paths up, {self.min_paths} required")
        names = sorted(p.name for p in good if p.name)
        dm = wait_for_map(self.multipath, wwid, names, timeout=self.device_timeout, uevents=self._uevents,
                          min_paths=self.min_paths)
        devices = tuple(f"/dev/{n}" for n in names)
        if dm is None:
            if self.enforce_multipath:
                self._release(good)
                raise DeviceNotFound(f"multipath map mpath-{wwid}", self.device_timeout)
            LOG.warning("no multipath map for %s appeared; returning single path /dev/%s", wwid, names[0])
            return AttachedDevice(self.protocol, path=devices[0], wwn=wwid, paths=devices)
        LOG.info("attached %s as /dev/%s over %d of %d paths", wwid, dm.dm, len(good), len(targets))
        return AttachedDevice(self.protocol, path=f"/dev/{dm.dm}", wwn=wwid, multipath_id=wwid, paths=devices)

    def _attach_path(self, target: IscsiTarget, settings: Dict[str, RecordValue]) -> _Path:
        path = self._open_path(target, settings)
        try:
            path.name = self._wait_for_disk(path)
        except BlocklinkError:
            self._release([path])
            raise
        return path

    def _open_path(self, target: IscsiTarget, settings: Dict[str, RecordValue]) -> _Path:
        """Under the target's lock: make sure a session exists and our LUN is scanned on it."""
        iqn, portal = target.iqn, target.portal
        what = f"{iqn} at {portal.address}"
        with self.locks.lock(_lock_name(iqn, portal)):
            session = scsi.find_session(self.paths, iqn, portal.host, portal.port)
            new_session = session is None
            if session is None:
                session = self._login(target, settings)
            if session.host is None:
                raise ConnectionFailed(what, f"session {session.sid} has no SCSI host in sysfs")
            existing = self._lun_device(session, target.lun)
            if existing is None:
                try:
                    scsi.scan(self.paths, session.host, 0, _tid(session), target.lun)
                except OSError as e:
                    self._forget_session(session, new_session)
                    raise ConnectionFailed(what, f"scan of LUN {target.lun} failed: {e.strerror}") from None
            device = existing or self._lun_device(session, target.lun)
            if device is None:
                self._forget_session(session, new_session)
                raise VolumeNotFound(what, f"the target reports no LUN {target.lun} to this initiator")
            return _Path(target, session, device.hctl, new_session, existing is None)

    def _login(self, target: IscsiTarget, settings: Dict[str, RecordValue]) -> IscsiSession:
        iqn, portal = target.iqn, target.portal
        self.iscsiadm.configure_node(iqn, portal, settings)
        try:
            if not self._manual_scan_checked:  # once: never risk surfacing other volumes' LUNs
                record = self.iscsiadm.node_record(iqn, portal) or {}
                if record.get("node.session.scan") != "manual":
                    raise ConnectionFailed(f"{iqn} at {portal.address}",
                                           "this iscsiadm does not read node.session.scan = manual from the record")
                self._manual_scan_checked = True
            self.iscsiadm.login(iqn, portal, mutual_chap="node.session.auth.password_in" in settings)
        except BlocklinkError as e:
            # iscsiadm rewrites the record after logging in; if that fails (database busy) the
            # session is up all the same
            session = scsi.find_session(self.paths, iqn, portal.host, portal.port)
            if session is not None:
                LOG.warning("login to %s at %s reported %s, but the session is up", iqn, portal.address, e)
                return session
            self._quietly(self.iscsiadm.delete_node, iqn, portal)
            raise
        session = scsi.find_session(self.paths, iqn, portal.host, portal.port)
        if session is None:
            raise ConnectionFailed(f"{iqn} at {portal.address}", "login succeeded but no session is in sysfs")
        return session

    def _lun_device(self, session: IscsiSession, lun: int) -> Optional[scsi.ScsiDevice]:
        for dev in scsi.session_devices(self.paths, session.sid):
            if dev.hctl.lun == lun:
                return dev
        return None

    def _wait_for_disk(self, path: _Path) -> str:
        """The disk's name once its node exists in /dev and its identity (VPD 0x83) is readable."""
        def check() -> Optional[str]:
            dev = scsi.scsi_device(self.paths, path.hctl)
            if dev is None:
                raise DeviceNotFound(f"SCSI device {path.hctl} (removed while waiting)")
            if not dev.name or not self.paths.exists(self.paths.devpath(dev.name)):
                return None
            ready = device_wwid(self.paths, dev.name) and _openable(self.paths.devpath(dev.name))
            return dev.name if ready else None

        return wait_for(check, timeout=self.device_timeout, watch=[self.paths.dev, self.paths.devpath("disk", "by-path")],
                        uevents=self._uevents, what=f"{path.target.iqn} LUN {path.target.lun} ({path.hctl})")

    def _mismatch(self, expected: str, path: _Path) -> DeviceMismatch:
        return DeviceMismatch(f"/dev/{path.name}", expected, device_wwid(self.paths, path.name or "") or "")

    def _split_by_wwn(self, expected: Optional[str], paths: List[_Path]) -> Tuple[List[_Path], List[_Path], str]:
        """Paths of the expected LU (or of the most common WWN if none is expected), the others, the WWN."""
        ids = {id(p): device_wwid(self.paths, p.name or "") or "" for p in paths}
        if expected:
            good = [p for p in paths if ids[id(p)] and same_wwn(expected, ids[id(p)])]
            wwid = ids[id(good[0])] if good else expected
        else:
            counts: Dict[str, int] = {}
            for p in paths:
                counts[ids[id(p)]] = counts.get(ids[id(p)], 0) + 1
            wwid = max(counts, key=lambda w: (counts[w], -list(counts).index(w)))
            good = [p for p in paths if ids[id(p)] == wwid]
            if not wwid:
                raise DeviceNotFound(f"a WWN for /dev/{paths[0].name} (no VPD page 0x83 or wwid in sysfs)")
        return good, [p for p in paths if p not in good], wwid

    # ------------------------------------------------------------------ settings and targets
    def _node_settings(self, info: IscsiInfo) -> Dict[str, RecordValue]:
        s: Dict[str, RecordValue] = {"node.session.scan": "manual", "node.startup": self.node_startup,
                                     "node.conn[0].startup": self.node_startup}
        if self.login_retries is not None:
            s["node.session.initial_login_retry_max"] = str(self.login_retries)
        if self.login_timeout is not None:
            s["node.conn[0].timeo.login_timeout"] = str(self.login_timeout)
        if info.auth_method and info.auth_method.upper() not in ("CHAP", "NONE"):
            raise InvalidConnectionInfo("auth_method", f"unsupported method {info.auth_method[:20]!r} (CHAP or None)")
        if not info.chap:
            s["node.session.auth.authmethod"] = "None"
            return s
        s.update(node_auth(info.auth_username, info.auth_password, "auth_username", "auth_password"))
        s["node.session.auth.authmethod"] = "CHAP"
        if info.auth_username_in or info.auth_password_in:
            for k, v in node_auth(info.auth_username_in, info.auth_password_in, "auth_username_in",
                                  "auth_password_in").items():
                s[k + "_in"] = v
        return s

    def _targets(self, info: IscsiInfo) -> List[IscsiTarget]:
        targets = list(info.targets)
        discover = bool(info.target_discovered) or (self.use_multipath and info.form == "single")
        if discover:
            try:
                found = self._discover(info, targets[0].portal)
            except AuthenticationFailed:
                raise
            except ConnectionFailed as e:  # the login may still work; it gives the better error if not
                LOG.warning("sendtargets discovery at %s failed, using the given portal: %s", targets[0].portal, e)
                found = []
            if found and self.use_multipath and info.form == "single":
                iqn, lun = targets[0].iqn, targets[0].lun
                with_ours = {p.address for p, q in found if q == iqn}
                # our IQN where it is offered; elsewhere (arrays with one IQN per portal) what is there
                pairs = [(p, q) for p, q in found if q == iqn or p.address not in with_ours]
                if pairs:
                    targets = [IscsiTarget(p, q, lun) for p, q in pairs]
        return self._addressed(targets, info.addressing_mode)

    @staticmethod
    def _addressed(targets: Sequence[IscsiTarget], mode: Optional[str]) -> List[IscsiTarget]:
        """De-duplicated targets with Linux LUN numbers and host names resolved to addresses, as the
        kernel shows a session's portal (so sessions, locks and records match)."""
        out, seen = [], set()
        for t in targets:
            portal = _resolved(t.portal)
            key = (t.iqn, portal.address)
            if key not in seen:
                seen.add(key)
                out.append(IscsiTarget(portal, t.iqn, lun_for_addressing(t.lun, mode)))
        return out

    def _discover(self, info: IscsiInfo, portal: Portal) -> List[Tuple[Portal, str]]:
        auth: Optional[Dict[str, RecordValue]] = None
        if info.discovery_chap:
            auth = {"discovery.sendtargets.auth.authmethod": "CHAP"}
            for k, v in node_auth(info.discovery_auth_username, info.discovery_auth_password,
                                  "discovery_auth_username", "discovery_auth_password").items():
                auth[k.replace("node.session.", "discovery.sendtargets.")] = v
        with self.locks.lock(f"iscsi-discovery-{portal.address}"):
            entries = self.iscsiadm.discover(portal, auth)
        return list(iter_portals(entries))

    # ------------------------------------------------------------------ disconnect
    def disconnect_volume(self, info: InfoLike, device: DeviceLike = None, force: bool = False) -> None:
        vol: IscsiInfo = self._info(info)
        dev = self._device(device)
        used = self._dev_name(dev.path) if dev is not None and dev.path else None
        expected = self._expected_wwn(vol, dev.wwn if dev is not None else None, used)
        names, sessions = self._volume_devices(vol, expected, used)
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
        for session in sessions.values():
            step(f"log out of {session.iqn} at {session.portal}", self._logout_if_unused, session)
        if failures:
            raise DetachIncomplete(f"iSCSI volume {expected or vol.targets[0].iqn}", failures)
        LOG.info("detached %s (%d device(s))", expected or vol.targets[0].iqn, len(names))

    def _dev_name(self, path: str) -> str:
        """Kernel name (sda, dm-3) of a device path, following /dev/disk/* and /dev/mapper/* links."""
        return os.path.basename(self.paths.realpath(self.paths.from_host(path)))

    def _expected_wwn(self, vol: IscsiInfo, recorded: Optional[str], used: Optional[str]) -> Optional[str]:
        """The WWN of the volume being detached, after checking that the caller's device, the WWN
        recorded at connect, ``info.wwn`` and the LU now at the info's address all agree. A device
        that belongs to another volume raises :class:`DeviceMismatch` before anything is touched."""
        path = f"/dev/{used}" if used else "device"
        present = bool(used) and self.paths.exists(self.paths.sys("block", used or ""))
        found = self._wwn_of(used) if present and used else None
        if recorded and found and not same_wwn(recorded, found):
            raise DeviceMismatch(path, recorded, found)  # the name now holds another LU
        mine = recorded or found
        if vol.wwn and mine and not same_wwn(vol.wwn, mine):
            if present:
                raise DeviceMismatch(path, vol.wwn, mine)
            mine = None  # our device is gone; the recorded WWN is not this info's volume
        if present and mine and not vol.wwn:
            at_address = [w for w in (device_wwid(self.paths, n) for n in self._address_devices(vol)) if w]
            if at_address and not any(same_wwn(w, mine) for w in at_address):
                raise DeviceMismatch(path, at_address[0], mine)  # the info names another LU than the device
        return vol.wwn or mine

    def _address_devices(self, vol: IscsiInfo) -> List[str]:
        """Disk names at the info's (target, portal, LUN) addresses, whatever LU they hold."""
        out = []
        for s in scsi.iscsi_sessions(self.paths):
            for t in self._addressed(vol.targets, vol.addressing_mode):
                if s.matches(t.iqn, t.portal.host, t.portal.port):
                    d = self._lun_device(s, t.lun)
                    if d is not None and d.name:
                        out.append(d.name)
        return out

    def _wwn_of(self, name: str) -> Optional[str]:
        m = read_map(self.paths, name) if name.startswith("dm-") else None
        return m.wwid if m is not None else device_wwid(self.paths, name)

    def _flush_map(self, m: DmMap) -> None:
        """``multipath -f``, retried while the map is only briefly open (udev's blkid after the last
        close, say); a map still in use after ``flush_timeout`` raises :class:`DeviceBusy`."""
        def attempt() -> Optional[bool]:
            try:
                self.multipath.flush(m.name)
                return True
            except CommandFailed as e:
                if "in use" in f"{e.stdout} {e.stderr}":
                    return None
                raise DeviceBusy(m.path, f"multipath -f {m.name} failed: {e}") from None

        try:
            wait_for(attempt, timeout=self.flush_timeout, uevents=self._uevents, what=f"{m.path} to close")
        except DeviceNotFound:
            raise DeviceBusy(m.path, f"multipath map {m.name} still in use after {self.flush_timeout:.0f}s") from None

    def _logout_if_unused(self, session: IscsiSession) -> None:
        portal = Portal.of(session.address, session.port)
        with self.locks.lock(_lock_name(session.iqn, portal)):
            current = scsi.read_session(self.paths, session.sid)
            if current is None or not current.matches(session.iqn, session.address, session.port):
                return  # already logged out (and the id perhaps reused)
            if scsi.session_devices(self.paths, session.sid):
                LOG.debug("keeping session %d: other LUNs of %s are in use", session.sid, session.iqn)
                return
            self.iscsiadm.logout(session.sid)
            self.iscsiadm.delete_node(session.iqn, portal)

    def _volume_devices(self, info: IscsiInfo, expected: Optional[str],
                        used: Optional[str] = None) -> Tuple[List[str], Dict[int, IscsiSession]]:
        """This volume's disks on this host (WWN-checked when a WWN is known) and their sessions,
        plus the sessions of the info's targets (which may have no disk left)."""
        sessions: Dict[int, IscsiSession] = {}
        by_addr: Dict[str, IscsiSession] = {}
        targets = self._addressed(info.targets, info.addressing_mode)
        all_sessions = scsi.iscsi_sessions(self.paths)
        for t in targets:
            for s in all_sessions:
                if s.matches(t.iqn, t.portal.host, t.portal.port):
                    sessions[s.sid] = s
                    dev = self._lun_device(s, t.lun)
                    if dev is not None and dev.name:
                        by_addr[dev.name] = s
        if expected:  # other portals (discovered at connect) holding the same LU
            for s in all_sessions:
                for dev in scsi.session_devices(self.paths, s.sid):
                    if dev.name and dev.name not in by_addr and same_wwn(expected, device_wwid(self.paths, dev.name) or ""):
                        by_addr[dev.name] = s
                        sessions[s.sid] = s
        if used and used.startswith("dm-"):
            m = read_map(self.paths, used)
            for slave in m.slaves if m is not None else ():
                owner = self._session_of(slave, all_sessions)
                if owner is not None and slave not in by_addr:
                    by_addr[slave] = owner
                    sessions[owner.sid] = owner
        names = []
        for name in sorted(by_addr):
            found = device_wwid(self.paths, name)
            if expected and (found is None or not same_wwn(expected, found)):
                LOG.warning("leaving /dev/%s alone: WWN %s is not this volume's %s", name, found, expected)
                continue
            names.append(name)
        return names, sessions

    def _session_of(self, name: str, all_sessions: List[IscsiSession]) -> Optional[IscsiSession]:
        hctl = scsi.device_hctl(self.paths, name)
        for s in all_sessions:
            if hctl is not None and any(d.hctl == hctl for d in scsi.session_devices(self.paths, s.sid)):
                return s
        return None

    # ------------------------------------------------------------------ rollback
    def _release(self, paths: List[_Path]) -> None:
        """Undo a failed or rejected attach: remove disks we surfaced, log out sessions we opened."""
        for p in paths:
            if p.new_device:
                self._quietly(scsi.delete, self.paths, p.hctl)
        for p in paths:
            if p.new_session:
                self._quietly(self._logout_if_unused, p.session)

    def _forget_session(self, session: IscsiSession, new: bool) -> None:
        if new and not scsi.session_devices(self.paths, session.sid):
            self._quietly(self.iscsiadm.logout, session.sid)
            self._quietly(self.iscsiadm.delete_node, session.iqn, Portal.of(session.address, session.port))

    @staticmethod
    def _quietly(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except (BlocklinkError, OSError) as e:
            LOG.warning("cleanup step %s failed: %s", getattr(fn, "__name__", fn), e)

    # ------------------------------------------------------------------ extend / paths
    def extend_volume(self, info: InfoLike) -> int:
        vol: IscsiInfo = self._info(info)
        names, _ = self._volume_devices(vol, vol.wwn)
        if not names:
            raise DeviceNotFound(f"iSCSI volume {vol.wwn or vol.targets[0].iqn}")
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
        vol: IscsiInfo = self._info(info)
        names, _ = self._volume_devices(vol, vol.wwn)
        return [f"/dev/{n}" for n in names]


def node_auth(user: Optional[str], secret: Optional[Secret], user_field: str, secret_field: str
              ) -> Dict[str, RecordValue]:
    """``node.session.auth.{username,password}`` for CHAP; the field names say what errors point at."""
    if not user:
        raise InvalidConnectionInfo(user_field, "CHAP needs a user name")
    if not secret:
        raise InvalidConnectionInfo(secret_field, "CHAP needs a password")
    for where, value in ((user_field, user), (secret_field, secret.reveal())):
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InvalidConnectionInfo(where, "contains a control character or line break")
    return {"node.session.auth.username": user, "node.session.auth.password": secret}


def _resolved(portal: Portal) -> Portal:
    """``portal`` with a host name replaced by its first address (unchanged if it is an address or
    does not resolve: the login then reports the problem)."""
    try:
        ipaddress.ip_address(portal.host.split("%")[0])
        return portal
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(portal.host, portal.port, type=socket.SOCK_STREAM)
    except OSError:
        return portal
    return Portal.of(str(infos[0][4][0]), portal.port) if infos else portal


def _lock_name(iqn: str, portal: Portal) -> str:
    return f"iscsi-{iqn}-{portal.address}"


def _tid(session: IscsiSession) -> object:
    return session.target_id if session.target_id is not None and session.target_id >= 0 else "-"


def _most_telling(errors: List[BlocklinkError]) -> BlocklinkError:
    """The error to report when every portal failed: a refused CHAP beats a missing LUN beats the rest."""
    for kind in (AuthenticationFailed, VolumeNotFound, DeviceMismatch):
        for e in errors:
            if isinstance(e, kind):
                return e
    return errors[0] if errors else ConnectionFailed("iSCSI", "no target to connect to")


def _openable(path: str) -> bool:
    """Whether the block device can be opened yet. The kernel creates the /dev node and the sysfs
    entries (device_add) before it registers the block device (bdev_add): in between, open() fails
    with ENXIO. The "add" uevent follows the registration, so the event-driven wait re-checks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENODEV, errno.ENOENT):
            return False
        return True  # e.g. EACCES when not root: readiness cannot be told this way
    os.close(fd)
    return True


__all__ = ["ISCSIConnector", "lun_for_addressing", "node_auth"]
