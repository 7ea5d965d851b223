"""Userspace attach: iSCSI and RBD volumes as local files on hosts without iscsi_tcp or rbd modules.

One qemu-storage-daemon per volume logs in with libiscsi (or opens the image with librbd) and
exports the block node as a FUSE file, an NBD unix socket or a vhost-user-blk socket::

    conn = connector_for("iscsi", attach="userspace")          # or UserspaceISCSIConnector(...)
    dev = conn.connect_volume(info)                            # AttachedDevice(type="file", path=.../disk)
    with open(dev.path, "r+b") as f: ...
    conn.disconnect_volume(info, dev)

Each volume gets a private 0700 directory ``<run_dir>/<protocol>-<hash>`` holding the daemon's
pid file, QMP socket, the export and ``state.json``. The CHAP password or cephx key goes to the
daemon as a ``secret`` object read from a 0600 file in that directory, which is removed as soon
as the daemon's monitor confirms the export is up (never on the command line). The daemon is
checked and stopped over QMP and by PID; a daemon found dead is reported as :class:`DaemonDied`
after its leftovers (stale FUSE mount, run directory) are removed, so a retry attaches afresh.

Limits (qemu 7.2): the iSCSI driver sends only the initiator's CHAP credentials, so mutual CHAP
is refused unless ``allow_one_way_chap=True``; no SendTargets discovery is done (the info names
the target). Root is expected (FUSE mounts, /proc scans of other processes' open files).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple

from blocklink.ceph_client import key_from_keyring, mon_host_entry
from blocklink.connection import AttachedDevice, DeviceKind, IscsiInfo, IscsiTarget, RbdInfo
from blocklink.errors import (AuthenticationFailed, CommandFailed, CommandTimeout, ConnectionFailed, DetachIncomplete,
                              DeviceBusy, DeviceMismatch, DeviceNotFound, InvalidConnectionInfo, InvalidConnector,
                              InvalidOption, VolumeNotFound)
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.base import Connector, DeviceLike, InfoLike
from blocklink.initiator.options import choice, flag, fold_renamed, seconds
from blocklink.initiator.qsd import (EXPORT, NODE, SECRET_ID, UNIX_PATH_MAX, DaemonDied, DaemonLayout, DaemonSpec,
                                     DaemonStatus, daemon_env, daemon_message,
                                     QmpClient, QmpError, build_argv, export_args, mount_fstype, open_by, pid_alive, pid_cmdline,
                                     stop_pid, wait_pid_exit)
from blocklink.initiator.nbdfuse import NbdFuseBridge, nbd_uri
from blocklink.locks import LockFactory
from blocklink.masking import Secret, get_logger, mask_text
from blocklink.privatefile import create_private

LOG = get_logger(__name__)

EXPORTS = ("fuse", "nbd", "vhost-user-blk")
# what the attached device's path is, per export: a file to open, or a socket for an NBD / vhost-user client
EXPORT_KINDS = {"fuse": DeviceKind.FILE, "nbd": DeviceKind.SOCKET, "vhost-user-blk": DeviceKind.SOCKET}
FILE_BRIDGES = ("nbdfuse", "qsd")
_RUN_DIR_RE = re.compile(r"^/[A-Za-z0-9._/\-]+$")  # ends up in a QemuOpts string: no commas or '='

class _Attempt(Exception):
    """A start attempt failed; ``retry`` says whether another portal may do better."""

    def __init__(self, error: Exception, retry: bool) -> None:
        self.error = error
        self.retry = retry


class UserspaceConnector(Connector):
    """Shared mechanics: run directory, daemon start/verify/stop, health, idempotence, locks.

    Options: ``export`` (``"fuse"``, ``"nbd"``, ``"vhost-user-blk"``), ``run_dir`` for the per-volume
    directories, ``lock_path`` (default ``<run_dir>/locks``), ``timeout`` (seconds for the daemon
    to come up, QMP answers and stopping), ``binary``, ``netns`` (a named network namespace to reach
    the storage from: the daemon runs there through ``nsenter --net`` so its FUSE mount stays
    visible to the host), ``cache_direct`` (bypass the daemon's page cache; RBD: no librbd cache).
    ``file_bridge`` says what serves the ``"fuse"`` file: ``"nbdfuse"`` (default: nbdfuse in front
    of the daemon's NBD socket, safe for every I/O pattern) or ``"qsd"`` (the daemon's own FUSE
    export: one process fewer, but qemu up to 10.0 corrupts O_DIRECT writes over 1 MiB, async
    direct writes and mmap writeback; see :mod:`blocklink.initiator.nbdfuse`).
    """

    info_type: ClassVar[type]

    def __init__(self, *, export: str = "fuse", run_dir: str = "/run/blocklink/qsd", lock_path: Optional[str] = None,
                 timeout: float = 30.0, binary: str = "qemu-storage-daemon", netns: Optional[str] = None,
                 cache_direct: bool = True, file_bridge: str = "nbdfuse", nbdfuse: str = "nbdfuse",
                 executor: Optional[Executor] = None, paths: Optional[HostPaths] = None, **legacy: Any) -> None:
        super().__init__(executor=executor, paths=paths)
        timeout = fold_renamed(type(self).__name__, legacy, {"timeout": timeout})["timeout"]
        choice("export", export, EXPORTS)
        if not isinstance(run_dir, str):
            raise InvalidOption("run_dir", f"expected a path, got {type(run_dir).__name__}")
        run_dir = os.path.abspath(run_dir)
        if not _RUN_DIR_RE.match(run_dir):
            raise InvalidOption("run_dir", "may contain only letters, digits and . _ - /")
        if len(run_dir) + len("/rbd-0123456789abcdef/vhost.sock") > UNIX_PATH_MAX:
            raise InvalidOption("run_dir", "too long for the daemon's unix sockets")
        choice("file_bridge", file_bridge, FILE_BRIDGES)
        if netns is not None and not (isinstance(netns, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", netns)):
            raise InvalidOption("netns", f"{str(netns)[:40]!r} is not a network namespace name")
        flag("cache_direct", cache_direct)
        timeout = seconds("timeout", timeout)
        self.export = export
        self.run_dir = run_dir
        self.timeout = timeout
        self.binary = binary
        self.netns = netns
        self.cache_direct = cache_direct
        self.file_bridge = file_bridge
        self.nbdfuse = nbdfuse
        self.locks = LockFactory(lock_path or os.path.join(run_dir, "locks"))

    # ------------------------------------------------------------------ protocol hooks
    def _volume(self, info: Any) -> Tuple[str, str]:
        """(stable key text, human name) of the volume."""
        raise NotImplementedError

    def _attempts(self, info: Any, layout: DaemonLayout) -> Iterator[Tuple[str, DaemonSpec]]:
        """(where, daemon spec) to try in order until one starts."""
        raise NotImplementedError

    def _classify(self, where: str, stderr: str) -> _Attempt:
        raise NotImplementedError

    def _remote_size(self, info: Any) -> Optional[int]:
        """The volume's size as the storage sees it now, when the protocol can ask cheaply."""
        return None

    @property
    def daemon_export(self) -> str:
        """The daemon's own export type (a bridged file is served from its NBD socket)."""
        return "nbd" if self.export == "fuse" and self.file_bridge == "nbdfuse" else self.export

    def _bridge(self, layout: DaemonLayout) -> NbdFuseBridge:
        return NbdFuseBridge(layout, self.executor, self.paths, binary=self.nbdfuse, timeout=self.timeout)

    # ------------------------------------------------------------------ layout
    def layout(self, info: InfoLike) -> DaemonLayout:
        key, _ = self._volume(self._info(info))
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return DaemonLayout(os.path.join(self.run_dir, f"{self.protocol}-{digest}"))

    def _prefix(self) -> List[str]:
        return ["nsenter", f"--net={self.paths.runpath('netns', self.netns)}", "--"] if self.netns else []

    # ------------------------------------------------------------------ connector API
    def connect_volume(self, info: InfoLike) -> AttachedDevice:
        vinfo = self._info(info)
        key, name = self._volume(vinfo)
        layout = self.layout(vinfo)
        with self.locks.lock(f"qsd-{os.path.basename(layout.dir)}"):
            existing = self._existing(vinfo, name, layout)
            if existing is not None:
                return existing
            first: Optional[Exception] = None
            for where, spec in self._attempts(vinfo, layout):
                try:
                    return self._start(vinfo, name, where, spec, layout)
                except _Attempt as a:
                    LOG.info("userspace attach of %s via %s failed: %s", name, where, a.error)
                    if first is None or (type(first) is ConnectionFailed and type(a.error) is not ConnectionFailed):
                        first = a.error  # report the most specific refusal, not the last timeout
                    if not a.retry:
                        break
            raise first or ConnectionFailed(name, "nothing to try")

    def disconnect_volume(self, info: InfoLike, device: DeviceLike = None, force: bool = False) -> None:
        vinfo = self._info(info)
        _, name = self._volume(vinfo)
        layout = self.layout(vinfo)
        dev = self._device(device)
        with self.locks.lock(f"qsd-{os.path.basename(layout.dir)}"):
            if not os.path.isdir(layout.dir):
                return  # never attached, or already detached: harmless
            if dev is not None and dev.path and dev.path not in (layout.disk, layout.nbd, layout.vhost):
                # another volume's attachment (or nothing of ours): never tear it down for this one
                raise DeviceMismatch(dev.path, expected=layout.dir, found=os.path.dirname(dev.path),
                                     what="attachment directory")
            state = self._state(layout)
            pid = self._pid(layout)
            if state.get("export") == "fuse" and not force:
                users = open_by(layout.disk, self.paths, exclude=[pid] if pid else [])
                if users:
                    raise DeviceBusy(layout.disk, f"open by pid {', '.join(map(str, users))}")
            failures = self._teardown(layout, name, hard=force)
            if failures:
                raise DetachIncomplete(name, failures)
            LOG.info("detached %s (userspace, %s)", name, state.get("export", "?"))

    def check_health(self, info: InfoLike) -> DaemonStatus:
        """The daemon's status; :class:`DaemonDied` if it is gone or its export is."""
        vinfo = self._info(info)
        _, name = self._volume(vinfo)
        return self._health(name, self.layout(vinfo))

    def get_volume_paths(self, info: InfoLike) -> List[str]:
        vinfo = self._info(info)
        _, name = self._volume(vinfo)
        layout = self.layout(vinfo)
        if not os.path.isdir(layout.dir):
            return []
        try:
            return [self._health(name, layout).path]
        except (DaemonDied, DeviceNotFound):
            return []

    def extend_volume(self, info: InfoLike) -> int:
        """Make the export show the volume's new size; returns it.

        qemu re-reads the size on a non-shrinking ``block_resize``. An NBD export forbids resizing
        under its clients (NBD has no size-change message), so for an NBD socket or the nbdfuse
        file the export is briefly re-created: refused with :class:`DeviceBusy` while in use.
        """
        vinfo = self._info(info)
        _, name = self._volume(vinfo)
        layout = self.layout(vinfo)
        with self.locks.lock(f"qsd-{os.path.basename(layout.dir)}"):
            status = self._health(name, layout)
            remote = self._remote_size(vinfo)
            bridged = status.bridge_pid is not None
            via_nbd = bridged or status.export == "nbd"
            if bridged and open_by(layout.disk, self.paths):
                raise DeviceBusy(layout.disk, "is open; close it (or detach and attach) to see the new size")
            with QmpClient(layout.qmp, self.timeout) as qmp:
                try:
                    if via_nbd:
                        failures = self._bridge(layout).stop(hard=False) if bridged else []
                        if failures:
                            raise DetachIncomplete(name, failures)
                        self._del_export(qmp, layout, status.export)
                    qmp.block_resize(NODE, remote if remote is not None else status.size)
                    if via_nbd:
                        qmp.block_export_add(export_args("nbd", layout, status.read_only))
                except QmpError as e:
                    raise ConnectionFailed(name, f"resize failed: {e.desc}") from None
                finally:
                    if bridged and mount_fstype(layout.disk, self.paths) is None:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(layout.bridge_ready)  # the new nbdfuse signals readiness afresh
                        self._bridge(layout).start(name, status.read_only)
                size = next(n.virtual_size for n in qmp.query_named_block_nodes() if n.node_name == NODE)
        LOG.info("userspace attachment of %s now %d bytes (was %d)", name, size, status.size)
        return size

    def _del_export(self, qmp: QmpClient, layout: DaemonLayout, export: str) -> None:
        try:
            qmp.block_export_del(EXPORT, "safe")
        except QmpError as e:
            if "in use" in e.desc:
                raise DeviceBusy(layout.export_path(export), f"NBD clients are connected ({e.desc})") from None
            raise
        qmp.wait_event("BLOCK_EXPORT_DELETED", {"id": EXPORT}, self.timeout)

    # ------------------------------------------------------------------ start
    def _start(self, info: Any, name: str, where: str, spec: DaemonSpec, layout: DaemonLayout) -> AttachedDevice:
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        os.mkdir(layout.dir, 0o700)
        t0 = time.monotonic()
        try:
            bridged = self.export == "fuse" and spec.export == "nbd"
            if self.export == "fuse":
                create_private(layout.disk, "")  # FUSE mounts over an existing regular file
            for fname, text in spec.extra_files.items():
                create_private(os.path.join(layout.dir, fname), text)
            if spec.secret is not None:
                create_private(layout.secret, spec.secret.reveal())
            argv = self._prefix() + build_argv(spec, layout, self.binary)
            try:
                self.executor.run(argv, timeout=self.timeout, env=daemon_env())
            except CommandTimeout:
                raise _Attempt(ConnectionFailed(where, f"qemu-storage-daemon did not come up in {self.timeout:.0f}s"),
                               retry=True) from None
            except CommandFailed as e:
                raise self._classify(where, mask_text(e.stderr or str(e))) from None
            status = self._verify(name, layout, spec)
            if spec.secret is not None:
                os.unlink(layout.secret)  # the daemon holds the secret object now
            if bridged:
                self._bridge(layout).start(name, spec.read_only)
                status = self._health(name, layout, self.export, "nbdfuse")
            state = {"protocol": self.protocol, "volume": name, "where": where, "export": self.export,
                     "bridge": "nbdfuse" if bridged else None, "path": status.path,
                     "read_only": spec.read_only, "pid": status.pid}
            create_private(layout.state, json.dumps(state))
        except BaseException:
            self._teardown(layout, name, hard=True)
            raise
        LOG.info("attached %s via %s as %s %s (pid %d) in %.0f ms", name, where, self.export, status.path,
                 status.pid, (time.monotonic() - t0) * 1000)
        return self._device_for(status, layout, name)

    def _verify(self, name: str, layout: DaemonLayout, spec: DaemonSpec) -> DaemonStatus:
        status = self._health(name, layout, spec.export, None)
        if status.read_only != spec.read_only:
            raise ConnectionFailed(name, f"daemon opened the volume {'read-only' if status.read_only else 'read-write'}")
        return status

    def _device_for(self, status: DaemonStatus, layout: DaemonLayout, name: str) -> AttachedDevice:
        bridge = None
        if status.export == "fuse":
            bridge = self._state(layout).get("bridge") or ("nbdfuse" if status.bridge_pid else "qsd")
        nbd = status.export == "nbd"
        return AttachedDevice(protocol=self.protocol, path=status.path, type=EXPORT_KINDS[status.export],
                              volume=name, size=status.size, read_only=status.read_only, pid=status.pid,
                              export=status.export, bridge=bridge, run_dir=layout.dir,
                              uri=nbd_uri(layout) if nbd else None, nbd_export=NODE if nbd else None)

    # ------------------------------------------------------------------ health and state
    def _pid(self, layout: DaemonLayout) -> Optional[int]:
        text = self.paths.read(layout.pidfile)
        if text and text.isdigit():
            return int(text)
        # no pid file yet (killed mid-start): find the daemon by its unique QMP path, never by name
        for entry in self.paths.listdir(self.paths.procpath()):
            if entry.isdigit() and layout.qmp in pid_cmdline(int(entry), self.paths) and \
                    pid_alive(int(entry), self.paths):
                return int(entry)
        return None

    def _state(self, layout: DaemonLayout) -> Dict[str, Any]:
        try:
            with open(layout.state) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _health(self, name: str, layout: DaemonLayout, export: Optional[str] = None,
                bridge: Optional[str] = "state") -> DaemonStatus:
        if not os.path.isdir(layout.dir):
            raise DeviceNotFound(f"userspace attachment of {name}")
        state = self._state(layout)
        export = export or state.get("export") or self.export
        if bridge == "state":
            bridge = state.get("bridge")
        pid = self._pid(layout)
        if pid is None or not pid_alive(pid, self.paths):
            raise DaemonDied(name, "qemu-storage-daemon " + (f"(pid {pid}) exited" if pid else "is not running"), pid)
        try:
            with QmpClient(layout.qmp, self.timeout) as qmp:
                exports = [e for e in qmp.query_block_exports() if e.id == EXPORT and not e.shutting_down]
                nodes = [n for n in qmp.query_named_block_nodes() if n.node_name == NODE]
        except QmpError as e:
            raise DaemonDied(name, f"qemu-storage-daemon (pid {pid}) does not answer on QMP: {e.desc}", pid) from None
        if not exports or not nodes:
            raise DaemonDied(name, f"qemu-storage-daemon (pid {pid}) no longer exports the volume", pid)
        path = layout.export_path(export)
        bridge_pid = self._bridge(layout).check(name) if bridge == "nbdfuse" else None
        if export == "fuse" and mount_fstype(path, self.paths) not in ("fuse", "fuseblk"):
            raise DaemonDied(name, f"FUSE export {path} is not mounted", pid)
        node = nodes[0]
        return DaemonStatus(pid=pid, export=export, path=path, size=node.virtual_size, read_only=node.read_only,
                            driver=node.driver, bridge_pid=bridge_pid)

    def _existing(self, info: Any, name: str, layout: DaemonLayout) -> Optional[AttachedDevice]:
        if not os.path.isdir(layout.dir):
            return None
        state = self._state(layout)
        if not state:  # a start that crashed before recording itself: clear it and start again
            self._teardown(layout, name, hard=True)
            return None
        try:
            status = self._health(name, layout)
        except DaemonDied:
            failures = self._teardown(layout, name, hard=True)
            LOG.warning("qemu-storage-daemon of %s had died; cleaned up%s", name,
                        f" ({'; '.join(failures)})" if failures else "")
            raise
        if status.export != self.export or status.read_only != bool(info.read_only):
            raise DeviceBusy(status.path, f"{name} is already attached as {status.export}"
                             f"{' read-only' if status.read_only else ''}")
        return self._device_for(status, layout, name)

    # ------------------------------------------------------------------ stop
    def _teardown(self, layout: DaemonLayout, name: str, hard: bool) -> List[str]:
        """Stop the export and the daemon, unmount, remove the directory. Returns what failed."""
        failures: List[str] = []
        if os.path.exists(layout.bridge_pidfile):  # unmount first: the NBD client goes with it
            failures += self._bridge(layout).stop(hard)
        pid = self._pid(layout)
        if pid is not None and pid_alive(pid, self.paths):
            try:
                with QmpClient(layout.qmp, min(self.timeout, 10.0)) as qmp:
                    try:
                        qmp.block_export_del(EXPORT, "hard" if hard else "safe")
                    except QmpError as e:
                        if "in use" in e.desc and not hard:  # NBD / vhost-user clients still connected
                            raise DeviceBusy(layout.export_path(self._state(layout).get("export", self.export)),
                                             f"clients are connected ({e.desc})") from None
                        if "not found" not in e.desc.lower():
                            raise
                    else:
                        qmp.wait_event("BLOCK_EXPORT_DELETED", {"id": EXPORT}, self.timeout)
                    qmp.quit()
            except QmpError as e:
                LOG.warning("QMP stop of %s failed (%s); signalling pid %d", name, e, pid)
            if not wait_pid_exit(pid, self.timeout, self.paths) and \
                    not stop_pid(pid, layout.qmp, self.executor, self.paths, self.timeout):
                failures.append(f"qemu-storage-daemon pid {pid} did not exit")
        if mount_fstype(layout.disk, self.paths) is not None:  # a daemon that died leaves its FUSE mount
            self.executor.run(["umount", "-l", layout.disk], check=False)
            if mount_fstype(layout.disk, self.paths) is not None:
                failures.append(f"{layout.disk} is still mounted")
        if not failures:
            shutil.rmtree(layout.dir, ignore_errors=True)
            if os.path.exists(layout.dir):
                failures.append(f"cannot remove {layout.dir}")
        elif os.path.exists(layout.secret):
            os.unlink(layout.secret)
        return failures


# ---------------------------------------------------------------------------------------------
# iSCSI
# ---------------------------------------------------------------------------------------------

def _probe(host: str, port: int, timeout: float, netns_path: Optional[str]) -> bool:
    """Does ``host:port`` accept a TCP connection (from inside ``netns_path`` if given)?"""
    result = [False]

    def attempt() -> None:
        if netns_path:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET: affects only this thread
                    return
            finally:
                os.close(fd)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    if netns_path is None:
        attempt()
    else:  # a throwaway thread enters the namespace, so this one never changes
        t = threading.Thread(target=attempt, daemon=True)
        t.start()
        t.join(timeout + 1)
    return result[0]


class UserspaceISCSIConnector(UserspaceConnector):
    """``connector_for("iscsi", attach="userspace")``: libiscsi in qemu-storage-daemon.

    ``initiator_name`` (default: /etc/iscsi/initiatorname.iscsi) is sent at login so the target's
    ACLs apply. Portals are probed in the info's order and the first reachable one is used (the
    next on a connection failure). ``allow_one_way_chap`` accepts info with mutual-CHAP credentials
    and logs in without authenticating the target (qemu's driver cannot send them).
    """

    protocol = "iscsi"
    info_type = IscsiInfo

    def __init__(self, *, initiator_name: Optional[str] = None, allow_one_way_chap: bool = False,
                 probe_timeout: float = 3.0, **options: Any) -> None:
        super().__init__(**options)
        self.initiator_name = initiator_name
        self.allow_one_way_chap = flag("allow_one_way_chap", allow_one_way_chap)
        self.probe_timeout = seconds("probe_timeout", probe_timeout)

    def initiator(self) -> str:
        from blocklink.connection import check_name
        from blocklink.initiator.properties import read_initiator_name

        name = self.initiator_name or read_initiator_name(self.paths)
        if not name:
            raise InvalidConnector("initiator", "no initiator name: pass initiator_name= or set "
                                   "/etc/iscsi/initiatorname.iscsi")
        return check_name(name, "initiator", InvalidConnector, max_len=223)

    def _volume(self, info: IscsiInfo) -> Tuple[str, str]:
        t = info.primary or info.targets[0]
        return f"iscsi\0{t.iqn}\0{t.lun}", f"{t.iqn} lun {t.lun}"

    def _credentials(self, info: IscsiInfo) -> Tuple[Optional[str], Optional[Secret]]:
        method = (info.auth_method or "").lower()
        if method not in ("", "none", "chap"):
            raise InvalidConnectionInfo("data.auth_method", f"unsupported method {info.auth_method!r} (CHAP only)")
        if info.auth_username_in or info.auth_password_in:
            if not self.allow_one_way_chap:
                raise InvalidConnectionInfo("data.auth_password_in", "mutual CHAP is not supported by qemu's iscsi "
                                            "driver (it sends only the initiator's credentials); pass "
                                            "allow_one_way_chap=True to log in without authenticating the target")
            LOG.warning("logging in to %s without mutual CHAP (userspace attach)", self._volume(info)[1])
        if method != "chap":
            return None, None
        if not info.auth_username or not info.auth_password:
            field = "data.auth_username" if not info.auth_username else "data.auth_password"
            raise InvalidConnectionInfo(field, "missing for auth_method CHAP")
        return info.auth_username, info.auth_password

    def _attempts(self, info: IscsiInfo, layout: DaemonLayout) -> Iterator[Tuple[str, DaemonSpec]]:
        user, password = self._credentials(info)
        initiator = self.initiator()
        netns_path = self.paths.runpath("netns", self.netns) if self.netns else None
        tried: List[IscsiTarget] = []
        reachable = 0
        for t in info.targets:
            if t in tried:
                continue
            tried.append(t)
            where = f"{t.portal.address} {t.iqn} lun {t.lun}"
            if not _probe(t.portal.host, t.portal.port, self.probe_timeout, netns_path):
                LOG.info("iSCSI portal %s is not reachable; trying the next", t.portal.address)
                continue
            reachable += 1
            node: Dict[str, Any] = {"driver": "iscsi", "transport": "tcp", "portal": t.portal.address,
                                    "target": t.iqn, "lun": t.lun, "initiator-name": initiator,
                                    "cache": {"direct": self.cache_direct}}
            if user is not None:
                node.update({"user": user, "password-secret": SECRET_ID})
            yield where, DaemonSpec(blockdev=node, export=self.daemon_export, read_only=info.read_only,
                                    secret=password)
        if not reachable:
            raise _NoPortal(", ".join(t.portal.address for t in tried))

    def _classify(self, where: str, stderr: str) -> _Attempt:
        text = daemon_message(stderr)
        if "(513)" in text or "Authentication failure" in text:
            return _Attempt(AuthenticationFailed(where, "CHAP authentication refused"), retry=False)
        if "(515)" in text or "Target not found" in text:
            return _Attempt(VolumeNotFound(where, "target refused the login: no such target, or this initiator "
                                           "is not in its ACL"), retry=True)
        if "LOGICAL_UNIT_NOT_SUPPORTED" in text:
            return _Attempt(VolumeNotFound(where, "the target has no such LUN"), retry=True)
        return _Attempt(ConnectionFailed(where, text.split("Failed to connect to LUN : ")[-1]), retry=True)

    def connect_volume(self, info: InfoLike) -> AttachedDevice:
        try:
            return super().connect_volume(info)
        except _NoPortal as e:
            raise ConnectionFailed(e.portals, "no portal is reachable") from None


class _NoPortal(Exception):
    def __init__(self, portals: str) -> None:
        self.portals = portals
        super().__init__(portals)


# ---------------------------------------------------------------------------------------------
# RBD
# ---------------------------------------------------------------------------------------------

class UserspaceRBDConnector(UserspaceConnector):
    """``connector_for("rbd", attach="userspace")``: librbd in qemu-storage-daemon.

    The cephx key comes from the info's ``keyring`` or the host's keyring files (as for
    :class:`~blocklink.initiator.rbd.RBDConnector`) and reaches the daemon as a ``key-secret``.
    Monitors come from the info (a generated ceph.conf in the run directory, with connect
    timeouts), else from ``conffile`` / /etc/ceph/<cluster>.conf.
    """

    protocol = "rbd"
    info_type = RbdInfo

    def __init__(self, *, conffile: Optional[str] = None, **options: Any) -> None:
        super().__init__(**options)
        self.conffile = conffile

    def _volume(self, info: RbdInfo) -> Tuple[str, str]:
        return f"rbd\0{info.cluster_name or 'ceph'}\0{info.name}", info.name

    def _rbd(self) -> Any:
        from blocklink.initiator.rbd import RBDConnector

        return RBDConnector(conffile=self.conffile, timeout=self.timeout, executor=self.executor, paths=self.paths,
                            lock_path=self.locks.lock_path)

    def _attempts(self, info: RbdInfo, layout: DaemonLayout) -> Iterator[Tuple[str, DaemonSpec]]:
        spec = self._rbd().cluster_spec(info)
        key = spec.key
        if key is None and spec.keyring_file:
            key = key_from_keyring(self.paths.read(spec.keyring_file) or "", spec.user)
        node: Dict[str, Any] = {"driver": "rbd", "pool": info.pool, "image": info.image, "user": spec.user,
                                "cache": {"direct": self.cache_direct}}
        if info.namespace:
            node["namespace"] = info.namespace
        files: Dict[str, str] = {}
        if spec.monitors:
            t = str(int(max(1, self.timeout)))
            files["ceph.conf"] = "\n".join([
                "[global]", "mon_host = " + ",".join(mon_host_entry(h, p) for h, p in spec.monitors),
                f"client_mount_timeout = {t}", f"rados_mon_op_timeout = {t}", "admin_socket =",
                "log_to_stderr = false", ""])
            node["conf"] = os.path.join(layout.dir, "ceph.conf")
        elif spec.conffile:
            node["conf"] = spec.conffile
        if key is not None:
            node.update({"key-secret": SECRET_ID, "auth-client-required": ["cephx"]})
        elif info.auth_enabled is False:
            node["auth-client-required"] = ["none"]
        if info.discard:
            node["discard"] = "unmap"
        yield info.name, DaemonSpec(blockdev=node, export=self.daemon_export, read_only=info.read_only, secret=key,
                                    secret_format="base64", extra_files=files)

    def _classify(self, where: str, stderr: str) -> _Attempt:
        text = daemon_message(stderr)
        low = text.lower()
        if "permission denied" in low or "operation not permitted" in low:
            return _Attempt(AuthenticationFailed(where, "cephx authentication refused (wrong key or user)"), False)
        if "no such file" in low or "does not exist" in low:
            what = "pool" if "pool" in low else "namespace" if "namespace" in low else "image"
            return _Attempt(VolumeNotFound(where, f"{what} does not exist"), False)
        if "timed out" in low:
            return _Attempt(ConnectionFailed(where, "timed out reaching the monitors"), False)
        return _Attempt(ConnectionFailed(where, text), False)

    def _remote_size(self, info: RbdInfo) -> Optional[int]:
        with self._rbd().open_handle(info.replace(access_mode="ro")) as h:
            return int(h.size())


__all__ = ["UserspaceConnector", "UserspaceISCSIConnector", "UserspaceRBDConnector", "DaemonStatus", "DaemonDied",
           "EXPORTS", "EXPORT_KINDS"]
