"""qemu-storage-daemon: one daemon per volume, its command line, its QMP socket, its end.

A :class:`QsdDaemon` owns one private run directory (0700) holding the daemon's pid file, QMP
socket, the export's mountpoint or socket, and — only while the daemon starts — the 0600 file
its secret object reads. The daemon is started through the :class:`~blocklink.executor.Executor`
with ``--daemonize``: qemu-storage-daemon's parent returns only after every ``--blockdev`` and
``--export`` was set up, so the command's exit status *is* the attach result and its stderr the
reason. Credentials never reach the command line: ``--object secret,file=...`` names the file.

:class:`QmpClient` is a small typed QMP client over the unix socket (greeting, capabilities
negotiation, commands, events); it reads with socket timeouts, never by polling.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from blocklink.errors import DaemonDied, InvalidOption, QmpError
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.masking import Secret, get_logger

LOG = get_logger(__name__)

NODE = "vol"        # the block node every daemon exports
EXPORT = "exp0"     # the export's id
SECRET_ID = "sec0"  # the secret object's id
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL

# glibc serves every aligned allocation of 128 KiB or more with its own mmap(): its dynamic threshold
# never catches up with posix_memalign'd buffers (the alignment padding keeps each one a little above
# the last). The daemon allocates one such buffer per request (NBD server, FUSE export reads), so each
# 1 MiB request paid an mmap, 256 zero-filled page faults and an munmap: profiled, most of the
# daemon's own CPU per MiB. Fixed thresholds keep request buffers up to 4 MiB on the heap. The price
# is memory kept after bursts: an iSCSI daemon at 7 MiB RSS measured 20-35 MiB after bursts of
# concurrent 8 MiB direct writes (heap fragmentation; the trim threshold made no difference), which is
# what librbd daemons already do (librbd's own large allocations raise glibc's dynamic threshold).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=16777216"


# ---------------------------------------------------------------------------------------------
# QMP
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockExportInfo:
    id: str
    type: str
    node_name: str
    shutting_down: bool

    @classmethod
    def from_qmp(cls, d: Mapping[str, Any]) -> "BlockExportInfo":
        return cls(id=str(d["id"]), type=str(d["type"]), node_name=str(d["node-name"]),
                   shutting_down=bool(d.get("shutting-down", False)))


@dataclass(frozen=True)
class BlockNodeInfo:
    node_name: str
    driver: str
    read_only: bool
    virtual_size: int

    @classmethod
    def from_qmp(cls, d: Mapping[str, Any]) -> "BlockNodeInfo":
        return cls(node_name=str(d.get("node-name", "")), driver=str(d.get("drv", "")), read_only=bool(d.get("ro")),
                   virtual_size=int((d.get("image") or {}).get("virtual-size", 0)))


@dataclass(frozen=True)
class QmpEvent:
    name: str
    data: Dict[str, Any] = field(default_factory=dict)


class QmpClient:
    """A QMP session on a unix socket. Use as a context manager; every call has a deadline."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: List[QmpEvent] = []
        self._buf = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            greeting = self._read_message(time.monotonic() + timeout)
            if "QMP" not in greeting:
                raise QmpError("greeting", "ProtocolError", "no QMP greeting")
            self.version = greeting["QMP"].get("version", {}).get("qemu", {})
            self.execute("qmp_capabilities")
        except OSError as e:
            self._sock.close()
            raise QmpError("connect", "SocketError", f"{path}: {e.strerror or e}") from None
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "QmpClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --------------------------------------------------------------------- wire
    def _read_message(self, deadline: float) -> Dict[str, Any]:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError("read", "Timeout", f"no answer on {self.path} within {self.timeout:.1f}s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise QmpError("read", "Disconnected", f"{self.path} closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            msg = json.loads(line)
        except ValueError:
            raise QmpError("read", "ProtocolError", "malformed QMP message") from None
        if not isinstance(msg, dict):
            raise QmpError("read", "ProtocolError", "QMP message is not an object")
        return msg

    def execute(self, command: str, arguments: Optional[Mapping[str, Any]] = None,
                timeout: Optional[float] = None) -> Any:
        """Run ``command``; return its ``return`` value; events that arrive meanwhile are kept."""
        req: Dict[str, Any] = {"execute": command}
        if arguments:
            req["arguments"] = dict(arguments)
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        try:
            self._sock.sendall(json.dumps(req).encode() + b"\n")
            while True:
                msg = self._read_message(deadline)
                if "event" in msg:
                    self.events.append(QmpEvent(str(msg["event"]), dict(msg.get("data") or {})))
                    continue
                if "error" in msg:
                    err = msg["error"]
                    raise QmpError(command, str(err.get("class", "GenericError")), str(err.get("desc", "")))
                if "return" in msg:
                    return msg["return"]
        except OSError as e:
            raise QmpError(command, "SocketError", str(e.strerror or e)) from None

    def wait_event(self, name: str, match: Optional[Mapping[str, Any]] = None,
                   timeout: Optional[float] = None) -> QmpEvent:
        """The first event ``name`` whose data contains ``match`` (already received or coming)."""
        def hit(ev: QmpEvent) -> bool:
            return ev.name == name and all(ev.data.get(k) == v for k, v in (match or {}).items())

        for ev in self.events:
            if hit(ev):
                self.events.remove(ev)
                return ev
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            try:
                msg = self._read_message(deadline)
            except OSError as e:
                raise QmpError(f"wait {name}", "SocketError", str(e.strerror or e)) from None
            if "event" in msg:
                ev = QmpEvent(str(msg["event"]), dict(msg.get("data") or {}))
                if hit(ev):
                    return ev
                self.events.append(ev)

    # --------------------------------------------------------------------- typed commands
    def query_block_exports(self) -> List[BlockExportInfo]:
        return [BlockExportInfo.from_qmp(e) for e in self.execute("query-block-exports")]

    def query_named_block_nodes(self) -> List[BlockNodeInfo]:
        return [BlockNodeInfo.from_qmp(n) for n in self.execute("query-named-block-nodes", {"flat": True})]

    def block_export_del(self, export_id: str, mode: str = "safe") -> None:
        self.execute("block-export-del", {"id": export_id, "mode": mode})

    def block_export_add(self, args: Mapping[str, Any]) -> None:
        self.execute("block-export-add", args)

    def block_resize(self, node_name: str, size: int) -> None:
        self.execute("block_resize", {"node-name": node_name, "size": size})

    def quit(self) -> None:
        self.execute("quit")


# ---------------------------------------------------------------------------------------------
# processes and mounts
# ---------------------------------------------------------------------------------------------

def pid_alive(pid: int, paths: Optional[HostPaths] = None) -> bool:
    """Running (a zombie counts as dead: orphans may be reaped late)."""
    p = paths or HostPaths()
    stat = p.read(p.procpath(str(pid), "stat"))
    if not stat or ")" not in stat:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def pid_cmdline(pid: int, paths: Optional[HostPaths] = None) -> str:
    p = paths or HostPaths()
    raw = p.read_bytes(p.procpath(str(pid), "cmdline")) or b""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def wait_pid_exit(pid: int, timeout: float, paths: Optional[HostPaths] = None) -> bool:
    """Wait for ``pid`` to exit: a pidfd becomes readable then (no polling). True if it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):  # kernel < 5.3: no pidfd
        deadline = time.monotonic() + timeout
        while pid_alive(pid, paths) and time.monotonic() < deadline:
            time.sleep(0.02)  # bounded: fallback for kernels without pidfd_open
        return not pid_alive(pid, paths)
    try:
        deadline = time.monotonic() + timeout
        while pid_alive(pid, paths):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([fd], [], [], left)
        return True
    finally:
        os.close(fd)


def _unescape_mount(field_text: str) -> str:
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and i + 3 < len(field_text) and field_text[i + 1:i + 4].isdigit():
            out.append(chr(int(field_text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def mount_fstype(mountpoint: str, paths: Optional[HostPaths] = None) -> Optional[str]:
    """The filesystem type mounted on ``mountpoint`` ("fuse", ...), from /proc/self/mountinfo."""
    p = paths or HostPaths()
    for line in (p.read(p.procpath("self", "mountinfo"), "") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and len(fields) >= 5 and _unescape_mount(fields[4]) == mountpoint:
            return right.split()[0] if right.split() else ""
    return None


def open_by(path: str, paths: Optional[HostPaths] = None, exclude: Sequence[int] = ()) -> List[int]:
    """PIDs holding ``path`` open (scans /proc/*/fd; unreadable processes are skipped)."""
    p = paths or HostPaths()
    holders = []
    for name in p.listdir(p.procpath()):
        if not name.isdigit() or int(name) in exclude:
            continue
        fd_dir = p.procpath(name, "fd")
        for fd in p.listdir(fd_dir):
            try:
                if os.readlink(os.path.join(fd_dir, fd)) == path:
                    holders.append(int(name))
                    break
            except OSError:
                continue
    return holders


# ---------------------------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DaemonStatus:
    """What :meth:`UserspaceConnector.check_health` found: a live daemon serving its export."""

    pid: int
    export: str
    path: str
    size: int
    read_only: bool
    driver: str
    bridge_pid: Optional[int] = None  # nbdfuse serving the file, if any


def daemon_message(stderr: str) -> str:
    """The daemon's last error line without the option it echoes (``--blockdev {...}: reason``)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else "qemu-storage-daemon failed"
    return text.rsplit("}: ", 1)[-1] if "}: " in text else text.split(": ", 1)[-1]


@dataclass(frozen=True)
class DaemonLayout:
    """The files of one daemon, all inside its private run directory."""

    dir: str

    @property
    def pidfile(self) -> str:
        return os.path.join(self.dir, "qsd.pid")

    @property
    def qmp(self) -> str:
        return os.path.join(self.dir, "qmp.sock")

    @property
    def disk(self) -> str:
        return os.path.join(self.dir, "disk")

    @property
    def nbd(self) -> str:
        return os.path.join(self.dir, "nbd.sock")

    @property
    def vhost(self) -> str:
        return os.path.join(self.dir, "vhost.sock")

    @property
    def secret(self) -> str:
        return os.path.join(self.dir, "secret")

    @property
    def bridge_pidfile(self) -> str:
        return os.path.join(self.dir, "nbdfuse.pid")

    @property
    def bridge_ready(self) -> str:
        return os.path.join(self.dir, "nbdfuse.ready")

    @property
    def bridge_log(self) -> str:
        return os.path.join(self.dir, "nbdfuse.log")

    @property
    def state(self) -> str:
        return os.path.join(self.dir, "state.json")

    def export_path(self, export: str) -> str:
        return {"fuse": self.disk, "nbd": self.nbd, "vhost-user-blk": self.vhost}[export]


@dataclass(frozen=True)
class DaemonSpec:
    """What one daemon serves: a block node (driver options), how it is exported, its secret."""

    blockdev: Dict[str, Any]
    export: str = "fuse"  # "fuse" | "nbd" | "vhost-user-blk"
    read_only: bool = False
    secret: Optional[Secret] = None
    secret_format: str = "raw"  # "raw" (CHAP password) | "base64" (cephx key)
    extra_files: Dict[str, str] = field(default_factory=dict)  # name -> text, non-secret (ceph.conf)


def export_args(export: str, layout: DaemonLayout, read_only: bool) -> Dict[str, Any]:
    """``--export`` / ``block-export-add`` arguments of the daemon's one export."""
    args: Dict[str, Any] = {"type": export, "id": EXPORT, "node-name": NODE, "writable": not read_only}
    if export == "fuse":
        args["mountpoint"] = layout.disk
    elif export == "nbd":
        args["name"] = NODE
    elif export == "vhost-user-blk":
        args["addr"] = {"type": "unix", "path": layout.vhost}
    else:
        raise InvalidOption("export", f"unknown export type {export!r}")
    return args


def build_argv(spec: DaemonSpec, layout: DaemonLayout, binary: str = "qemu-storage-daemon") -> List[str]:
    """The daemon's command line: JSON for objects, nodes and exports; no secret value in it."""
    argv = [binary]
    if spec.secret is not None:
        argv += ["--object", json.dumps({"qom-type": "secret", "id": SECRET_ID, "file": layout.secret,
                                         "format": spec.secret_format})]
    node = dict(spec.blockdev, **{"node-name": NODE})
    if spec.read_only:
        node["read-only"] = True
    argv += ["--blockdev", json.dumps(node)]
    if spec.export == "nbd":
        argv += ["--nbd-server", f"addr.type=unix,addr.path={layout.nbd}"]
    argv += ["--export", json.dumps(export_args(spec.export, layout, spec.read_only)),
             "--chardev", f"socket,id=qmp0,path={layout.qmp},server=on,wait=off", "--monitor", "chardev=qmp0",
             "--pidfile", layout.pidfile, "--daemonize"]
    return argv


def daemon_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """What the daemon's environment gets on top of ours: the malloc thresholds above, followed by
    any ``GLIBC_TUNABLES`` already set (glibc keeps the last value of a tunable named twice, so an
    administrator's own choice wins)."""
    current = (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")
    return {"GLIBC_TUNABLES": f"{MALLOC_TUNABLES}:{current}" if current else MALLOC_TUNABLES}


def signal_pid(pid: int, sig: int, executor: Executor) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # the daemon runs as root through the root helper; we do not
        executor.run(["kill", "-s", signal.Signals(sig).name[3:], str(pid)], check=False)


def stop_pid(pid: int, marker: str, executor: Executor, paths: HostPaths, timeout: float) -> bool:
    """SIGTERM (SIGKILL after ``timeout``) ``pid`` if its command line still names ``marker``
    (a path unique to this attachment). True once it is gone."""
    if not pid_alive(pid, paths) or marker not in pid_cmdline(pid, paths):
        return True  # gone, or the PID now belongs to someone else: never signal that
    signal_pid(pid, signal.SIGTERM, executor)
    if wait_pid_exit(pid, timeout, paths):
        return True
    LOG.warning("pid %d (%s) ignored SIGTERM for %.0fs; killing it", pid, marker, timeout)
    signal_pid(pid, signal.SIGKILL, executor)
    return wait_pid_exit(pid, 5.0, paths)


__all__ = ["QmpClient", "QmpError", "QmpEvent", "BlockExportInfo", "BlockNodeInfo", "DaemonDied", "DaemonLayout",
           "DaemonSpec", "DaemonStatus", "daemon_env", "daemon_message", "build_argv", "export_args", "pid_alive", "wait_pid_exit", "mount_fstype", "open_by", "stop_pid",
           "NODE", "EXPORT", "SECRET_ID", "UNIX_PATH_MAX"]
