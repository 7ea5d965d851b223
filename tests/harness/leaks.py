"""Leak counters: what an attach or detach can leave behind, counted before and after.

::

    leaks = LeakChecker(run_dirs=[run_dir], tgt_admins=[tgtd.admin], ceph=cluster, images=["volume-x"],
                        libvirt=libvirt_host.connection, store=store)
    before = leaks.snapshot()
    ... attach, detach (or fail) ...
    leaks.assert_none_since(before)          # raises LeakFound naming every new item

A :class:`Snapshot` maps a probe name to the set of identifiers it saw (a session's SID and
IQN, a mount point, a PID and its command line...), so a diff says exactly *what* is new, not
only how many. Kernel probes (iSCSI sessions, ``/dev/sd*``, dm maps, krbd mappings, LIO, nvmet,
NVMe controllers) read sysfs/configfs through :class:`~blocklink.hostpaths.HostPaths` and count
everything (the host kernel has none of these; a test guest is exclusive to its tests). Probes
over shared resources are scoped so concurrent users of the machine are not counted: processes
and FUSE mounts only when their command line / mount point names one of ``run_dirs`` (or a
``process_markers`` string), tgtd state only on the given daemons, watchers only on the given
images, libvirt secrets and disks only on the given connection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence

from blocklink.errors import BlocklinkError
from blocklink.hostpaths import HostPaths

Probe = Callable[[], Iterable[str]]

#: processes an attach may start (userspace attach, rbd-nbd, the tgtadm CLI)
DAEMON_NAMES = ("qemu-storage-daemon", "nbdfuse", "rbd-nbd", "tgtadm", "iscsiadm")


class LeakFound(BlocklinkError):
    """Something new is left since a snapshot; ``leaks`` maps a probe name to the new items."""

    def __init__(self, leaks: Mapping[str, Sequence[str]], when: str = "") -> None:
        self.leaks = {k: list(v) for k, v in leaks.items() if v}
        self.when = when
        detail = "; ".join(f"{k}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}" for k, v in self.leaks.items())
        super().__init__(f"leaked{' ' + when if when else ''}: {detail}")


@dataclass(frozen=True)
class Snapshot:
    items: Mapping[str, FrozenSet[str]] = field(default_factory=dict)

    def counts(self) -> Dict[str, int]:
        return {k: len(v) for k, v in sorted(self.items.items())}

    def new_since(self, before: "Snapshot") -> Dict[str, List[str]]:
        """Identifiers present now that ``before`` did not have, per probe (empty probes omitted)."""
        out: Dict[str, List[str]] = {}
        for name, now in self.items.items():
            new = sorted(now - before.items.get(name, frozenset()))
            if new:
                out[name] = new
        return out


def _read_cmdline(paths: HostPaths, pid: str) -> str:
    try:
        with open(paths.procpath(pid, "cmdline"), "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _alive(paths: HostPaths, pid: str) -> bool:
    stat = paths.read(paths.procpath(pid, "stat"), "") or ""
    rest = stat.rsplit(")", 1)[-1].split()
    return bool(rest) and rest[0] not in ("Z", "X")


def _unescape(field_text: str) -> str:
    return (field_text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


class LeakChecker:
    """Probes for every kind of leftover; only the scoped ones that were given are active."""

    def __init__(self, paths: Optional[HostPaths] = None, *, run_dirs: Sequence[str] = (),
                 process_markers: Sequence[str] = (), tgt_admins: Sequence[Any] = (),
                 tgt_config_dirs: Sequence[str] = (), ceph: Any = None, images: Sequence[str] = (),
                 libvirt: Any = None, domains: Sequence[str] = (), store: Any = None,
                 kernel: bool = True) -> None:
        self.paths = paths or HostPaths()
        self.run_dirs = [os.path.realpath(d) for d in run_dirs]
        self.process_markers = list(process_markers) + self.run_dirs
        self.probes: Dict[str, Probe] = {}
        if kernel:
            self.probes.update({
                "iscsi_sessions": self.iscsi_sessions, "scsi_disks": self.scsi_disks, "dm_maps": self.dm_maps,
                "rbd_mappings": self.rbd_mappings, "nbd_devices": self.nbd_devices, "lio_targets": self.lio_targets,
                "nvmet_subsystems": self.nvmet_subsystems, "nvme_controllers": self.nvme_controllers})
        if self.process_markers:
            self.probes["processes"] = self.processes
        if self.run_dirs:
            self.probes["fuse_mounts"] = self.fuse_mounts
            self.probes["run_dir_files"] = self.run_dir_files
        for i, admin in enumerate(tgt_admins):
            self.probes[f"tgt[{i}]"] = self._tgt_probe(admin)
        if tgt_config_dirs:
            self.probes["tgt_records"] = lambda: self.files_in(tgt_config_dirs)
        if ceph is not None and images:
            self.probes["rbd_watchers"] = lambda: self.rbd_watchers(ceph, images)
        if libvirt is not None:
            self.probes["libvirt_secrets"] = lambda: self.libvirt_secrets(libvirt)
            self.probes["libvirt_disks"] = lambda: self.libvirt_disks(libvirt, domains)
        if store is not None:
            self.probes["records_in_progress"] = lambda: self.records_in_progress(store)

    def _tgt_probe(self, admin: Any) -> Probe:
        return lambda: self.tgt_state(admin)

    def add_probe(self, name: str, probe: Probe) -> None:
        self.probes[name] = probe

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> Snapshot:
        return Snapshot({name: frozenset(probe()) for name, probe in self.probes.items()})

    def new_since(self, before: Snapshot) -> Dict[str, List[str]]:
        return self.snapshot().new_since(before)

    def assert_none_since(self, before: Snapshot, when: str = "") -> None:
        leaks = self.new_since(before)
        if leaks:
            raise LeakFound(leaks, when)

    # ------------------------------------------------------------------ kernel objects (sysfs/configfs)
    def iscsi_sessions(self) -> List[str]:
        base = self.paths.sys("class", "iscsi_session")
        return [f"{s}:{self.paths.read(os.path.join(base, s, 'targetname'), '?')}" for s in self.paths.listdir(base)]

    def scsi_disks(self) -> List[str]:
        return [n for n in self.paths.listdir(self.paths.sys("block")) if n.startswith("sd")]

    def dm_maps(self) -> List[str]:
        base = self.paths.sys("block")
        return [f"{n}:{self.paths.read(os.path.join(base, n, 'dm', 'name'), '?')}"
                for n in self.paths.listdir(base) if n.startswith("dm-")]

    def rbd_mappings(self) -> List[str]:
        base = self.paths.sys("bus", "rbd", "devices")
        return [f"rbd{d}:{self.paths.read(os.path.join(base, d, 'pool'), '?')}/"
                f"{self.paths.read(os.path.join(base, d, 'name'), '?')}" for d in self.paths.listdir(base)]

    def nbd_devices(self) -> List[str]:
        """nbd devices with a connected client (``pid`` exists while connected)."""
        base = self.paths.sys("block")
        return [n for n in self.paths.listdir(base) if n.startswith("nbd")
                and self.paths.exists(os.path.join(base, n, "pid"))]

    def lio_targets(self) -> List[str]:
        out = []
        cfg = self.paths.sys("kernel", "config", "target")
        for fabric in ("iscsi", "fc", "loopback", "vhost"):
            out += [f"{fabric}:{t}" for t in self.paths.listdir(os.path.join(cfg, fabric))
                    if t not in ("discovery_auth", "lio_version") and not t.startswith(".")]
        core = os.path.join(cfg, "core")
        for hba in self.paths.listdir(core):
            if hba.startswith(("fileio_", "iblock_", "rd_mcp_", "pscsi_", "user_")):
                out += [f"backstore:{hba}/{s}" for s in self.paths.listdir(os.path.join(core, hba))
                        if s not in ("hba_info", "hba_mode")]
        return out

    def nvmet_subsystems(self) -> List[str]:
        base = self.paths.sys("kernel", "config", "nvmet")
        return ([f"subsystem:{s}" for s in self.paths.listdir(os.path.join(base, "subsystems"))]
                + [f"port:{p}" for p in self.paths.listdir(os.path.join(base, "ports"))]
                + [f"host:{h}" for h in self.paths.listdir(os.path.join(base, "hosts"))])

    def nvme_controllers(self) -> List[str]:
        base = self.paths.sys("class", "nvme-fabrics", "ctl")
        return [f"{c}:{self.paths.read(os.path.join(base, c, 'subsysnqn'), '?')}"
                for c in self.paths.listdir(base) if c.startswith("nvme")]

    # ------------------------------------------------------------------ scoped host objects
    def processes(self) -> List[str]:
        """Live processes whose command line names a run dir or marker (PID + command, shortened)."""
        out = []
        me = str(os.getpid())
        for pid in self.paths.listdir(self.paths.proc):
            if not pid.isdigit() or pid == me:
                continue
            cmd = _read_cmdline(self.paths, pid)
            if cmd and any(m in cmd for m in self.process_markers) and _alive(self.paths, pid):
                out.append(f"{pid}:{cmd[:160]}")
        return out

    def fuse_mounts(self) -> List[str]:
        text = self.paths.read(self.paths.procpath("self", "mounts"), "") or ""
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            point = _unescape(parts[1])
            if parts[2].startswith("fuse") and any(point == d or point.startswith(d + os.sep) for d in self.run_dirs):
                out.append(point)
        return out

    def run_dir_files(self) -> List[str]:
        return self.files_in(self.run_dirs, skip=("locks",))

    @staticmethod
    def files_in(dirs: Iterable[str], skip: Sequence[str] = ()) -> List[str]:
        """Every file and directory below ``dirs`` (lock files of oslo's lockutils excepted)."""
        out = []
        for d in dirs:
            for root, subdirs, files in os.walk(d):
                subdirs[:] = [s for s in subdirs if not (root == d and s in skip)]
                rel = os.path.relpath(root, d)
                out += [os.path.normpath(os.path.join(d, rel, n)) for n in subdirs + files]
        return out

    @staticmethod
    def tgt_state(admin: Any) -> List[str]:
        """Targets, LUNs, ACLs, account bindings and I_T nexuses on one tgtd; accounts too."""
        out = []
        for t in admin.show_targets():
            out.append(f"target:{t.iqn}")
            out += [f"lun:{t.iqn}:{n}" for n in t.luns if n != 0]
            out += [f"acl:{t.iqn}:{a}" for a in t.acl_names + t.acl_addresses]
            out += [f"account:{t.iqn}:{a}" for a in t.incoming + t.outgoing]
            out += [f"session:{t.iqn}:{s.sid}:{s.initiator}" for s in t.sessions]
        out += [f"user:{u}" for u in admin.accounts()]
        return out

    @staticmethod
    def rbd_watchers(ceph: Any, images: Sequence[str]) -> List[str]:
        out = []
        for image in images:
            try:
                watchers = ceph.watchers(image)
            except Exception as e:  # noqa: BLE001 - an image that is gone has no watchers
                if type(e).__name__ == "ImageNotFound" or "No such file" in str(e) or "(2)" in str(e):
                    continue
                raise
            out += [f"{image}:{w.get('address', '?')}:{w.get('client', '?')}" for w in watchers]
        return out

    @staticmethod
    def libvirt_secrets(conn: Any) -> List[str]:
        conn = getattr(conn, "connection", conn)
        return list(conn.listSecrets())

    @staticmethod
    def libvirt_disks(conn: Any, domains: Sequence[str] = ()) -> List[str]:
        """Disks of the given domains (all running domains when none is named), from live XML."""
        import xml.etree.ElementTree as ET

        conn = getattr(conn, "connection", conn)
        doms = [conn.lookupByName(n) for n in domains] if domains else conn.listAllDomains()
        out = []
        for dom in doms:
            root = ET.fromstring(dom.XMLDesc(0))
            for disk in root.findall("./devices/disk"):
                tgt = disk.find("target")
                src = disk.find("source")
                what = "" if src is None else (src.get("dev") or src.get("file") or src.get("name") or "")
                out.append(f"{dom.name()}:{'' if tgt is None else tgt.get('dev')}:{what}")
        return out

    @staticmethod
    def records_in_progress(store: Any) -> List[str]:
        return [f"{a.id}:{a.volume_id}:{a.status}" for a in store.list() if a.status in ("attaching", "detaching")]


def soak(name: str, cycles: int, cycle: Callable[[int], None], checker: LeakChecker) -> List[float]:
    """Run ``cycle(0..cycles-1)``, comparing ``checker``'s probes with a snapshot taken before the
    first cycle after every one: a leak raises :class:`LeakFound` naming the cycle, and so does (as an
    AssertionError) a cycle that fails. Returns each cycle's wall time in seconds."""
    import time

    before = checker.snapshot()
    times: List[float] = []
    for i in range(cycles):
        t0 = time.monotonic()
        try:
            cycle(i)
        except Exception as e:
            raise AssertionError(f"{name}: cycle {i + 1} of {cycles} failed: {type(e).__name__}: {e}") from e
        times.append(time.monotonic() - t0)
        leaks = checker.new_since(before)
        if leaks:
            raise LeakFound(leaks, f"after cycle {i + 1} of {name}")
    return times


__all__ = ["DAEMON_NAMES", "LeakChecker", "LeakFound", "Snapshot", "soak"]
