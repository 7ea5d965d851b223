"""A real, throwaway tgtd (userspace iSCSI target) for tests.

::

    with TgtDaemon.start() as tgt:                       # portal 127.0.0.1:<free port>
        target = tgt.target(backing_dir=tmpdir)          # a TgtTarget on this daemon
        export = target.create_export("vol1", size=64 << 20)
        info = target.initialize_connection("vol1", {"host": "h", "initiator": INITIATOR})

    net = NetnsPair.create()
    tgt = TgtDaemon.start(portal=f"{net.target_ip}:3260", netns=net.target_ns)   # inside a namespace
    ...; tgt.stop(); net.destroy()

Each daemon gets its own control port (``tgtd -C``, socket ``/run/tgtd/socket.<port>``), so
several coexist; ``tgtadm -C <port>`` and :class:`~blocklink.target.tgtadm.TgtAdmin` reach it.
:meth:`TgtDaemon.stop` deletes its targets (``--force``), asks tgtd to exit, and falls back to
SIGKILL by PID (tgtd ignores SIGTERM). Logs and export records live in :attr:`directory`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, List, Optional

from blocklink.connection import Portal
from blocklink.errors import DeviceNotFound, TargetError
from blocklink.initiator.host.wait import wait_for
from blocklink.target.tgtadm import MODE_PORTAL, OP_SHOW, SOCKET_DIR, TgtAdmin

_PORT_RANGE = (20000, 32000)  # tgtd's control port is a C short
_START_TRIES = 8


class TgtStartError(TargetError):
    pass


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _control_port_free(port: int, socket_dir: str) -> bool:
    """Whether no tgtd holds ``socket.<port>.lock`` (tgtd takes a lockf() lock on it)."""
    path = os.path.join(socket_dir, f"socket.{port}.lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)  # closing drops our probe lock
    return True


@dataclass
class TgtDaemon:
    pid: int
    control_port: int
    portal: str
    netns: Optional[str]
    directory: str
    socket_dir: str = SOCKET_DIR
    _proc: Optional["subprocess.Popen[bytes]"] = field(default=None, repr=False)
    _own_dir: bool = field(default=True, repr=False)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, portal: Optional[str] = None, control_port: Optional[int] = None, netns: Optional[str] = None,
              *, directory: Optional[str] = None, timeout: float = 15.0) -> "TgtDaemon":
        """Start ``tgtd -f -C <port> --iscsi portal=<portal>`` (inside ``netns`` if given).

        ``portal`` defaults to ``127.0.0.1:<free port>`` (``<ip>:3260`` is the usual choice inside a
        namespace); ``control_port`` to a free one in 20000-32000.
        """
        if portal is None and netns is not None:
            raise TgtStartError("tgtd", "give the portal address to use inside the namespace")
        auto_portal = portal is None
        if portal is not None:
            Portal.parse(portal, "portal", TgtStartError)  # type: ignore[arg-type]
        own = directory is None
        d = directory or tempfile.mkdtemp(prefix="blocklink-tgtd.")
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.makedirs(SOCKET_DIR, mode=0o755, exist_ok=True)
        last = ""
        for _ in range(_START_TRIES):
            port = control_port
            if port is None:
                port = _PORT_RANGE[0] + secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0])
                if not _control_port_free(port, SOCKET_DIR):
                    continue
            address = f"127.0.0.1:{free_tcp_port()}" if auto_portal else Portal.parse(portal).address
            try:
                return cls._spawn(address, port, netns, d, own, timeout)
            except TgtStartError as e:
                last = e.reason
                retry = ("another tgtd" in last and control_port is None) or ("unable to bind" in last and auto_portal)
                if not retry:
                    break
        if own:
            shutil.rmtree(d, ignore_errors=True)
        raise TgtStartError("tgtd", last or "no free control port found")

    @classmethod
    def _spawn(cls, portal: str, port: int, netns: Optional[str], d: str, own: bool,
               timeout: float) -> "TgtDaemon":
        argv = ["tgtd", "-f", "-C", str(port), "--iscsi", f"portal={portal}"]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]  # ip execs tgtd: same PID
        log_path = os.path.join(d, f"tgtd-{port}.log")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True)
        daemon = cls(pid=proc.pid, control_port=port, portal=portal, netns=netns, directory=d, _proc=proc,
                     _own_dir=own)
        admin = daemon.admin

        def ready() -> Optional[bool]:
            if proc.poll() is not None:
                raise TgtStartError("tgtd", f"exited with {proc.returncode}: {daemon.log_tail()}")
            if not admin.ready():
                return None
            listening = admin.request(MODE_PORTAL, OP_SHOW)  # tgtd falls back to 0.0.0.0:3260 on bind errors
            if f"Portal: {portal}," not in listening:
                raise TgtStartError("tgtd", f"unable to bind portal {portal}: {daemon.log_tail()}")
            return True

        try:
            wait_for(ready, timeout=timeout, watch=[SOCKET_DIR], uevents=False, what="tgtd", recheck=0.05)
        except DeviceNotFound:
            daemon._kill()
            raise TgtStartError("tgtd", f"not ready within {timeout}s: {daemon.log_tail()}") from None
        except BaseException:
            daemon._kill()
            raise
        return daemon

    def restart(self, timeout: float = 15.0) -> "TgtDaemon":
        """Stop tgtd and start a fresh one on the same portal and control port (all targets lost)."""
        self.stop(remove_directory=False)
        new = self._spawn(self.portal, self.control_port, self.netns, self.directory, self._own_dir, timeout)
        self.pid, self._proc = new.pid, new._proc
        return self

    def stop(self, remove_directory: bool = True) -> None:
        if self._proc is not None and self._proc.poll() is None:
            admin = self.admin
            try:
                for t in admin.show_targets():
                    admin.delete_target(t.tid, force=True)
                admin.shutdown()
            except TargetError:
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
        if self._proc is not None:
            self._remove_socket()
        if remove_directory and self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
            self._remove_socket()  # it was running, so the socket was its own

    def _remove_socket(self) -> None:
        for suffix in ("", ".lock"):
            try:
                os.unlink(os.path.join(self.socket_dir, f"socket.{self.control_port}{suffix}"))
            except FileNotFoundError:
                pass

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "TgtDaemon":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests
    @property
    def admin(self) -> TgtAdmin:
        return TgtAdmin(self.control_port, socket_dir=self.socket_dir)

    @property
    def host(self) -> str:
        return Portal.parse(self.portal).host

    @property
    def port(self) -> int:
        return Portal.parse(self.portal).port

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(os.path.join(self.directory, f"tgtd-{self.control_port}.log"), errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def tgtadm_argv(self, *args: str) -> List[str]:
        """``tgtadm -C <port> --lld iscsi ...`` for this daemon (never pass secrets this way)."""
        return ["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args]

    def target(self, **kwargs: Any) -> Any:
        """A :class:`~blocklink.target.tgt.TgtTarget` on this daemon; records under :attr:`directory`."""
        from blocklink.target.tgt import TgtTarget

        kwargs.setdefault("portals", [self.portal])
        kwargs.setdefault("config_dir", os.path.join(self.directory, "config"))
        kwargs.setdefault("lock_path", os.path.join(self.directory, "locks"))
        return TgtTarget(control_port=self.control_port, socket_dir=self.socket_dir, **kwargs)
