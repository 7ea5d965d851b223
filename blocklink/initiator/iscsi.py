"""iSCSI connector (open-iscsi): single path or dm-multipath, CHAP and mutual CHAP, shared targets.

How it differs from os-brick's, on purpose:

* **Only this volume's LUN appears.** Sessions are created with ``node.session.scan = manual`` and
  the connector writes ``"0 <target id> <lun>"`` to the session's ``/sys/class/scsi_host/hostN/scan``,
  so logging in to a target shared by many volumes never surfaces other volumes' LUNs here.
* **A device is handed out or flushed only if its WWN is the volume's** (OSSA-2023-003): the WWN
  from ``info.wwn`` or, if absent, the one read at connect and kept in ``AttachedDevice.wwn`` is
  checked again at disconnect; a device of another volume raises :class:`DeviceMismatch` and is left
  alone. This, the teardown order, the flush policy and the per-volume lock are the shared SCSI
  volume layer's (:mod:`blocklink.initiator.host.scsi_volume`); this module adds what is iSCSI's.
* **Per-volume and per-target locks, not a host-wide one**: a volume's connect and disconnect run
  under its lock; session setup, scan and logout of one (IQN, portal) are serialised across
  processes; attaches to different volumes run in parallel, and multipath portals log in in
  parallel threads.
* **No sleep-polling**: devices and maps are awaited on inotify/uevents with a deadline.
* **CHAP secrets never reach a command line** (see :mod:`blocklink.initiator.host.iscsiadm`).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from blocklink.connection import AttachedDevice, IscsiInfo, IscsiTarget, Portal
from blocklink.errors import (AuthenticationFailed, BlocklinkError, ConnectionFailed, DeviceMismatch, DeviceNotFound,
                              InvalidConnectionInfo, VolumeNotFound)
from blocklink.initiator.host import scsi
from blocklink.initiator.host.iscsiadm import Iscsiadm, RecordValue, iter_portals
from blocklink.initiator.host.scsi import Hctl, IscsiSession
from blocklink.initiator.host.scsi_volume import ScsiConnector, Step, lun_for_addressing
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.host.wwn import device_wwid, same_wwn
from blocklink.initiator.options import choice, count
from blocklink.initiator.properties import protocol_properties
from blocklink.masking import Secret, get_logger
from blocklink.trace import run_in_context, span

LOG = get_logger(__name__)

NODE_STARTUP = ("automatic", "manual", "onboot")


@dataclass
class _Path:
    """One portal's share of an attach: the session and the SCSI address of our LUN on it."""

    target: IscsiTarget
    session: IscsiSession
    hctl: Hctl
    new_session: bool
    new_device: bool
    name: Optional[str] = None  # sdX once the disk driver bound


class ISCSIConnector(ScsiConnector):
    """Attach iSCSI volumes with open-iscsi.

    Options besides the shared ones of :class:`ScsiConnector` (``use_multipath``, ``min_paths``,
    ``enforce_multipath``, ``timeout``, ``flush_timeout``, ``lock_path``): ``iface`` (open-iscsi
    interface), ``login_retries``/``login_timeout`` (node.session.initial_login_retry_max and
    node.conn[0].timeo.login_timeout for our node records; None keeps iscsid.conf's values),
    ``node_startup`` (node.startup of our records), ``iscsi_db_dirs`` (where node records live).
    """

    protocol = "iscsi"
    info_type = IscsiInfo
    label = "iSCSI"

    def __init__(self, *, iface: str = "default", login_retries: Optional[int] = None,
                 login_timeout: Optional[int] = None, node_startup: str = "automatic",
                 iscsi_db_dirs: Optional[Sequence[str]] = None, **options: Any) -> None:
        super().__init__(**options)
        self.login_retries = None if login_retries is None else count("login_retries", login_retries)
        self.login_timeout = None if login_timeout is None else count("login_timeout", login_timeout, minimum=1)
        self.node_startup = choice("node_startup", node_startup, NODE_STARTUP)
        self.iscsiadm = Iscsiadm(self.executor, self.paths, iface=iface, db_dirs=iscsi_db_dirs)
        self._manual_scan_checked = False

    def get_connector_properties(self, **kwargs: Any) -> Dict[str, Any]:
        return protocol_properties(self.protocol, self.paths)

    # ------------------------------------------------------------------ connect
    def _volume_lock(self, vol: IscsiInfo) -> str:
        iqn, lun = min((t.iqn, t.lun) for t in vol.targets)
        return f"iscsi-volume-{iqn}-lun-{lun}"

    def _describe(self, vol: IscsiInfo) -> str:
        return f"{vol.targets[0].iqn} LUN {vol.targets[0].lun}"

    def _connect(self, vol: IscsiInfo) -> AttachedDevice:
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
            good, bad, wwid = self.split_by_wwn(vol.wwn, [path], _name)
            if bad:
                err = self.mismatch(vol.wwn, _name(bad[0]))
                self._release(bad)
                raise err
            return self._hand_out(f"{target.iqn} LUN {target.lun} at {target.portal.address}", wwid, [_name(path)], 1)
        raise _most_telling(errors)

    def _connect_multipath(self, info: IscsiInfo, targets: List[IscsiTarget],
                           settings: Dict[str, RecordValue]) -> AttachedDevice:
        results: List[_Path] = []
        errors: List[BlocklinkError] = []
        with span("attach_paths", paths=len(targets)), \
                ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="blocklink-iscsi") as pool:
            futures = [pool.submit(run_in_context(self._attach_path), t, settings) for t in targets]
            for t, fut in zip(targets, futures):
                try:
                    results.append(fut.result())
                except BlocklinkError as e:
                    LOG.warning("iSCSI path %s at %s is down: %s", t.iqn, t.portal.address, e)
                    errors.append(e)
        if not results:
            raise _most_telling(errors)
        what = f"{targets[0].iqn} LUN {targets[0].lun}"
        good, bad, wwid = self.split_by_wwn(info.wwn, results, _name)
        err = self.mismatch(wwid, _name(bad[0])) if bad else None
        if bad:
            LOG.warning("ignoring paths of another LU: %s", ", ".join(f"/dev/{p.name}" for p in bad))
            self._release(bad)
        if not good:
            raise err or DeviceNotFound(what)
        try:
            return self._hand_out(what, wwid, sorted(_name(p) for p in good), len(targets))
        except BlocklinkError:
            self._release(good)
            raise

    def _attach_path(self, target: IscsiTarget, settings: Dict[str, RecordValue]) -> _Path:
        with span("path", iqn=target.iqn, portal=target.portal.address, lun=target.lun):
            path = self._open_path(target, settings)
            try:
                with span("wait_disk", hctl=path.hctl):
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
                with span("login", iqn=iqn, portal=portal.address):
                    session = self._login(target, settings)
            if session.host is None:
                raise ConnectionFailed(what, f"session {session.sid} has no SCSI host in sysfs")
            existing = self._lun_device(session, target.lun)
            if existing is None:
                try:
                    with span("scan", host=session.host, lun=target.lun):
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

        return wait_for(check, timeout=self.timeout, watch=[self.paths.dev, self.paths.devpath("disk", "by-path")],
                        uevents=self._uevents, what=f"{path.target.iqn} LUN {path.target.lun} ({path.hctl})")

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
                with span("discover", portal=targets[0].portal.address):
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

    # ------------------------------------------------------------------ finding and detaching the volume
    def _address_devices(self, vol: IscsiInfo) -> Dict[str, str]:
        out: Dict[str, str] = {}
        by_iqn: Dict[str, List[IscsiSession]] = {}
        for t in self._addressed(vol.targets, vol.addressing_mode):
            if t.iqn not in by_iqn:
                by_iqn[t.iqn] = scsi.sessions_of(self.paths, t.iqn)
            for s in by_iqn[t.iqn]:
                if s.matches(t.iqn, t.portal.host, t.portal.port):
                    d = self._lun_device(s, t.lun)
                    if d is not None and d.name:
                        out.setdefault(d.name, f"LUN {t.lun} of session {s.sid} ({t.portal.address})")
        return out

    def _same_lu_elsewhere(self, vol: IscsiInfo, expected: str) -> Dict[str, str]:
        """Disks of the LU on any session: portals discovered at connect are not in the info. One
        identity read per disk on the host; only a disk of the LU is then placed on its session."""
        out: Dict[str, str] = {}
        for name in self.paths.listdir(self.paths.sys("block")):
            if same_wwn(expected, device_wwid(self.paths, name) or ""):
                sid = scsi.device_session(self.paths, name)
                if sid is not None:
                    out.setdefault(name, f"{scsi.device_hctl(self.paths, name)} of session {sid}")
        return out

    def _on_transport(self, name: str) -> bool:
        return scsi.device_session(self.paths, name) is not None

    def _protocol_teardown(self, vol: IscsiInfo, names: Sequence[str]) -> List[Step]:
        """Log out of the sessions the disks used and of the info's targets (which may have no disk
        left), each only if no other LUN is in use on it."""
        sessions: Dict[int, IscsiSession] = {}
        by_iqn: Dict[str, List[IscsiSession]] = {}
        for t in self._addressed(vol.targets, vol.addressing_mode):
            if t.iqn not in by_iqn:
                by_iqn[t.iqn] = scsi.sessions_of(self.paths, t.iqn)
            sessions.update((s.sid, s) for s in by_iqn[t.iqn] if s.matches(t.iqn, t.portal.host, t.portal.port))
        for name in names:
            sid = scsi.device_session(self.paths, name)
            owner = scsi.read_session(self.paths, sid) if sid is not None and sid not in sessions else None
            if owner is not None:
                sessions[owner.sid] = owner
        return [(f"log out of {s.iqn} at {s.portal}", functools.partial(self._logout_if_unused, s))
                for s in sessions.values()]

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


def _name(path: _Path) -> str:
    return path.name or ""


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
