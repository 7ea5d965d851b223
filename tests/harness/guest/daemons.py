"""iscsid and multipathd for tests inside the guest, started and stopped by PID.

Traps these classes handle (see the recipes): iscsid signals its whole process group on shutdown,
so it gets its own session (``setsid``) and is stopped with ``iscsiadm -k 0``; multipathd is ready
when ``multipathd show daemon`` says ``idle``. Both run in the foreground as our children, so we
know their PIDs and reap them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Callable, List, Optional, Sequence

from blocklink.doctor import ISCSID_SOCKET
from blocklink.testing.procs import alive, stop_pids
from tests.harness.guest.stage2 import INITIATOR_IQN


MULTIPATH_CONF = """# written by blocklink's guest test fixtures
defaults {
    user_friendly_names no
    find_multipaths no
    enable_foreign "^$"
    polling_interval 2
}
blacklist {
    devnode "^(ram|zram|loop|fd|md|dm-|sr|scd|st|nbd|rbd|vd)[0-9]*"
}
"""


class DaemonError(RuntimeError):
    pass


def run(argv: Sequence[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise DaemonError(f"{' '.join(argv)}: exit {res.returncode}: {(res.stderr or res.stdout).strip()[-500:]}")
    return res


def modprobe(*modules: str, params: Sequence[str] = ()) -> None:
    """Load kernel modules (``params``, ``name=value``, for a single module); errors name the module."""
    if params and len(modules) != 1:
        raise ValueError("module parameters need exactly one module")
    for m in modules:
        res = run(["modprobe", m, *params], check=False)
        if res.returncode != 0:
            raise DaemonError(f"modprobe {m} failed (exit {res.returncode}): {res.stderr.strip()}")


def _log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-lines:])
    except OSError:
        return ""


class _Daemon:
    name = "daemon"

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, argv: List[str]) -> None:
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "ab") as log:
            # own session: a daemon that signals its process group must not hit pytest
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def _wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise DaemonError(f"{self.name} exited ({self.proc.returncode if self.proc else '?'}) while starting:"
                                  f"\n{_log_tail(self.log_path)}")
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonError(f"{self.name} not ready after {timeout:.0f}s:\n{_log_tail(self.log_path)}")
            time.sleep(0.1)  # bounded: the daemons offer no readiness notification

    def _reap(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_pids([self.proc.pid])
            self.proc.wait(5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and alive(self.proc.pid)

    def stop(self) -> None:
        raise NotImplementedError


class Iscsid(_Daemon):
    """open-iscsi's iscsid in the foreground (``iscsid -f``), with the guest's fixed initiator IQN."""

    name = "iscsid"

    def __init__(self, log_path: str = "/run/blocklink/iscsid.log", initiator_iqn: str = INITIATOR_IQN) -> None:
        super().__init__(log_path)
        self.initiator_iqn = initiator_iqn

    def start(self, timeout: float = 30) -> "Iscsid":
        modprobe("iscsi_tcp")
        os.makedirs("/etc/iscsi", exist_ok=True)
        with open("/etc/iscsi/initiatorname.iscsi", "w") as f:
            f.write(f"InitiatorName={self.initiator_iqn}\n")
        for d in ("/var/lib/iscsi", "/run/lock/iscsi"):
            os.makedirs(d, exist_ok=True)
        self._spawn(["iscsid", "-f"])

        def ready() -> bool:
            # not "iscsiadm -m session": that answers from sysfs before iscsid listens; a login needs the socket
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                try:
                    sock.connect("\0" + ISCSID_SOCKET)
                except OSError:
                    return False
            return True

        self._wait_ready(ready, timeout)
        return self

    def sessions(self) -> List[str]:
        res = run(["iscsiadm", "-m", "session"], check=False)
        return [ln for ln in res.stdout.splitlines() if ln.strip()] if res.returncode == 0 else []

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.running():
            run(["iscsiadm", "-k", "0"], check=False, timeout=30)
        self._reap(10)


class Multipathd(_Daemon):
    """multipathd in the foreground with a test configuration (``MULTIPATH_CONF``)."""

    name = "multipathd"

    def __init__(self, log_path: str = "/run/blocklink/multipathd.log", conf: str = MULTIPATH_CONF) -> None:
        super().__init__(log_path)
        self.conf = conf

    def start(self, timeout: float = 60) -> "Multipathd":
        modprobe("dm_multipath", "dm_round_robin")
        with open("/etc/multipath.conf", "w") as f:
            f.write(self.conf)
        self._spawn(["multipathd", "-d", "-s"])
        self._wait_ready(lambda: "idle" in self.command("show", "daemon", check=False), timeout)
        return self

    def command(self, *args: str, check: bool = True) -> str:
        """``multipathd <args>`` (the interactive client), its output."""
        res = run(["multipathd", *args], check=check, timeout=60)
        return res.stdout

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.running():
            run(["multipathd", "shutdown"], check=False, timeout=30)
        self._reap(15)
