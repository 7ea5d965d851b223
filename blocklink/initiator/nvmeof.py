"""NVMe over Fabrics connector (TCP; RDMA/FC portals go through the same fabrics interface).

Connects are one write to /dev/nvme-fabrics each (no nvme-cli child process; see
:mod:`blocklink.initiator.host.nvme`). Connection info with ``dhchap_secret`` (and
``dhchap_ctrl_secret`` for bidirectional auth) authenticates with DH-HMAC-CHAP; a host kernel that
cannot (Debian's 6.1) gets :class:`AuthenticationUnsupported` before any connect is tried.

``connect_volume`` connects this host to every portal of the subsystem (only the first reachable
one when the kernel has no native NVMe multipath: separate per-path devices would need dm-multipath),
finds the volume's namespace by its UUID, NGUID or, for legacy info, namespace id — never by
guessing which ``/dev/nvmeXnY`` appeared — and waits for its device on kernel events.

A controller (one connection to a subsystem) carries every namespace the subsystem shows this host,
so ``disconnect_volume`` deletes it only when no other namespace behind it is in use: attached by
blocklink on this host (a small record per subsystem under ``run_dir``) or used by someone (held
by device-mapper, mounted, or open by a process). It returns once what it disconnected is gone
from the kernel: the controllers, the namespace devices that lost their last path and, when no
controller of the subsystem is left, the kernel's subsystem object, which Linux frees only when the
last open handle of its devices closes (udev's blkid may still be probing a device just attached).
All work on one subsystem runs under that subsystem's inter-process lock; different subsystems
proceed in parallel.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Set

from blocklink.connection import AttachedDevice, DeviceKind, NvmeofInfo
from blocklink.errors import (AuthenticationFailed, AuthenticationUnsupported, BlocklinkError, CommandFailed, ConnectionFailed,
                              DetachIncomplete, DeviceBusy, DeviceMismatch, DeviceNotFound, InvalidConnectionInfo,
                              InvalidOption)
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.base import Connector, DeviceLike, InfoLike
from blocklink.initiator.host.nvme import (Controller, Namespace, NvmeHost, NvmePortalSpec, normalize_nguid,
                                           normalize_uuid)
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.options import count, flag, fold_renamed, seconds
from blocklink.initiator.properties import protocol_properties, read_nvme_ids, read_nvme_native_multipath
from blocklink.locks import LockFactory
from blocklink.masking import get_logger
from blocklink.trace import span
from blocklink.privatefile import replace_private

LOG = get_logger(__name__)

_OPTION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,222}")  # NQNs and host IDs go into the /dev/nvme-fabrics options string


class _Identity:
    """How the connection info names its namespace (normalised), and how to say it in messages."""

    def __init__(self, info: NvmeofInfo) -> None:
        self.uuid = normalize_uuid(info.vol_uuid)
        if info.vol_uuid and self.uuid is None:
            raise InvalidConnectionInfo("data.vol_uuid", f"{info.vol_uuid[:60]!r} is not a UUID")
        self.nguid = normalize_nguid(info.volume_nguid)
        if info.volume_nguid and self.nguid is None:
            raise InvalidConnectionInfo("data.volume_nguid", f"{info.volume_nguid[:60]!r} is not a 128-bit NGUID")
        self.nsid = info.ns_id
        self.nqn = info.target_nqn

    @property
    def given(self) -> bool:
        return bool(self.uuid or self.nguid or self.nsid is not None)

    def record(self, ns: Namespace) -> Dict[str, Any]:
        return {"uuid": ns.uuid, "nguid": ns.nguid, "nsid": ns.nsid}

    def __str__(self) -> str:
        if self.uuid:
            return f"namespace uuid {self.uuid} of {self.nqn}"
        if self.nguid:
            return f"namespace nguid {self.nguid} of {self.nqn}"
        if self.nsid is not None:
            return f"namespace {self.nsid} of {self.nqn}"
        return f"the namespace of {self.nqn}"


class NVMeOFConnector(Connector):
    """``connector_for("nvmeof", use_multipath=False, timeout=30.0, ...)``.

    Options: ``use_multipath`` (default False, as every connector: connect every portal when the kernel
    has native NVMe multipath; otherwise the first portal that works),
    ``host_nqn``/``host_id`` (default: /etc/nvme/hostnqn and nvme-cli's own host id; the connection
    info's ``host_nqn`` wins), ``ctrl_loss_tmo``/``reconnect_delay``/``keep_alive_tmo``/``nr_io_queues``
    (nvme connect's ``-l``/``-c``/``-k``/``-i``; None keeps the kernel defaults), ``timeout`` for the
    namespace to appear and for what a disconnect removed to be gone, ``run_dir`` for the
    per-subsystem attach records, ``lock_path``. A bad value raises :class:`InvalidOption` naming it.
    """

    protocol = "nvmeof"
    info_type = NvmeofInfo

    def __init__(self, *, use_multipath: bool = False, host_nqn: Optional[str] = None, host_id: Optional[str] = None,
                 ctrl_loss_tmo: Optional[int] = None, reconnect_delay: Optional[int] = None,
                 keep_alive_tmo: Optional[int] = None, nr_io_queues: Optional[int] = None,
                 timeout: float = 30.0, run_dir: str = "/run/blocklink", lock_path: Optional[str] = None,
                 executor: Optional[Executor] = None, paths: Optional[HostPaths] = None, **legacy: Any) -> None:
        super().__init__(executor=executor, paths=paths)
        timeout = fold_renamed("NVMeOFConnector", legacy, {"timeout": timeout})["timeout"]
        self.use_multipath = flag("use_multipath", use_multipath)
        for name, value in (("host_nqn", host_nqn), ("host_id", host_id)):
            if value is not None and (not isinstance(value, str) or not _OPTION_ID_RE.fullmatch(value)):
                raise InvalidOption(name, f"{str(value)[:60]!r} is not an NQN / host ID")
        self.host_nqn = host_nqn
        self.host_id = host_id
        # ctrl_loss_tmo=-1 means "retry forever"; the others are counts of seconds or queues
        self.ctrl_loss_tmo = None if ctrl_loss_tmo is None else count("ctrl_loss_tmo", ctrl_loss_tmo, minimum=-1)
        self.reconnect_delay = None if reconnect_delay is None else count("reconnect_delay", reconnect_delay, minimum=1)
        self.keep_alive_tmo = None if keep_alive_tmo is None else count("keep_alive_tmo", keep_alive_tmo)
        self.nr_io_queues = None if nr_io_queues is None else count("nr_io_queues", nr_io_queues, minimum=1)
        self.timeout = seconds("timeout", timeout)
        self.record_dir = os.path.join(run_dir, "nvme")
        self.locks = LockFactory(lock_path or os.path.join(run_dir, "locks"))
        self.host = NvmeHost(self.paths, self.executor)

    # ------------------------------------------------------------------ connector properties
    def get_connector_properties(self, **kwargs: Any) -> Dict[str, Any]:
        return protocol_properties(self.protocol, self.paths, nqn=self.host_nqn)

    def _hostnqn(self, info: NvmeofInfo) -> str:
        nqn = info.host_nqn or self.host_nqn or read_nvme_ids(self.paths).get("nqn")
        if not nqn:
            raise InvalidConnectionInfo("data.host_nqn", "missing, and this host has no /etc/nvme/hostnqn "
                                                         "(create it with 'nvme gen-hostnqn')")
        return nqn

    def _hostid(self, hostnqn: str) -> Optional[str]:
        """The host ID to connect with. Always one, as nvme-cli sends: without it Linux uses its default
        host's ID, and since 6.x (the 6.12 guest; 6.1 did not check) a known host ID under another host
        NQN is refused with EINVAL. The option, else /etc/nvme/hostid when the NQN is this host's own,
        else the UUID inside a ``nqn.2014-08.org.nvmexpress:uuid:`` NQN."""
        if self.host_id:
            return self.host_id
        ids = read_nvme_ids(self.paths)
        if ids.get("nvme_hostid") and hostnqn == ids.get("nqn"):
            return ids["nvme_hostid"]
        return normalize_uuid(hostnqn.rpartition(":uuid:")[2]) if ":uuid:" in hostnqn else ids.get("nvme_hostid")

    @staticmethod
    def _portals(info: NvmeofInfo) -> List[NvmePortalSpec]:
        return [NvmePortalSpec(p.address, p.port, p.transport) for p in info.portals]

    @contextmanager
    def _subsystem_lock(self, nqn: str) -> Iterator[None]:
        with contextlib.ExitStack() as held:
            with span("lock_subsystem", nqn=nqn):
                held.enter_context(self.locks.lock(f"nvme-{nqn}"))
            yield

    # ------------------------------------------------------------------ connect
    def connect_volume(self, info: InfoLike) -> AttachedDevice:
        ninfo: NvmeofInfo = self._info(info)
        ident = _Identity(ninfo)
        hostnqn = self._hostnqn(ninfo)
        portals = self._portals(ninfo)
        with self._subsystem_lock(ninfo.target_nqn), \
                span("connect_controllers", nqn=ninfo.target_nqn, portals=len(portals)):
            existing = self.host.find_controllers(ninfo.target_nqn, portals, hostnqn)
            created: List[str] = []
            try:
                ns = self._connect_and_find(ninfo, ident, hostnqn, portals, existing, created)
                self._remember(ninfo.target_nqn, hostnqn, ident.record(ns))  # (fsynced: in the span)
            except BaseException:
                self._undo(created)
                raise
        LOG.info("nvme: %s attached at %s via %s", ident, ns.path, ", ".join(ns.controllers))
        return AttachedDevice(protocol=self.protocol, path=ns.path, type=DeviceKind.BLOCK, wwn=ns.wwid,
                              nqn=ninfo.target_nqn, nsid=ns.nsid, uuid=ns.uuid, controllers=tuple(ns.controllers),
                              size=ns.size)

    def _connect_and_find(self, info: NvmeofInfo, ident: _Identity, hostnqn: str, portals: List[NvmePortalSpec],
                          existing: Dict[NvmePortalSpec, Controller], created: List[str]) -> Namespace:
        all_paths = self.use_multipath and read_nvme_native_multipath(self.paths)
        live = [c for c in existing.values() if c.live]
        for c in live:  # a target without namespace-change notices shows a new namespace only after a rescan
            self._rescan(c.name)
        failures: List[BlocklinkError] = []
        if all_paths or not live:
            self.host.load_modules(portals[0].transport)
            if info.dhchap_secret is not None and not self.host.supports_auth():
                # Debian's 6.1 would take dhchap_secret= and connect without authenticating: refuse instead
                raise AuthenticationUnsupported(info.target_nqn, "the connection info requires DH-HMAC-CHAP and "
                                                "this host's kernel lacks NVMe in-band authentication "
                                                "(Linux 6.0+ built with NVME_HOST_AUTH)")
            for p in portals:
                if p in existing:
                    continue
                before = {c.name for c in self.host.controllers(info.target_nqn)}
                try:
                    self.host.connect(info.target_nqn, p, hostnqn=hostnqn, hostid=self._hostid(hostnqn),
                                      ctrl_loss_tmo=self.ctrl_loss_tmo, reconnect_delay=self.reconnect_delay,
                                      keep_alive_tmo=self.keep_alive_tmo, nr_io_queues=self.nr_io_queues,
                                      dhchap_secret=info.dhchap_secret, dhchap_ctrl_secret=info.dhchap_ctrl_secret)
                except (ConnectionFailed, CommandFailed) as e:
                    LOG.warning("nvme: %s", e)
                    failures.append(e if isinstance(e, ConnectionFailed) else ConnectionFailed(str(p), str(e)))
                    continue
                found = self.host.find_controllers(info.target_nqn, [p], hostnqn).get(p)
                if found is not None:
                    if found.name not in before:
                        created.append(found.name)
                    existing[p] = found
                if not all_paths:
                    break
        if not existing:
            raise _combined(ident, failures)
        if failures:
            LOG.warning("nvme: %s reachable on %d of %d portals", info.target_nqn, len(existing), len(portals))
        ctrls = [c.name for c in existing.values()]
        ns = self._wait_namespace(ident, ctrls)
        if all_paths and len(existing) > 1:  # native multipath: wait until every path joined the head device
            want = set(ctrls)
            try:
                ns = wait_for(lambda: self._with_paths(ident, ctrls, want), timeout=self.timeout,
                              watch=[self.paths.sys("class", "nvme")], what=f"all paths of {ident}")
            except DeviceNotFound:  # usable already; a path that never shows it is the kernel's to retry
                LOG.warning("nvme: %s is reachable through %s only", ident, ", ".join(ns.controllers))
        return ns

    def _with_paths(self, ident: _Identity, ctrls: List[str], want: Set[str]) -> Optional[Namespace]:
        ns = self._find(ident, ctrls)
        return ns if ns is not None and set(ns.controllers) >= want else None

    def _find(self, ident: _Identity, ctrls: List[str]) -> Optional[Namespace]:
        if ident.given:
            return self.host.find_namespace(ctrls, uuid=ident.uuid, nguid=ident.nguid, nsid=ident.nsid)
        # legacy info without any namespace identity: only an unambiguous subsystem will do
        nsids = {ns.nsid for c in ctrls for ns in self.host.namespaces(c)}
        if len(nsids) > 1:
            raise ConnectionFailed(ident.nqn, f"the connection info names no namespace (no vol_uuid, volume_nguid "
                                              f"or ns_id) and the subsystem shows {len(nsids)}: cannot tell which")
        return self.host.find_namespace(ctrls, nsid=nsids.pop()) if nsids else None

    def _wait_namespace(self, ident: _Identity, ctrls: List[str]) -> Namespace:
        return wait_for(lambda: self._find(ident, ctrls), timeout=self.timeout,
                        watch=[self.paths.dev, *(self.paths.sys("class", "nvme", c) for c in ctrls)],
                        what=str(ident))

    def _rescan(self, ctrl: str) -> None:
        try:
            self.host.rescan(ctrl)
        except CommandFailed as e:
            LOG.warning("nvme: rescan of %s failed: %s", ctrl, e)

    def _undo(self, created: List[str]) -> None:
        for ctrl in created:
            try:
                self.host.disconnect(ctrl)
            except CommandFailed as e:
                LOG.error("nvme: could not undo the connection %s: %s", ctrl, e)

    # ------------------------------------------------------------------ disconnect
    def disconnect_volume(self, info: InfoLike, device: DeviceLike = None, force: bool = False) -> None:
        ninfo: NvmeofInfo = self._info(info)
        dev = self._device(device)
        ident = _Identity(ninfo)
        hostnqn = self._hostnqn(ninfo)
        failures: List[str] = []
        with self._subsystem_lock(ninfo.target_nqn):
            ctrls = list(self.host.find_controllers(ninfo.target_nqn, self._portals(ninfo), hostnqn).values())
            names = [c.name for c in ctrls]
            ns = self._find_for_detach(ident, names, dev)
            if ns is not None:
                try:
                    self.host.flush(ns.path)
                except CommandFailed as e:
                    if not force:
                        raise DeviceBusy(ns.path, f"flush failed: {e}") from None
                    failures.append(f"flush {ns.path}: {e}")
            records = self._forget(ninfo.target_nqn, hostnqn, ident, ns)
            drop: List[Controller] = []
            keep: List[str] = []
            for c in ctrls:
                users = self._other_users(c.name, ns, records)
                if users:
                    LOG.info("nvme: keeping controller %s of %s: %s", c.name, ninfo.target_nqn, "; ".join(users))
                    keep.append(c.name)
                else:
                    drop.append(c)
            heads = self._heads_going([c.name for c in drop], keep)
            removed: List[str] = []
            for c in drop:
                try:
                    self.host.disconnect(c.name)
                    removed.append(c.name)
                except CommandFailed as e:
                    if not force:
                        raise DeviceBusy(c.dev, f"nvme disconnect failed: {e}") from None
                    failures.append(f"disconnect {c.name}: {e}")
            left = self._wait_removed(ninfo.target_nqn, removed, heads)
            if left:
                if not force:
                    raise DeviceBusy(ns.path if ns is not None else ninfo.target_nqn, left)
                failures.append(left)
        if failures:
            raise DetachIncomplete(str(ident), failures)
        LOG.info("nvme: %s detached", ident)

    def _find_for_detach(self, ident: _Identity, ctrls: List[str],
                         dev: Optional[AttachedDevice]) -> Optional[Namespace]:
        try:
            ns = self._find(ident, ctrls) if ctrls else None
        except ConnectionFailed:  # legacy info naming no namespace: only the device can tell
            if dev is None or not dev.path:
                raise
            ns = None
        if dev is None or not dev.path or not ctrls:
            return ns
        given = os.path.basename(dev.path)
        mine = {n.name: n for c in ctrls for n in self.host.namespaces(c)}
        if ns is None:  # the info named nothing we can see: trust the device if it is behind our controllers
            return mine.get(given)
        if given != ns.name:
            same = mine.get(given)
            if same is None or not same.matches(ident.uuid, ident.nguid, ident.nsid):
                found = same.wwid if same is not None else "no namespace of this subsystem"
                raise DeviceMismatch(dev.path, ns.wwid or ns.path, found or "?")
            return same  # another path's device of the same namespace (no native multipath)
        return ns

    def _other_users(self, ctrl: str, ns: Optional[Namespace], records: List[Dict[str, Any]]) -> List[str]:
        out = []
        for other in self.host.namespaces(ctrl):
            if ns is not None and other.name == ns.name:
                continue
            if any(_record_matches(r, other) for r in records):
                out.append(f"{other.path} is attached (namespace {other.nsid})")
                continue
            out += [f"{other.path} {u}" for u in self.host.device_users(other.name)]
        return out

    def _heads_going(self, drop: List[str], keep: List[str]) -> List[str]:
        """The namespace devices that lose their last path with ``drop``; each is told not to linger
        (a head with ``delayed_removal_secs`` would stay, queueing I/O, for that long after)."""
        kept = {n.name for c in keep for n in self.host.namespaces(c)}
        heads = sorted({n.name for c in drop for n in self.host.namespaces(c)} - kept)
        for h in heads:
            if self.host.delayed_removal(h):
                try:
                    self.host.remove_without_delay(h)
                    LOG.info("nvme: %s set to go with its last path (was delayed_removal_secs)", h)
                except OSError as e:
                    LOG.warning("nvme: cannot clear delayed removal of %s: %s", h, e)
        return heads

    def _wait_removed(self, nqn: str, ctrls: List[str], heads: List[str]) -> Optional[str]:
        """Wait until the controllers, the namespace devices and, once no controller of ``nqn`` is left
        on this host, the kernel's subsystem object are gone; None then, else what is left and why.

        ``nvme disconnect`` returns once Linux (6.1) deleted the controller and its devices from sysfs,
        but the subsystem object goes only at its last reference put: a process holding a namespace
        device open (udev's blkid probing a fresh device, a stale handle) keeps the namespace head,
        and with it the subsystem, until it closes it. A controller already being deleted (after
        ctrl_loss_tmo) goes later still, from the kernel's delete work. Each removal raises a uevent.
        """
        def left() -> List[str]:
            out = [f"controller {c}" for c in ctrls if self.host.controller(c) is not None]
            others = [c.name for c in self.host.controllers(nqn) if c.name not in ctrls]
            served = {n.name for c in others for n in self.host.namespaces(c)}  # e.g. a failed disconnect's
            out += [f"/dev/{h}" for h in heads if h not in served and self.paths.exists(self.paths.sys("block", h))]
            if not others:
                out += [f"subsystem {s}" for s in self.host.subsystems(nqn)]
            return out

        if not left():
            return None
        try:
            wait_for(lambda: True if not left() else None, timeout=self.timeout,
                     watch=[self.paths.sys("class", "nvme"), self.paths.sys("class", "nvme-subsystem"),
                            self.paths.sys("block")], what=f"removal of {nqn}")
            return None
        except DeviceNotFound:
            rest = left()
        if not rest:
            return None
        holders = self.host.openers([*heads, *(f"ng{h[4:]}" for h in heads), *ctrls], deleted_nvme=True)
        why = f": open by {', '.join(holders)}" if holders else ""
        return f"{', '.join(rest)} of {nqn} still present {self.timeout:.1f}s after nvme disconnect{why}"

    # ------------------------------------------------------------------ extend, paths
    def extend_volume(self, info: InfoLike) -> int:
        ninfo: NvmeofInfo = self._info(info)
        ident = _Identity(ninfo)
        hostnqn = self._hostnqn(ninfo)
        with self._subsystem_lock(ninfo.target_nqn):
            ctrls = [c for c in self.host.find_controllers(ninfo.target_nqn, self._portals(ninfo), hostnqn).values()]
            ns = self._find(ident, [c.name for c in ctrls]) if ctrls else None
            if ns is None:
                raise DeviceNotFound(str(ident))
            for c in ctrls:
                if c.live:
                    self._rescan(c.name)
            want = self.host.id_ns_size(ns.path)
            name = ns.name

            def sized() -> Optional[int]:
                size = self.host.device_size(name)
                if size is None:
                    return None
                return size if want is None or size == want else None

            size = wait_for(sized, timeout=self.timeout, watch=[self.paths.sys("block", name)],
                            what=f"{ns.path} at {want} bytes" if want else f"{ns.path} size")
        LOG.info("nvme: %s is now %d bytes", ns.path, size)
        return size

    def get_volume_paths(self, info: InfoLike) -> List[str]:
        ninfo: NvmeofInfo = self._info(info)
        ident = _Identity(ninfo)
        hostnqn = self._hostnqn(ninfo)
        ctrls = [c.name for c in self.host.find_controllers(ninfo.target_nqn, self._portals(ninfo), hostnqn).values()]
        if not ctrls:
            return []
        try:
            ns = self._find(ident, ctrls)
        except ConnectionFailed:
            return []
        return [ns.path] if ns else []

    # ------------------------------------------------------------------ attach records
    def _record_path(self, nqn: str, hostnqn: str) -> str:
        return os.path.join(self.record_dir, LockFactory.lock_name(f"{nqn}@{hostnqn}") + ".json")

    def _load(self, nqn: str, hostnqn: str) -> List[Dict[str, Any]]:
        text = self.paths.read(self._record_path(nqn, hostnqn))
        if not text:
            return []
        try:
            data = json.loads(text)
        except ValueError:
            LOG.warning("nvme: ignoring an unreadable attach record for %s", nqn)
            return []
        return [r for r in data.get("namespaces", []) if isinstance(r, dict)] if isinstance(data, dict) else []

    def _store(self, nqn: str, hostnqn: str, records: List[Dict[str, Any]]) -> None:
        path = self._record_path(nqn, hostnqn)
        if not records:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        os.makedirs(self.record_dir, mode=0o700, exist_ok=True)
        replace_private(path, json.dumps({"nqn": nqn, "hostnqn": hostnqn, "namespaces": records}))

    def _remember(self, nqn: str, hostnqn: str, rec: Dict[str, Any]) -> None:
        records = [r for r in self._load(nqn, hostnqn) if not _same_record(r, rec)]
        self._store(nqn, hostnqn, records + [rec])

    def _forget(self, nqn: str, hostnqn: str, ident: _Identity, ns: Optional[Namespace]) -> List[Dict[str, Any]]:
        """Drop the volume's record; returns the records of the other attached namespaces."""
        mine = ident.record(ns) if ns is not None else {"uuid": ident.uuid, "nguid": ident.nguid, "nsid": ident.nsid}
        records = [r for r in self._load(nqn, hostnqn) if not _same_record(r, mine)]
        self._store(nqn, hostnqn, records)
        return records


def _same_record(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    for key in ("uuid", "nguid"):
        if a.get(key) and b.get(key):
            return bool(a[key] == b[key])
    return a.get("nsid") is not None and a.get("nsid") == b.get("nsid")


def _record_matches(rec: Dict[str, Any], ns: Namespace) -> bool:
    return _same_record(rec, {"uuid": ns.uuid, "nguid": ns.nguid, "nsid": ns.nsid})


def _combined(ident: _Identity, failures: List[BlocklinkError]) -> BlocklinkError:
    """One error for "no portal worked": a refusal by the target wins over unreachable portals."""
    for f in failures:
        if isinstance(f, AuthenticationFailed):
            return f
    if len(failures) == 1:
        return failures[0]
    reasons = "; ".join(str(f) for f in failures) or "no portal connected"
    return ConnectionFailed(ident.nqn, reasons)


__all__ = ["NVMeOFConnector"]
