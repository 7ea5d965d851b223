"""``blocklink audit``: this host's kernel storage state against the attachment records.

The kernel side is read with the host layer (:mod:`blocklink.initiator.host`): iSCSI sessions and
node records, the SCSI disks of those sessions, dm-multipath maps, NVMe-oF controllers, krbd
mappings, connected nbd devices and dm-crypt mappings over any of those; the qemu-storage-daemon and
nbdfuse processes of the userspace connector (found by the per-volume run directory on their command
line) and, given a libvirt connection, the libvirt secrets blocklink defined (their usage names
start with ``blocklink``). The record side is every active attachment of this host. The report lists

* **orphans**: kernel objects no record explains (a session to a target no record names, a map of
  a WWN no record holds, ...);
* **ghosts**: records whose device is gone;
* **mismatches**: records whose device now carries another WWN than the one recorded at connect.

:meth:`Auditor.clean` removes an orphan only when it can prove that is safe: no holder, no mount,
no process has it open, its WWN (or mapping) is still the one the audit saw, and no record names
it; anything else is left in place with the reason. Removal runs top-down (crypt, maps, disks,
sessions, node records), so a map's disks and a session's LUNs can go in the same run.
"""

from __future__ import annotations

import os
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from blocklink.attach.records import ACTIVE, Attachment
from blocklink.errors import BlocklinkError, CommandFailed
from blocklink.executor import Executor, default_executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host import scsi
from blocklink.initiator.host.iscsiadm import Iscsiadm, split_portal
from blocklink.initiator.host.multipath import Multipath, multipath_maps, read_map
from blocklink.initiator.host.nvme import NvmeHost
from blocklink.initiator.host.wwn import device_wwid, same_wwn
from blocklink.connection import Portal
from blocklink.masking import get_logger

LOG = get_logger(__name__)

# clean order: what holds comes before what is held
KINDS = ("dm_crypt", "multipath_map", "nbd_mapping", "rbd_mapping", "scsi_disk", "iscsi_session", "iscsi_node",
         "nvme_controller", "userspace_daemon", "libvirt_secret")
# a userspace connector's per-volume run directory (<run_dir>/<protocol>-<16 hex>) named on a daemon's command line
_LAYOUT_RE = re.compile(r"(/[A-Za-z0-9._/\-]*/(?:iscsi|rbd)-[0-9a-f]{16})/(?:qmp\.sock|nbd\.sock|vhost\.sock|disk|qsd\.pid)")
_DAEMONS = ("qemu-storage-daemon", "nbdfuse")
# the usage names blocklink gives the secrets it defines (hypervisor.live)
_SECRET_PREFIXES = ("blocklink ", "/blocklink/")


@dataclass(frozen=True)
class KernelObject:
    """One piece of kernel state. ``device``: its block device (sdX, dm-N, rbdN, nbdN), if any."""

    kind: str
    name: str
    device: Optional[str] = None
    wwn: Optional[str] = None
    ids: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "device": self.device, "wwn": self.wwn, "ids": dict(self.ids)}


@dataclass(frozen=True)
class RecordIssue:
    kind: str  # "ghost" or "mismatch"
    attachment_id: str
    volume_id: str
    device: str
    message: str

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AuditReport:
    orphans: List[KernelObject] = field(default_factory=list)
    ghosts: List[RecordIssue] = field(default_factory=list)
    mismatches: List[RecordIssue] = field(default_factory=list)
    explained: List[KernelObject] = field(default_factory=list)
    removed: List[KernelObject] = field(default_factory=list)
    refused: List[Tuple[KernelObject, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.orphans or self.ghosts or self.mismatches)

    def to_dict(self) -> Dict[str, Any]:
        return {"orphans": [o.to_dict() for o in self.orphans], "ghosts": [g.to_dict() for g in self.ghosts],
                "mismatches": [m.to_dict() for m in self.mismatches],
                "explained": [o.to_dict() for o in self.explained],
                "removed": [o.to_dict() for o in self.removed],
                "refused": [dict(o.to_dict(), reason=why) for o, why in self.refused]}


@dataclass
class _Known:
    """What the active records of this host name."""

    iqns: Set[str] = field(default_factory=set)
    iscsi_luns: Set[Tuple[str, int]] = field(default_factory=set)
    nqns: Set[str] = field(default_factory=set)
    wwns: List[str] = field(default_factory=list)
    rbd_images: Set[str] = field(default_factory=set)
    devices: Set[str] = field(default_factory=set)  # kernel names (sda, dm-0, nbd0)
    paths: Set[str] = field(default_factory=set)  # host_device paths as recorded (a userspace export)
    secrets: Set[str] = field(default_factory=set)  # libvirt secret UUIDs
    volumes: Set[str] = field(default_factory=set)


class Auditor:
    """``Auditor(store).audit()``; ``.clean(report)`` removes the orphans it can prove safe."""

    def __init__(self, store: Any, *, executor: Optional[Executor] = None, paths: Optional[HostPaths] = None,
                 host: Optional[str] = None, libvirt: Any = None) -> None:
        """``libvirt``: an open libvirt connection (``libvirt.open(uri)``) whose secrets are audited too."""
        self.store = store
        self.libvirt = libvirt
        self.executor = executor or default_executor()
        self.paths = paths or HostPaths()
        self.host = host or socket.gethostname()
        self.nvme = NvmeHost(self.paths, self.executor)
        self.multipath = Multipath(self.executor, self.paths)
        self.iscsiadm = Iscsiadm(self.executor, self.paths)

    # ------------------------------------------------------------------ records
    def records(self) -> List[Attachment]:
        return [a for a in self.store.list(statuses=ACTIVE) if a.host == self.host]

    def _dev_name(self, path: str) -> str:
        return os.path.basename(self.paths.realpath(self.paths.from_host(path)))

    def _known(self, recs: Sequence[Attachment]) -> _Known:
        k = _Known()
        for rec in recs:
            data = (rec.connection_info or {}).get("data") or {}
            iqns = [data.get("target_iqn")] + list(data.get("target_iqns") or [])
            luns = [data.get("target_lun")] + list(data.get("target_luns") or [])
            for iqn in filter(None, iqns):
                k.iqns.add(iqn)
                k.iscsi_luns.update((iqn, int(lun)) for lun in luns if isinstance(lun, int))
            for key in ("target_nqn", "nqn"):  # the new and the legacy NVMe-oF forms
                if data.get(key):
                    k.nqns.add(str(data[key]))
            if data.get("name") and rec.protocol == "rbd":
                k.rbd_images.add(str(data["name"]))
            for w in (rec.extra.get("device_wwn"), data.get("wwn")):
                if w:
                    k.wwns.append(str(w))
            if rec.host_device:
                k.devices.add(self._dev_name(rec.host_device))
                k.paths.add(rec.host_device)
            for key in ("secret_uuid", "encryption_secret_uuid"):
                for v in (rec.extra.get(key), data.get(key)):
                    if v:
                        k.secrets.add(str(v).lower())
            k.volumes.add(rec.volume_id)
        return k

    # ------------------------------------------------------------------ kernel state
    def wwn_of(self, name: str) -> Optional[str]:
        if name.startswith("dm-"):
            m = read_map(self.paths, name)
            if m is not None:
                return m.wwid
        return device_wwid(self.paths, name) or (self.paths.read(self.paths.sys("block", name, "wwid")) or None)

    def kernel_state(self) -> List[KernelObject]:
        out: List[KernelObject] = []
        sessions = scsi.iscsi_sessions(self.paths)
        for s in sessions:
            out.append(KernelObject("iscsi_session", f"session{s.sid}", ids={
                "iqn": s.iqn, "portal": s.portal, "sid": str(s.sid)}))
            for d in scsi.session_devices(self.paths, s.sid):
                if d.name:
                    out.append(KernelObject("scsi_disk", d.name, d.name, self.wwn_of(d.name), {
                        "iqn": s.iqn, "lun": str(d.hctl.lun), "hctl": str(d.hctl), "session": str(s.sid)}))
        try:
            nodes = self.iscsiadm.nodes()
        except (CommandFailed, OSError) as e:
            LOG.warning("audit: cannot list iSCSI node records: %s", e)
            nodes = []
        for n in nodes:
            out.append(KernelObject("iscsi_node", f"{n.iqn} {n.portal}", ids={"iqn": n.iqn, "portal": n.portal}))
        for m in multipath_maps(self.paths):
            out.append(KernelObject("multipath_map", m.name or m.dm, m.dm, m.wwid, {"slaves": ",".join(m.slaves)}))
        for c in self.nvme.controllers():
            if c.transport in ("tcp", "rdma", "fc", "loop"):
                out.append(KernelObject("nvme_controller", c.name, ids={
                    "nqn": c.subsysnqn, "transport": c.transport, "traddr": c.traddr, "trsvcid": c.trsvcid}))
        for dev_id in self.paths.listdir(self.paths.sys("bus", "rbd", "devices")):
            rdir = self.paths.sys("bus", "rbd", "devices", dev_id)
            pool = self.paths.read(os.path.join(rdir, "pool"), "")
            image = self.paths.read(os.path.join(rdir, "name"), "")
            ns = self.paths.read(os.path.join(rdir, "pool_ns"), "") or ""
            spec = "/".join(p for p in (pool, ns, image) if p)
            out.append(KernelObject("rbd_mapping", f"rbd{dev_id}", f"rbd{dev_id}", ids={"image": spec, "id": dev_id}))
        for name in self.paths.listdir(self.paths.sys("block")):
            if name.startswith("nbd") and self.paths.exists(self.paths.sys("block", name, "pid")):
                pid = self.paths.read(self.paths.sys("block", name, "pid"), "") or ""
                out.append(KernelObject("nbd_mapping", name, name, ids={"pid": pid}))
            elif name.startswith("dm-"):
                uuid = self.paths.read(self.paths.sys("block", name, "dm", "uuid"), "") or ""
                if uuid.startswith("CRYPT-"):
                    slaves = self.paths.listdir(self.paths.sys("block", name, "slaves"))
                    out.append(KernelObject("dm_crypt", self.paths.read(self.paths.sys("block", name, "dm", "name"),
                                                                        name) or name, name,
                                            ids={"slaves": ",".join(slaves)}))
        out.extend(self.userspace_daemons())
        out.extend(self.libvirt_secrets())
        return out

    def userspace_daemons(self) -> List[KernelObject]:
        """The userspace connector's qemu-storage-daemon and nbdfuse processes (any run directory)."""
        from blocklink.initiator.qsd import pid_alive, pid_cmdline

        out: List[KernelObject] = []
        for entry in self.paths.listdir(self.paths.procpath()):
            if not entry.isdigit():
                continue
            argv = (self.paths.read_bytes(self.paths.procpath(entry, "cmdline")) or b"").split(b"\0")
            prog = os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else ""
            if prog not in _DAEMONS:
                continue
            m = _LAYOUT_RE.search(pid_cmdline(int(entry), self.paths))
            if m is None or not pid_alive(int(entry), self.paths):
                continue  # not one of ours (no blocklink run directory on its command line)
            out.append(KernelObject("userspace_daemon", f"{prog} {entry}", ids={
                "pid": entry, "program": prog, "run_dir": m.group(1)}))
        return out

    def libvirt_secrets(self) -> List[KernelObject]:
        """The libvirt secrets blocklink defined (usage name ``blocklink ...`` or ``/blocklink/...``)."""
        if self.libvirt is None:
            return []
        out: List[KernelObject] = []
        for uuid in self.libvirt.listSecrets():
            try:
                root = ET.fromstring(self.libvirt.secretLookupByUUIDString(uuid).XMLDesc(0))
            except Exception as e:  # noqa: BLE001 - undefined meanwhile, or unreadable: not ours to judge
                LOG.debug("audit: cannot read libvirt secret %s: %s", uuid, e)
                continue
            usage = root.find("usage")
            if usage is None or len(usage) == 0:
                continue
            usage_id = (usage[0].text or "").strip()
            if usage_id.startswith(_SECRET_PREFIXES):
                out.append(KernelObject("libvirt_secret", str(uuid), ids={
                    "uuid": str(uuid).lower(), "usage_type": usage.get("type", ""), "usage": usage_id}))
        return out

    # ------------------------------------------------------------------ the audit
    def _explained(self, obj: KernelObject, k: _Known, transport_devs: Set[str]) -> Optional[bool]:
        """True: a record explains it; False: orphan; None: not ours to judge (a local crypt disk)."""
        ids = obj.ids
        if obj.device and obj.device in k.devices:
            return True
        if obj.kind in ("iscsi_session", "iscsi_node"):
            return ids["iqn"] in k.iqns
        if obj.kind == "scsi_disk":
            if obj.wwn and any(same_wwn(w, obj.wwn) for w in k.wwns):
                return True
            return (ids["iqn"], int(ids["lun"])) in k.iscsi_luns
        if obj.kind == "multipath_map":
            return bool(obj.wwn) and any(same_wwn(w, obj.wwn or "") for w in k.wwns)
        if obj.kind == "nvme_controller":
            return ids["nqn"] in k.nqns
        if obj.kind == "rbd_mapping":
            return ids["image"] in k.rbd_images
        if obj.kind == "userspace_daemon":
            run_dir = ids["run_dir"]
            return any(p == run_dir or p.startswith(run_dir + "/") for p in k.paths)
        if obj.kind == "libvirt_secret":
            if ids["uuid"] in k.secrets:
                return True
            parts = ids["usage"].split("/")  # /blocklink/luks/<volume id>/<domain uuid>: the flow keeps no UUID
            return len(parts) > 3 and parts[2] == "luks" and parts[3] in k.volumes
        if obj.kind == "dm_crypt":
            slaves = [s for s in ids["slaves"].split(",") if s]
            if not any(s in transport_devs for s in slaves):
                return None  # over a local disk: the host's own business
            return any(s in k.devices for s in slaves)
        return False  # nbd: only a record naming the device explains it

    def audit(self) -> AuditReport:
        recs = self.records()
        k = self._known(recs)
        report = AuditReport()
        state = self.kernel_state()
        transport_devs = {o.device for o in state if o.device and o.kind != "dm_crypt"}
        for obj in state:
            verdict = self._explained(obj, k, transport_devs)
            if verdict is True:
                report.explained.append(obj)
            elif verdict is False:
                report.orphans.append(obj)
        for rec in recs:
            if not rec.host_device or "connect" not in rec.steps:
                continue
            name = self._dev_name(rec.host_device)
            if not self.paths.exists(self.paths.sys("block", name)):
                report.ghosts.append(RecordIssue("ghost", rec.id, rec.volume_id, rec.host_device,
                                                 f"{rec.host_device} of volume {rec.volume_id} is gone"))
                continue
            data = (rec.connection_info or {}).get("data") or {}
            recorded = rec.extra.get("device_wwn") or data.get("wwn")
            now = self.wwn_of(name)
            if recorded and now and not same_wwn(str(recorded), now):
                report.mismatches.append(RecordIssue("mismatch", rec.id, rec.volume_id, rec.host_device,
                                                     f"{rec.host_device} now carries WWN {now}, not volume "
                                                     f"{rec.volume_id}'s {recorded}"))
        return report

    # ------------------------------------------------------------------ clean
    def clean(self, report: Optional[AuditReport] = None) -> AuditReport:
        """Remove the orphans of ``report`` (a fresh audit if None) that are provably safe to remove."""
        report = report or self.audit()
        named = self._known(self.records())  # re-read: a record may have appeared since the audit
        ordered = sorted(report.orphans, key=lambda o: KINDS.index(o.kind))
        for obj in ordered:
            why = self._unsafe(obj, named)
            if why is None:
                try:
                    self._remove(obj)
                except (BlocklinkError, OSError) as e:
                    why = f"removal failed: {e}"
            if why is None:
                report.removed.append(obj)
                LOG.info("audit: removed orphan %s %s", obj.kind, obj.name)
            else:
                report.refused.append((obj, why))
                LOG.warning("audit: left orphan %s %s in place: %s", obj.kind, obj.name, why)
        return report

    def _unsafe(self, obj: KernelObject, k: _Known) -> Optional[str]:
        """Why ``obj`` may not be removed now, or None."""
        if self._explained(obj, k, set()) is True:
            return "a record names it now"
        if obj.device is not None:
            if not self.paths.exists(self.paths.sys("block", obj.device)):
                return "gone already" if obj.kind != "nbd_mapping" else "disconnected already"
            users = self.nvme.device_users(obj.device)  # holders, mounts, open files
            if obj.kind == "nbd_mapping":  # the process serving the mapping keeps it open: not a user
                server = self._process_of(obj.ids.get("pid", ""))
                users = [u for u in users if not (server and u.startswith(f"open by pid {server} ("))]
            if users:
                return "; ".join(users)
            if obj.kind in ("scsi_disk", "multipath_map"):
                if not obj.wwn:
                    return "no WWN to confirm"
                now = self.wwn_of(obj.device)
                if not now or not same_wwn(obj.wwn, now):
                    return f"WWN changed since the audit ({obj.wwn} -> {now})"
        if obj.kind == "iscsi_session":
            left = [d.name or str(d.hctl) for d in scsi.session_devices(self.paths, int(obj.ids["sid"]))]
            if left:
                return f"LUN device(s) {', '.join(left)} still on the session"
        if obj.kind == "iscsi_node":
            portal = _portal(obj.ids["portal"])
            if scsi.find_session(self.paths, obj.ids["iqn"], portal.host, portal.port) is not None:
                return "a session uses the record"
        if obj.kind == "nvme_controller":
            users = [u for ns in self.nvme.namespaces(obj.name) for u in self.nvme.device_users(ns.name)]
            if users:
                return "; ".join(users)
        if obj.kind == "userspace_daemon":
            return ("not stopped by --clean: whether a client (a VM, an NBD connection) still uses its export "
                    "cannot be proven; detach it with the userspace connector or stop pid " + obj.ids["pid"])
        if obj.kind == "libvirt_secret":
            domains = self._secret_users(obj.ids["uuid"])
            if domains is None:
                return "no libvirt connection to check the domains"
            if domains:
                return "used by domain(s) " + ", ".join(domains)
        return None

    def _secret_users(self, uuid: str) -> Optional[List[str]]:
        """Names of the domains whose definition (live or persistent) names secret ``uuid``."""
        if self.libvirt is None:
            return None
        users = []
        for dom in self.libvirt.listAllDomains(0):
            for flags in (0, 2):  # live, then VIR_DOMAIN_XML_INACTIVE
                try:
                    root = ET.fromstring(dom.XMLDesc(flags))
                except Exception:  # noqa: BLE001 - the domain went away meanwhile
                    continue
                if any((e.get("uuid") or "").lower() == uuid for e in root.iter("secret")):
                    users.append(dom.name())
                    break
        return users

    def _process_of(self, tid: str) -> Optional[str]:
        """The process (thread group) of task ``tid`` (nbd's sysfs ``pid`` names the client thread)."""
        status = self.paths.read(self.paths.procpath(tid, "status"), "") if tid.isdigit() else ""
        for line in (status or "").splitlines():
            if line.startswith("Tgid:"):
                return line.split()[1]
        return None

    def _remove(self, obj: KernelObject) -> None:
        actions: Dict[str, Callable[[KernelObject], object]] = {
            "multipath_map": lambda o: self.multipath.flush(o.name),
            "scsi_disk": lambda o: scsi.remove_device(self.executor, self.paths, o.device or ""),
            "iscsi_session": lambda o: self._logout(o),
            "iscsi_node": lambda o: self.iscsiadm.delete_node(o.ids["iqn"], _portal(o.ids["portal"])),
            "nvme_controller": lambda o: self.paths.write(self.paths.sys("class", "nvme", o.name,
                                                                         "delete_controller"), "1"),
            "rbd_mapping": lambda o: self.paths.write(self.paths.sys("bus", "rbd", "remove"), o.ids["id"]),
            "nbd_mapping": lambda o: self.executor.run(["qemu-nbd", "--disconnect", f"/dev/{o.device}"],
                                                       timeout=60),
            "dm_crypt": lambda o: self.executor.run(["cryptsetup", "close", o.name], timeout=60),
            "libvirt_secret": lambda o: self.libvirt.secretLookupByUUIDString(o.ids["uuid"]).undefine(),
        }
        actions[obj.kind](obj)

    def _logout(self, obj: KernelObject) -> None:
        self.iscsiadm.logout(int(obj.ids["sid"]))
        portal = _portal(obj.ids["portal"])
        if self.iscsiadm.node_files(obj.ids["iqn"], portal):
            self.iscsiadm.delete_node(obj.ids["iqn"], portal)


def _portal(text: str) -> Portal:
    host, port = split_portal(text.split(",")[0])
    return Portal.of(host, int(port or 3260))


def audit(store: Any, **kwargs: Any) -> AuditReport:
    return Auditor(store, **kwargs).audit()


__all__ = ["AuditReport", "Auditor", "KernelObject", "RecordIssue", "audit"]
