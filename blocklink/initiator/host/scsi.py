"""The SCSI layer in sysfs: iSCSI sessions, their hosts and devices, targeted scans and removal.

Everything here reads sysfs through :class:`~blocklink.hostpaths.HostPaths`, so it runs unchanged
on a fake tree (:mod:`blocklink.testing.hosttree`). Sysfs layout relied on (Linux 4.x - 6.x)::

    /sys/class/iscsi_session/sessionN -> ../../devices/platform/hostH/sessionN/iscsi_session/sessionN
        targetname, tpgt, state, target_id, ifacename
    /sys/class/iscsi_connection/connectionN:0/{persistent_address,persistent_port,address,port}
    /sys/devices/platform/hostH/sessionN/targetH:C:T/H:C:T:L/{state,delete,rescan,block/sdX}
    /sys/class/scsi_host/hostH/scan              <- "C T L" (each may be "-")
    /sys/class/scsi_device/H:C:T:L/device        -> the H:C:T:L directory above
    /sys/block/sdX -> ../devices/.../H:C:T:L/block/sdX; size (512-byte sectors), holders/
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import List, Optional

from blocklink import privileged
from blocklink.errors import DeviceBusy
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.masking import get_logger

LOG = get_logger(__name__)

_HCTL_RE = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")
_HOST_RE = re.compile(r"^host(\d+)$")
_SESSION_RE = re.compile(r"^session(\d+)$")


@dataclass(frozen=True, order=True)
class Hctl:
    """A SCSI address: host, channel, target id, LUN (the Linux LUN number)."""

    host: int
    channel: int
    target: int
    lun: int

    @classmethod
    def parse(cls, text: str) -> Optional["Hctl"]:
        m = _HCTL_RE.match(text.strip())
        return cls(*(int(g) for g in m.groups())) if m else None

    def __str__(self) -> str:
        return f"{self.host}:{self.channel}:{self.target}:{self.lun}"


@dataclass(frozen=True)
class ScsiDevice:
    hctl: Hctl
    name: Optional[str]  # block device name (sdX) once the disk driver bound, else None
    state: str  # "running", "offline", "blocked", ...


@dataclass(frozen=True)
class IscsiSession:
    """A kernel iSCSI session as sysfs shows it (no iscsiadm needed)."""

    sid: int
    iqn: str
    address: str  # persistent (configured) portal address, no brackets
    port: int
    tpgt: Optional[int]
    host: Optional[int]
    target_id: Optional[int]
    state: str  # LOGGED_IN, FAILED, FREE
    iface: str = "default"

    @property
    def portal(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    def matches(self, iqn: str, host: str, port: int) -> bool:
        return self.iqn == iqn and self.port == port and same_address(self.address, host)


def same_address(a: str, b: str) -> bool:
    """Address equality that treats IPv6 spellings (``::1`` vs ``0:0::1``) and host-name case alike."""
    a, b = a.strip("[]"), b.strip("[]")
    try:
        return ipaddress.ip_address(a.split("%")[0]) == ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return a.lower() == b.lower()


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# iSCSI sessions
# ---------------------------------------------------------------------------------------------

def _host_of(real: str) -> Optional[int]:
    for part in real.split(os.sep):
        m = _HOST_RE.match(part)
        if m:
            return int(m.group(1))
    return None


def session_dir(paths: HostPaths, sid: int) -> Optional[str]:
    """The session's device directory (``.../hostH/sessionN``) holding its target and LUN dirs."""
    link = paths.sys("class", "iscsi_session", f"session{sid}")
    if not paths.exists(link):
        return None
    real = paths.realpath(link)  # .../hostH/sessionN/iscsi_session/sessionN
    return os.path.dirname(os.path.dirname(real))


def read_session(paths: HostPaths, sid: int) -> Optional[IscsiSession]:
    base = paths.sys("class", "iscsi_session", f"session{sid}")
    iqn = paths.read(os.path.join(base, "targetname"))
    if not iqn:
        return None
    conn = paths.sys("class", "iscsi_connection", f"connection{sid}:0")
    address = paths.read(os.path.join(conn, "persistent_address")) or paths.read(os.path.join(conn, "address")) or ""
    port = _int(paths.read(os.path.join(conn, "persistent_port")) or paths.read(os.path.join(conn, "port")))
    sdir = session_dir(paths, sid)
    return IscsiSession(
        sid=sid, iqn=iqn, address=address, port=port if port is not None else 3260,
        tpgt=_int(paths.read(os.path.join(base, "tpgt"))),
        host=_host_of(sdir) if sdir else None,
        target_id=_int(paths.read(os.path.join(base, "target_id"))),
        state=paths.read(os.path.join(base, "state"), "") or "",
        iface=paths.read(os.path.join(base, "ifacename"), "default") or "default")


def iscsi_sessions(paths: HostPaths) -> List[IscsiSession]:
    out = []
    for name in paths.listdir(paths.sys("class", "iscsi_session")):
        if name.startswith("session") and name[7:].isdigit():
            s = read_session(paths, int(name[7:]))
            if s is not None:
                out.append(s)
    return out


def find_session(paths: HostPaths, iqn: str, host: str, port: int) -> Optional[IscsiSession]:
    for s in sessions_of(paths, iqn):
        if s.matches(iqn, host, port):
            return s
    return None


def sessions_of(paths: HostPaths, iqn: str) -> List[IscsiSession]:
    """The sessions to target ``iqn``: one read (the target name) per other session on the host,
    instead of the whole of each (what made N concurrent detaches cost O(N) sessions each, several
    times over)."""
    out = []
    base = paths.sys("class", "iscsi_session")
    for name in paths.listdir(base):
        if name.startswith("session") and name[7:].isdigit() \
                and paths.read(os.path.join(base, name, "targetname")) == iqn:
            s = read_session(paths, int(name[7:]))
            if s is not None and s.iqn == iqn:  # (a session ending in between)
                out.append(s)
    return out


def device_session(paths: HostPaths, name: str) -> Optional[int]:
    """The id of the iSCSI session that block device ``name`` is reached over, from where its SCSI
    device sits in sysfs (``.../hostH/sessionN/targetH:C:T/H:C:T:L``); None for a disk of another
    transport or one that is gone."""
    link = paths.sys("block", name, "device")
    if not paths.exists(link):
        return None
    for part in paths.realpath(link).split(os.sep)[::-1]:
        m = _SESSION_RE.match(part)
        if m:
            return int(m.group(1))
    return None


def session_devices(paths: HostPaths, sid: int) -> List[ScsiDevice]:
    """Every SCSI device (any LUN) under the session, with its block name when bound."""
    sdir = session_dir(paths, sid)
    if sdir is None:
        return []
    out = []
    for tdir in paths.glob(sdir, "target"):
        for entry in paths.listdir(tdir):
            hctl = Hctl.parse(entry)
            if hctl is not None:
                out.append(_device(paths, hctl, os.path.join(tdir, entry)))
    return sorted(out, key=lambda d: d.hctl)


def _device(paths: HostPaths, hctl: Hctl, ddir: str) -> ScsiDevice:
    names = paths.listdir(os.path.join(ddir, "block"))
    return ScsiDevice(hctl, names[0] if names else None, paths.read(os.path.join(ddir, "state"), "") or "")


# ---------------------------------------------------------------------------------------------
# devices by address / by name
# ---------------------------------------------------------------------------------------------

def scsi_device(paths: HostPaths, hctl: Hctl) -> Optional[ScsiDevice]:
    ddir = paths.sys("class", "scsi_device", str(hctl), "device")
    if not paths.exists(ddir):
        return None
    return _device(paths, hctl, ddir)


def device_hctl(paths: HostPaths, name: str) -> Optional[Hctl]:
    """The SCSI address of block device ``name`` (``sda``); None for non-SCSI devices."""
    link = paths.sys("block", name, "device")
    if not paths.exists(link):
        return None
    return Hctl.parse(os.path.basename(paths.realpath(link)))


def size_bytes(paths: HostPaths, name: str) -> Optional[int]:
    sectors = _int(paths.read(paths.sys("block", name, "size")))
    return None if sectors is None else sectors * 512


def holders(paths: HostPaths, name: str) -> List[str]:
    return paths.listdir(paths.sys("block", name, "holders"))


def block_exists(paths: HostPaths, name: str) -> bool:
    return paths.exists(paths.sys("block", name))


# ---------------------------------------------------------------------------------------------
# actions
# ---------------------------------------------------------------------------------------------

def scan(paths: HostPaths, host: int, channel: object = "-", target: object = "-", lun: object = "-") -> None:
    """Ask the host to probe one address (``"C T L"``, each may be ``-``). Synchronous for SCSI
    devices: when this returns, the device directory exists if the target reports the LUN."""
    LOG.debug("scan host%d: %s %s %s", host, channel, target, lun)
    paths.write(paths.sys("class", "scsi_host", f"host{host}", "scan"), f"{channel} {target} {lun}")


def rescan(paths: HostPaths, name: str) -> None:
    """Re-read the device's capacity and inquiry data (after the target resized the LUN)."""
    paths.write(paths.sys("block", name, "device", "rescan"), "1")


def flush(executor: Executor, paths: HostPaths, name: str, timeout: float = 120.0) -> None:
    """Write the device's dirty buffers out; raises :class:`DeviceBusy` (or, through ``blockdev``,
    :class:`CommandFailed`) if it cannot.

    On the real host this is the ``BLKFLSBUF`` ioctl that ``blockdev --flushbufs`` makes, made by the
    privileged entry point (here as root, else in the privsep daemon) instead of a child process: a
    fork of this process plus an exec per detached disk was a good part of a detach. A tree of
    another root (tests) goes through ``blockdev`` on the executor."""
    if paths.dev == privileged.DEV_ROOT and paths.writer is privileged.PRIVILEGED:
        try:
            privileged.flush_block(paths.devpath(name))
        except OSError as e:
            raise DeviceBusy(f"/dev/{name}", f"cannot flush its buffers: {e.strerror or e}") from None
        return
    executor.run(["blockdev", "--flushbufs", paths.to_host(paths.devpath(name))], timeout=timeout)


def delete(paths: HostPaths, hctl: Hctl) -> bool:
    """Remove the SCSI device from the host (the target keeps the LUN). False if already gone."""
    target = paths.sys("class", "scsi_device", str(hctl), "device", "delete")
    try:
        paths.write(target, "1")
    except FileNotFoundError:
        return False
    return True


def remove_device(executor: Executor, paths: HostPaths, name: str, *, flush_first: bool = True,
                  timeout: float = 120.0) -> None:
    """Flush (unless told not to), then delete a SCSI block device. A failed flush raises and
    leaves the device in place: removing a device with unwritten data would lose it."""
    hctl = device_hctl(paths, name)
    if hctl is None:
        return
    if flush_first:
        flush(executor, paths, name, timeout)
    LOG.debug("deleting SCSI device %s (%s)", name, hctl)
    delete(paths, hctl)


__all__ = ["Hctl", "ScsiDevice", "IscsiSession", "same_address", "session_dir", "read_session",
           "iscsi_sessions", "find_session", "sessions_of", "device_session", "session_devices", "scsi_device",
           "device_hctl", "size_bytes", "holders", "block_exists", "scan", "rescan", "flush", "delete", "remove_device"]
