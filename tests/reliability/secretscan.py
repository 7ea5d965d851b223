"""Watch everything a secret could leak through while a flow runs.

:class:`SecretWatch` (a context manager), given the secret values:

- samples ``/proc/*/cmdline`` and ``/proc/*/environ`` of every process on the machine in a thread,
  as fast as it can (each sweep takes a few ms), so a child that lives a few ms is still seen;
  entering the watch waits until the sampler has completed a sweep (it is armed), and
  :meth:`wait_sampled` proves that a given process was read by a sweep that started while it ran;
- optionally runs ``strace -f -e trace=execve`` on this process, which records the argv and the
  environment of every program its threads and descendants execute, however short-lived; entering
  the watch waits until strace has reported a marker program this process executed (attached);
- captures every log record at DEBUG on the root logger (message, arguments, exception text);
- sweeps files modified since the start under /tmp, /run, /dev/shm, the venv and given run dirs,
  during the flow and at the end, flagging files that others can read and that hold a secret;
- lets the test add exception texts (:meth:`check_text`).

Every finding is an :class:`Exposure` (where, what); :meth:`assert_clean` fails on any.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set

SWEEP_ROOTS = ("/tmp", "/run", "/dev/shm", sys.prefix)
# in the kernel test guest the venv is on the read-only 9p root, and /tmp is an overlay whose lower layer is
# the host's /tmp over 9p (a checkout and its venvs may live there): walking either every 2 s under TCG took
# 10-12 minutes. The guest's own writable places only (plus each watch's run_dirs)
GUEST_SWEEP_ROOTS = ("/run", "/dev/shm")
_MAX_FILE = 4 << 20
ARM_TIMEOUT = 60.0  # the sampler's first sweep / strace's attach: generous for a loaded 2-core machine


@dataclass(frozen=True)
class Exposure:
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"


class _Capture(logging.Handler):
    def __init__(self, watch: "SecretWatch") -> None:
        super().__init__(logging.DEBUG)
        self.watch = watch
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a broken record still gets its raw parts scanned
            text = f"{record.msg!r} {record.args!r}"
        self.watch.records += 1
        self.watch.check_text(f"log record {record.name}", text)


def _others_can_read(path: str) -> bool:
    """The file is o+r and every directory above it is o+x (a local user can open it)."""
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        d = os.path.dirname(path)
        while d and d != "/":
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
            d = os.path.dirname(d)
    except OSError:
        return False
    return True


class SecretWatch:
    def __init__(self, secrets: Iterable[str], *, run_dirs: Sequence[str] = (), strace: bool = True,
                 sweep_roots: Sequence[str] = SWEEP_ROOTS) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)
        assert self.secrets, "nothing to watch for"
        self._needles = [s.encode() for s in self.secrets]
        self.run_dirs = list(run_dirs)
        self.sweep_roots = [r for r in sweep_roots if os.path.isdir(r)] + self.run_dirs
        self.exposures: List[Exposure] = []
        self._seen: Set[str] = set()
        self.proc_samples = 0
        self.sweeps = 0
        self.pids_seen: Set[int] = set()
        self._read_in: Dict[int, int] = {}  # pid -> index of the last sweep that read its cmdline
        self._swept = threading.Condition()  # notified at the end of every /proc sweep
        self.records = 0
        self.files_checked = 0
        self.execs = 0
        self.texts = 0
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._t0 = 0.0
        self._use_strace = strace and shutil.which("strace") is not None
        self._strace: Optional["subprocess.Popen[bytes]"] = None
        self._strace_lines: List[bytes] = []
        self._strace_reader: Optional[threading.Thread] = None
        self._marker = f"bl-secretwatch-armed-{uuid.uuid4().hex}"
        self._marker_seen = threading.Event()
        self._handler = _Capture(self)
        self._old_level = logging.WARNING

    # ------------------------------------------------------------------ findings
    def _found(self, where: str, detail: str) -> None:
        key = f"{where}|{detail}"
        if key not in self._seen:
            self._seen.add(key)
            self.exposures.append(Exposure(where, detail))

    def _hit(self, data: bytes) -> Optional[int]:
        for i, n in enumerate(self._needles):
            if n in data:
                return i
        return None

    def check_text(self, where: str, text: str) -> None:
        self.texts += 1
        for i, s in enumerate(self.secrets):
            if s in text:
                self._found(where, f"secret #{i} ({len(s)} chars) in text")

    # ------------------------------------------------------------------ /proc sampling
    def _sample_procs(self) -> None:
        me = os.getpid()
        environ_done: Set[int] = set()  # a process's environment is fixed at exec: read it once
        while not self._stop.is_set():
            sweep = self.proc_samples  # the index of this sweep
            try:
                pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
            except OSError:
                continue
            for pid in pids:
                if pid == me:
                    continue
                if pid not in self.pids_seen:
                    self.pids_seen.add(pid)
                    environ_done.discard(pid)
                for what in ("cmdline", "environ"):
                    if what == "environ" and pid in environ_done:
                        continue
                    try:
                        with open(f"/proc/{pid}/{what}", "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                    if what == "environ":
                        environ_done.add(pid)
                    else:
                        self._read_in[pid] = sweep
                    i = self._hit(data)
                    if i is not None:
                        comm = data.split(b"\0", 1)[0].decode(errors="replace") if what == "cmdline" else ""
                        self._found(f"/proc/{pid}/{what}", f"secret #{i} in {comm or 'process environment'}")
            with self._swept:
                self.proc_samples += 1
                self._swept.notify_all()

    def wait_sampled(self, pid: int, timeout: float = ARM_TIMEOUT) -> bool:
        """Wait for a /proc sweep that started after this call to finish; True if that sweep read
        ``pid``'s cmdline (the sampler observed the process while it ran). Call it while the
        process is alive (e.g. after it announced itself and before it is told to exit)."""
        with self._swept:
            first = self.proc_samples + 1  # sweep ``proc_samples`` may have started before this call
            if not self._swept.wait_for(lambda: self.proc_samples > first or self._stop.is_set(), timeout):
                raise AssertionError(f"the /proc sampler made no sweep in {timeout:.0f} s")
        return self._read_in.get(pid, -1) >= first

    # ------------------------------------------------------------------ file sweeps
    def _sweep_files(self, final: bool = False) -> None:
        for root in self.sweep_roots:
            for d, subdirs, files in os.walk(root):
                if d.startswith(("/proc", "/sys")):
                    subdirs[:] = []
                    continue
                for name in files:
                    p = os.path.join(d, name)
                    try:
                        st = os.lstat(p)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime < self._t0 or st.st_size > _MAX_FILE:
                        continue
                    self.files_checked += 1
                    try:
                        with open(p, "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                    i = self._hit(data)
                    if i is not None and _others_can_read(p):
                        self._found(p, f"secret #{i} in a file others can read (mode {oct(st.st_mode & 0o777)})")
        self.sweeps += 1

    def sweep_files(self) -> None:
        """One file sweep now, e.g. while a flow's own files exist (the background sweep runs every 2 s)."""
        self._sweep_files()

    def _sweeper(self) -> None:
        while not self._stop.wait(2.0):
            self._sweep_files()

    # ------------------------------------------------------------------ strace
    def _start_strace(self) -> None:
        # the trace goes to a pipe (strace's stderr): nothing on disk, read as it comes
        self._strace = subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=execve", "-v", "-s", "65536", "-p", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self._strace_reader = threading.Thread(target=self._read_strace, daemon=True)
        self._strace_reader.start()
        # attached once strace reports a program this process executes; an exec before the attach
        # is not seen, so the marker runs again until one is (each wait ends on the event)
        deadline = time.monotonic() + ARM_TIMEOUT
        while not self._marker_seen.is_set() and self._strace.poll() is None and time.monotonic() < deadline:
            subprocess.run(["true", self._marker], check=True)
            self._marker_seen.wait(1.0)
        if not self._marker_seen.is_set():
            self._strace.kill()
            self._strace.wait()
            self._strace_reader.join()
            err = b"\n".join(self._strace_lines[-5:]).decode(errors="replace")
            raise RuntimeError(f"strace did not attach: {err.strip()[-300:]}")

    def _read_strace(self) -> None:
        assert self._strace is not None and self._strace.stderr is not None
        marker = self._marker.encode()
        for line in self._strace.stderr:
            if marker in line:
                self._marker_seen.set()
            else:
                self._strace_lines.append(line)

    def _stop_strace(self) -> None:
        if self._strace is None:
            return
        self._strace.send_signal(signal.SIGINT)  # detaches cleanly from every traced thread
        try:
            self._strace.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._strace.kill()
            self._strace.wait()
        if self._strace_reader is not None:
            self._strace_reader.join()  # EOF once strace has exited: every line is in
        for line in self._strace_lines:
            if b"execve(" not in line:
                continue
            self.execs += 1
            i = self._hit(line)
            if i is not None:
                prog = line.split(b"execve(", 1)[1].split(b",", 1)[0].decode(errors="replace")
                self._found(f"execve {prog}", f"secret #{i} in the argv or environment of an executed program")
        self._strace = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "SecretWatch":
        self._t0 = time.time() - 1
        root = logging.getLogger()
        self._old_level = root.level
        root.setLevel(logging.DEBUG)
        root.addHandler(self._handler)
        if self._use_strace:
            self._start_strace()
        for fn in (self._sample_procs, self._sweeper):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self._threads.append(t)
        with self._swept:  # armed: the sampler has completed a sweep before the flow starts
            if not self._swept.wait_for(lambda: self.proc_samples > 0, ARM_TIMEOUT):
                self.__exit__()
                raise RuntimeError(f"the /proc sampler made no sweep in {ARM_TIMEOUT:.0f} s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        try:
            self._stop_strace()
        finally:
            root = logging.getLogger()
            root.removeHandler(self._handler)
            root.setLevel(self._old_level)
        self._sweep_files(final=True)

    def summary(self) -> str:
        return (f"{self.proc_samples} /proc sweeps over {len(self.pids_seen)} processes, {self.execs} execve traced, "
                f"{self.records} log records, {self.texts} texts, {self.files_checked} files in {self.sweeps} sweeps")

    def assert_clean(self) -> None:
        assert not self.exposures, "secret exposed: " + "; ".join(map(str, self.exposures))
