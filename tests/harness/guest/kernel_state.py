"""What storage state a test left in the kernel, read from sysfs/configfs, and a best-effort cleanup.

The guest's ``leak_check`` fixture takes a :func:`snapshot` before and after each test: anything
new afterwards (an iSCSI session, a SCSI disk, a device-mapper map, an rbd or nbd mapping, an NVMe
controller, a loop device, a LIO or nvmet object) is a leak; :func:`cleanup` then removes what it
can so the next test starts clean.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, fields
from typing import Callable, List, Tuple

from blocklink.hostpaths import HostPaths

# fabric-level entries of /sys/kernel/config/target/<fabric> that are not targets
_FABRIC_NON_TARGETS = {"discovery_auth"}
_HBA_NON_OBJECTS = {"hba_info", "hba_mode"}


@dataclass(frozen=True)
class KernelState:
    iscsi_sessions: Tuple[str, ...] = ()   # session1, ...
    scsi_disks: Tuple[str, ...] = ()       # sda, ...
    dm_maps: Tuple[str, ...] = ()          # map names
    rbd_mappings: Tuple[str, ...] = ()     # "0 volumes/volume-x" (id, pool/image)
    nbd_devices: Tuple[str, ...] = ()      # connected nbdN
    nvme_controllers: Tuple[str, ...] = ()
    nvme_subsystems: Tuple[str, ...] = ()  # nvme-subsysN (one left without controllers is held open)
    loop_devices: Tuple[str, ...] = ()     # loopN with a backing file
    lio_objects: Tuple[str, ...] = ()      # "iscsi/<iqn>", "core/fileio_0/disk0"
    nvmet_objects: Tuple[str, ...] = ()    # "subsystems/<nqn>", "ports/1", "hosts/<nqn>"

    def items(self) -> List[str]:
        return [f"{f.name}: {v}" for f in fields(self) for v in getattr(self, f.name)]

    def new_since(self, before: "KernelState") -> "KernelState":
        return KernelState(**{f.name: tuple(v for v in getattr(self, f.name) if v not in getattr(before, f.name))
                              for f in fields(self)})

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


def snapshot(paths: HostPaths = HostPaths()) -> KernelState:
    p = paths
    block = p.sys("block")
    disks = tuple(n for n in p.listdir(block) if n.startswith("sd"))
    dms = tuple(p.read(os.path.join(block, n, "dm", "name")) or n for n in p.listdir(block) if n.startswith("dm-"))
    nbd = tuple(n for n in p.listdir(block) if n.startswith("nbd") and p.exists(os.path.join(block, n, "pid")))
    loops = tuple(n for n in p.listdir(block)
                  if n.startswith("loop") and p.exists(os.path.join(block, n, "loop", "backing_file")))
    rbd_base = p.sys("bus", "rbd", "devices")
    rbds = tuple(f"{i} {p.read(os.path.join(rbd_base, i, 'pool'))}/{p.read(os.path.join(rbd_base, i, 'name'))}"
                 for i in p.listdir(rbd_base))
    sessions = tuple(p.listdir(p.sys("class", "iscsi_session")))
    nvme = tuple(p.listdir(p.sys("class", "nvme")))
    nvme_subsys = tuple(p.listdir(p.sys("class", "nvme-subsystem")))
    target = p.sys("kernel", "config", "target")
    lio: List[str] = []
    for fabric in p.listdir(target):
        fdir = os.path.join(target, fabric)
        if not os.path.isdir(fdir):
            continue
        if fabric == "core":
            for hba in p.listdir(fdir):
                hdir = os.path.join(fdir, hba)
                if hba == "alua" or not os.path.isdir(hdir):
                    continue
                lio += [f"core/{hba}/{so}" for so in p.listdir(hdir)
                        if so not in _HBA_NON_OBJECTS and os.path.isdir(os.path.join(hdir, so))]
        else:
            lio += [f"{fabric}/{t}" for t in p.listdir(fdir)
                    if t not in _FABRIC_NON_TARGETS and os.path.isdir(os.path.join(fdir, t))]
    nvmet_base = p.sys("kernel", "config", "nvmet")
    nvmet = [f"{kind}/{n}" for kind in ("subsystems", "ports", "hosts")
             for n in p.listdir(os.path.join(nvmet_base, kind))]
    return KernelState(iscsi_sessions=sessions, scsi_disks=disks, dm_maps=dms, rbd_mappings=rbds,
                       nbd_devices=nbd, nvme_controllers=nvme, nvme_subsystems=nvme_subsys, loop_devices=loops, lio_objects=tuple(lio),
                       nvmet_objects=tuple(nvmet))


def _cmd(argv: List[str], errors: List[str], timeout: float = 60) -> None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        errors.append(f"{argv[0]}: {e}")
        return
    if res.returncode != 0:
        errors.append(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()[-300:]}")


def _write(path: str, data: str, errors: List[str]) -> None:
    try:
        with open(path, "w") as f:
            f.write(data)
    except OSError as e:
        errors.append(f"{path}: {e}")


def cleanup(state: KernelState, paths: HostPaths = HostPaths()) -> List[str]:
    """Remove what ``state`` lists, top of the stack first; returns what could not be removed."""
    errors: List[str] = []
    if state.dm_maps:
        _cmd(["dmsetup", "remove_all", "--force"], errors)
    if state.iscsi_sessions:
        _cmd(["iscsiadm", "-m", "node", "--logoutall=all"], errors)
    for dev in state.nbd_devices:
        _cmd(["rbd-nbd", "unmap", f"/dev/{dev}"], errors)
    for entry in state.rbd_mappings:
        dev_id = entry.split()[0]
        remove = paths.sys("bus", "rbd", "remove_single_major")
        if not os.path.exists(remove):
            remove = paths.sys("bus", "rbd", "remove")
        _write(remove, f"{dev_id} force", errors)
    if state.nvme_controllers:
        _cmd(["nvme", "disconnect-all"], errors)
    for disk in state.scsi_disks:
        delete = paths.sys("block", disk, "device", "delete")
        if os.path.exists(delete):
            _write(delete, "1", errors)
    for loop in state.loop_devices:
        _cmd(["losetup", "-d", f"/dev/{loop}"], errors)
    if state.lio_objects:
        try:
            import warnings

            from rtslib_fb import RTSRoot  # lazy: only the guest has LIO

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                RTSRoot().clear_existing(confirm=True)
        except Exception as e:  # rtslib raises its own RTSLibError and plain OSErrors
            errors.append(f"clearing LIO: {e}")
    if state.nvmet_objects:
        clear_nvmet(paths.sys("kernel", "config", "nvmet"), errors)
    left = snapshot(paths)
    errors += [f"still present: {i}" for i in KernelState(**{f.name: tuple(
        v for v in getattr(left, f.name) if v in getattr(state, f.name)) for f in fields(state)}).items()]
    return errors


def clear_nvmet(base: str, errors: List[str]) -> None:
    """Tear down an nvmet configfs tree: links first, then namespaces, subsystems, ports, hosts."""
    def ls(*parts: str) -> List[str]:
        return HostPaths.listdir(os.path.join(base, *parts))

    def undo(fn: Callable[[str], None], path: str) -> None:
        try:
            fn(path)
        except OSError as e:
            errors.append(f"{path}: {e}")

    for port in ls("ports"):
        for sub in ls("ports", port, "subsystems"):
            undo(os.unlink, os.path.join(base, "ports", port, "subsystems", sub))
        for ref in ls("ports", port, "referrals"):
            undo(os.rmdir, os.path.join(base, "ports", port, "referrals", ref))
    for sub in ls("subsystems"):
        for host in ls("subsystems", sub, "allowed_hosts"):
            undo(os.unlink, os.path.join(base, "subsystems", sub, "allowed_hosts", host))
        for ns in ls("subsystems", sub, "namespaces"):
            nsdir = os.path.join(base, "subsystems", sub, "namespaces", ns)
            _write(os.path.join(nsdir, "enable"), "0", errors)
            undo(os.rmdir, nsdir)
        undo(os.rmdir, os.path.join(base, "subsystems", sub))
    for port in ls("ports"):
        undo(os.rmdir, os.path.join(base, "ports", port))
    for host in ls("hosts"):
        undo(os.rmdir, os.path.join(base, "hosts", host))
