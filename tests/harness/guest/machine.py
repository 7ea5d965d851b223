"""Boot a throwaway real-kernel guest under qemu (TCG) and run commands in it.

::

    with Guest.boot(rw_dirs=[outdir]) as guest:             # ~10 s on 2 TCG cores
        res = guest.run(["modprobe", "-v", "rbd"], timeout=60)
        assert res.exit_code == 0, res.stderr

    print(run_in_guest("lsmod").stdout)                      # boot, run, power off

The guest boots Debian's /boot/vmlinuz-* with the host's ``/`` shared read-only over virtio-9p and
RAM overlays on the writable places (see :mod:`tests.harness.guest.stage2` for what a command
finds there). Commands go to an agent over a virtio-serial port. Every failure (no boot, timeout,
guest died) raises :class:`GuestError` whose message ends with the guest console's tail. qemu is
stopped by its PID on :meth:`Guest.shutdown`, at interpreter exit, and (when booted from the main
thread) by the kernel if this process dies.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from tests.harness.guest import agent as agent_mod
from tests.harness.guest.initramfs import STAGE2, build_initramfs
from tests.harness.guest.qemu import DEFAULT_NIC_MODEL, KERNEL_ENV, QemuSpec, qemu_argv, rw_tags, select_kernel
from tests.harness.guest.stage2 import STAGE2_SCRIPT, config_sh, rwdirs_file

CONSOLE_TAIL_LINES = 40
_NOTABLE = re.compile(r"Kernel panic|BUG:|Oops|general protection|FATAL|Out of memory|hung_task|blocked for more than")


class GuestError(RuntimeError):
    """The guest failed to boot, died, or did not answer in time. The message ends with the console tail."""

    def __init__(self, message: str, console_tail: str = "", run_dir: str = "") -> None:
        self.reason = message
        self.console_tail = console_tail
        self.run_dir = run_dir
        text = message
        if run_dir:
            text += f" (run dir {run_dir})"
        if console_tail:
            text += "\n--- guest console (last lines) ---\n" + console_tail.rstrip() + "\n---"
        super().__init__(text)


class GuestBootError(GuestError):
    pass


class GuestTimeout(GuestError):
    pass


@dataclass(frozen=True)
class GuestResult:
    argv: Sequence[str]
    exit_code: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    timed_out: bool = False
    duration: float = 0.0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode(errors="replace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class GuestConfig:
    """Options of one guest (keyword arguments of :meth:`Guest.boot`)."""

    kernel: Optional[str] = None          # "6.12", a release or a vmlinuz path; default $BLOCKLINK_GUEST_KERNEL or newest
    mem_mb: int = 2048
    smp: int = 2
    tb_mb: int = 128                      # TCG translation cache; 128: Ceph+krbd test 670 MiB RSS, 512: 1.1 GiB, no faster
    machine: str = "q35"                  # microvm boots ~0.5 s faster but hung ~1 boot in 20
    nics: int = 0                         # NICs on one qemu hub (FCoE tests), fixed MACs
    nic_model: str = DEFAULT_NIC_MODEL    # their qemu device (qemu.DEFAULT_NIC_MODEL)
    rw_dirs: Sequence[str] = ()           # host folders mounted read-write at the same path
    boot_timeout: float = 180.0
    debug: bool = False                   # full kernel log on the console
    keep: bool = False                    # keep the run directory (console.log, qemu.log)
    cache_dir: Optional[str] = None       # where the initramfs is cached
    run_base: Optional[str] = None        # parent of the run directory (default: the temp dir)
    python: str = field(default_factory=lambda: sys.executable)  # the agent's interpreter (same path in guest)
    qemu: str = "qemu-system-x86_64"
    extra_args: Sequence[str] = ()


# qemu processes of this interpreter, stopped at exit if their Guest was not shut down
_live: "weakref.WeakSet[Guest]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for g in list(_live):
        g.shutdown(graceful=False)


OWNER_FILE = ".owner"


def _start_time(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def make_run_dir(prefix: str, base: Optional[str] = None, keep: bool = False) -> str:
    """A fresh directory for one guest; unless ``keep``, marked with its owner (this process) so that
    :func:`sweep_stale_run_dirs` can remove it should this process be SIGKILLed."""
    base = base or tempfile.gettempdir()
    sweep_stale_run_dirs(base)
    d = tempfile.mkdtemp(prefix=prefix, dir=base)
    if not keep:
        with open(os.path.join(d, OWNER_FILE), "w") as f:
            f.write(f"{os.getpid()} {_start_time(os.getpid())}\n")
    return d


def sweep_stale_run_dirs(base: str) -> List[str]:
    """Remove ``blguest-*`` directories whose owner process is gone (a SIGKILLed session); kept ones
    (no owner mark) stay. Returns what was removed."""
    removed = []
    for name in os.listdir(base) if os.path.isdir(base) else []:
        d = os.path.join(base, name)
        if not name.startswith("blguest-"):
            continue
        try:
            with open(os.path.join(d, OWNER_FILE)) as f:
                pid_text, start = f.read().split()
        except (OSError, ValueError):
            continue
        if pid_text.isdigit() and _start_time(int(pid_text)) == start:
            continue  # its owner still runs
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _die_with_parent() -> None:
    # runs in the child between fork and exec: SIGKILL qemu when the thread that forked it exits
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Guest:
    """One running guest. Create with :meth:`boot` (or ``Guest(config).start()``)."""

    def __init__(self, config: Optional[GuestConfig] = None) -> None:
        self.config = config or GuestConfig()
        self.run_dir = ""
        self.kernel_release = ""
        self._guest_modules = ""
        self.stats: Dict[str, float] = {}
        self._proc: Optional[subprocess.Popen] = None
        self._sock: Optional[socket.socket] = None
        self._buf = b""
        self._lock = threading.Lock()
        self._down = False

    @classmethod
    def boot(cls, **options: Any) -> "Guest":
        guest = cls(GuestConfig(**options))
        guest.start()
        return guest

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ paths
    @property
    def console_log(self) -> str:
        return os.path.join(self.run_dir, "console.log")

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        try:
            with open(self.console_log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no console log)"
        qlog = os.path.join(self.run_dir, "qemu.log")
        all_lines = text.splitlines()
        tail = "\n".join(all_lines[-lines:])
        # a panic's first line scrolls away behind its call trace: keep such lines in view
        notable = [ln for ln in all_lines[:-lines] if _NOTABLE.search(ln)]
        if notable:
            tail = "\n".join(notable[-10:]) + "\n[...]\n" + tail
        try:
            with open(qlog, errors="replace") as f:
                q = f.read().strip()
            if q:
                tail += "\n--- qemu stderr ---\n" + "\n".join(q.splitlines()[-10:])
        except OSError:
            pass
        return tail

    def _error(self, cls: type, message: str) -> GuestError:
        err: GuestError = cls(message, self.console_tail(), self.run_dir if self.config.keep else "")
        return err

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Guest":
        cfg = self.config
        t0 = time.monotonic()
        choice = select_kernel(cfg.kernel or os.environ.get(KERNEL_ENV))
        kernel, self.kernel_release = choice.image, choice.release
        rw_dirs = [os.path.realpath(d) for d in cfg.rw_dirs]
        for d in rw_dirs:
            if not os.path.isdir(d):
                raise GuestBootError(f"shared folder {d} is not a directory")
        initrd = build_initramfs(self.kernel_release, cfg.cache_dir, choice.modules_root)
        self._guest_modules = "" if choice.modules_root == "/" else os.path.dirname(choice.modules_dir)
        self.run_dir = make_run_dir("blguest-", cfg.run_base, keep=cfg.keep)
        _live.add(self)
        try:
            spec = self._prepare(kernel, initrd, rw_dirs)
            argv = qemu_argv(spec)
            with open(os.path.join(self.run_dir, "qemu.argv"), "w") as f:
                f.write("\n".join(argv) + "\n")
            main = threading.current_thread() is threading.main_thread()
            with open(os.path.join(self.run_dir, "qemu.log"), "wb") as qlog:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                                              start_new_session=True, preexec_fn=_die_with_parent if main else None)
            self._connect(spec.agent_socket, t0 + cfg.boot_timeout)
            ready = self._recv(t0 + cfg.boot_timeout, GuestBootError, "waiting for the guest to boot")
        except BaseException:
            self.shutdown(graceful=False)
            raise
        self.stats["boot_seconds"] = time.monotonic() - t0
        self.stats["guest_uptime_at_ready"] = float(ready.get("uptime", -1))
        return self

    def _prepare(self, kernel: str, initrd: str, rw_dirs: Sequence[str]) -> QemuSpec:
        """The run directory's files: stage 2 and its settings in the exchange share."""
        cfg = self.config
        xfer = os.path.join(self.run_dir, "xfer")
        os.makedirs(xfer)
        spec = QemuSpec(kernel=kernel, initrd=initrd, console_log=self.console_log,
                        agent_socket=os.path.join(self.run_dir, "agent.sock"), xfer_dir=xfer, rw_dirs=rw_dirs,
                        mem_mb=cfg.mem_mb, smp=cfg.smp, tb_mb=cfg.tb_mb, machine=cfg.machine, nics=cfg.nics,
                        nic_model=cfg.nic_model, debug=cfg.debug, qemu=cfg.qemu, extra_args=tuple(cfg.extra_args))
        if len(spec.agent_socket) > 100:
            raise GuestBootError(f"run dir path too long for a unix socket: {self.run_dir}")
        with open(os.path.join(xfer, os.path.basename(STAGE2)), "w") as f:
            f.write(STAGE2_SCRIPT)
        with open(os.path.join(xfer, "config.sh"), "w") as f:
            f.write(config_sh(agent_python=cfg.python, agent=os.path.abspath(agent_mod.__file__),
                              agent_port=agent_mod.PORT_NAME, guest_modules=self._guest_modules))
        with open(os.path.join(xfer, "rwdirs"), "w") as f:
            f.write(rwdirs_file(rw_tags(spec)))
        return spec

    def _connect(self, path: str, deadline: float) -> None:
        from blocklink.initiator.host.wait import wait_for

        def connected() -> Optional[Union[socket.socket, bool]]:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)  # the file appears at bind(), connections succeed after listen()
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                return None
            return s

        try:
            got = wait_for(connected, timeout=max(1.0, deadline - time.monotonic()), watch=[self.run_dir],
                           uevents=False, what="qemu's agent socket", recheck=0.05)
        except Exception as e:
            raise self._error(GuestBootError, f"qemu did not open its agent socket: {e}") from None
        if not isinstance(got, socket.socket):
            raise self._error(GuestBootError, f"qemu exited with status {self._exit_status()} before the guest started")
        self._sock = got

    def _recv(self, deadline: float, err: type = GuestTimeout, what: str = "waiting for the guest") -> Dict[str, Any]:
        """The next message from the agent; raises ``err`` at ``deadline`` or when qemu dies."""
        while b"\n" not in self._buf:
            if self._sock is None:
                raise self._error(GuestError, f"{what}: the guest is shut down")
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._error(err, f"{what}: no answer within the timeout")
            ready, _, _ = select.select([self._sock], [], [], min(left, 1.0))
            if ready:
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    self._wait_exit(5)
                    raise self._error(GuestError if err is GuestTimeout else err,
                                      f"{what}: the guest went away (qemu status {self._exit_status()})")
                self._buf += chunk
            elif self._proc is not None and self._proc.poll() is not None:
                raise self._error(GuestError if err is GuestTimeout else err,
                                  f"{what}: qemu exited with status {self._proc.returncode}")
        line, self._buf = self._buf.split(b"\n", 1)
        msg: Dict[str, Any] = json.loads(line)
        return msg

    def _send(self, msg: Dict[str, Any]) -> None:
        if self._sock is None:
            raise self._error(GuestError, "the guest is shut down")
        self._sock.sendall(agent_mod.encode(msg))

    def _exit_status(self) -> Optional[int]:
        return self._proc.poll() if self._proc else None

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def run(self, command: Union[str, Sequence[str]], *, env: Optional[Mapping[str, str]] = None,
            cwd: Optional[str] = None, timeout: float = 600.0, input: Optional[bytes] = None,
            answer_grace: float = 30.0, answer_timeout: Optional[float] = None) -> GuestResult:
        """Run ``command`` (argv list, or a string for ``bash -c``) as root in the guest.

        The command's own timeout kills its process group and returns ``timed_out=True``; a guest that
        does not answer ``answer_grace`` seconds after that raises :class:`GuestTimeout` and is stopped.
        ``answer_timeout`` replaces that host-side bound (``timeout + answer_grace``) when given: a shorter
        one fails fast on a hung guest whatever the command's own timeout.
        """
        argv = ["/bin/bash", "-c", command] if isinstance(command, str) else [str(a) for a in command]
        req: Dict[str, Any] = {"op": "run", "argv": argv, "env": dict(env or {}), "cwd": cwd or "/",
                               "timeout": timeout}
        if input is not None:
            req["input"] = agent_mod.b64(input)
        with self._lock:
            self._send(req)
            try:
                wait = timeout + answer_grace if answer_timeout is None else answer_timeout
                resp = self._recv(time.monotonic() + wait, GuestTimeout, f"running {argv[:3]!r}")
            except GuestTimeout:
                self.shutdown(graceful=False)  # a hung guest; a late answer must not meet the next request
                raise
        if "error" in resp:
            raise self._error(GuestError, f"agent refused the request: {resp['error']}")
        return GuestResult(argv=argv, exit_code=int(resp["exit_code"]), stdout_bytes=agent_mod.unb64(resp["stdout"]),
                           stderr_bytes=agent_mod.unb64(resp["stderr"]), timed_out=bool(resp["timed_out"]),
                           duration=float(resp.get("duration", 0.0)))

    def max_rss_kib(self) -> Optional[int]:
        """qemu's peak resident memory so far (VmHWM), while it runs."""
        if self._proc is None:
            return None
        try:
            with open(f"/proc/{self._proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def shutdown(self, graceful: bool = True) -> None:
        """Power the guest off (or stop qemu by PID), and remove the run directory unless ``keep``."""
        if self._down:
            return
        self._down = True
        _live.discard(self)
        t0 = time.monotonic()
        rss = self.max_rss_kib()
        if rss:
            self.stats["max_rss_kib"] = rss
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if graceful and self._sock is not None and self._lock.acquire(timeout=1):
                try:
                    self._send({"op": "poweroff"})
                    self._recv(time.monotonic() + 10, GuestTimeout, "powering off")
                except (GuestError, OSError):
                    pass
                finally:
                    self._lock.release()
                self._wait_exit(5)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                if not self._wait_exit(5):
                    proc.kill()
                    self._wait_exit(10)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.stats["shutdown_seconds"] = time.monotonic() - t0
        if self.run_dir and not self.config.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def run_in_guest(command: Union[str, Sequence[str]], *, timeout: float = 600.0,
                 env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None, **options: Any) -> GuestResult:
    """Boot a guest, run one command, power off. ``options`` are :class:`GuestConfig` fields."""
    with Guest.boot(**options) as guest:
        return guest.run(command, timeout=timeout, env=env, cwd=cwd)

