"""The guest agent: runs the host's commands inside the test guest.

Stage 2 starts it as ``python3 -I -S agent.py --port NAME`` (standard library only: it must not
depend on the venv or on site packages). It talks to the host over a named virtio-serial port,
one JSON object per line:

- on start it sends ``{"event": "ready", "uptime": s, "kernel": release}``;
- ``{"op": "run", "argv": [...], "env": {...}, "cwd": dir, "timeout": s, "input": b64}`` runs a
  command in a new session and answers ``{"exit_code": n, "stdout": b64, "stderr": b64,
  "timed_out": bool, "duration": s}`` (on timeout the whole process group is killed);
- ``{"op": "poweroff"}`` answers ``{"ok": true}`` and ends the agent; stage 2 then powers off.

End of input (the host went away) also ends it. The host side of this protocol is
:mod:`tests.harness.guest.machine`; the encoding helpers here are shared by both.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, Optional

PORT_NAME = "org.blocklink.agent"
IN_GUEST_ENV = "BLOCKLINK_IN_GUEST"
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    IN_GUEST_ENV: "1",
}


def encode(msg: Dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def b64(data: Optional[bytes]) -> str:
    return base64.b64encode(data or b"").decode()


def unb64(text: Optional[str]) -> bytes:
    return base64.b64decode(text or "")


def read_messages(fd: int) -> Iterator[Dict[str, Any]]:
    """JSON objects from ``fd``, one per line, until end of input."""
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        if line.strip():
            yield json.loads(line)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def find_port(name: str = PORT_NAME, sysfs: str = "/sys/class/virtio-ports", dev: str = "/dev") -> str:
    """The /dev node of the virtio-serial port called ``name``."""
    for port in sorted(os.listdir(sysfs)) if os.path.isdir(sysfs) else []:
        try:
            with open(os.path.join(sysfs, port, "name")) as f:
                if f.read().strip() == name:
                    return os.path.join(dev, port)
        except OSError:
            continue
    raise FileNotFoundError(f"no virtio-serial port named {name} under {sysfs}")


def uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def run_command(req: Dict[str, Any], base_env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    argv = [str(a) for a in req.get("argv") or []]
    env = dict(BASE_ENV if base_env is None else base_env)
    env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
    timeout = req.get("timeout")
    data = unb64(req.get("input")) if req.get("input") is not None else None
    start = time.monotonic()
    if not argv:
        return {"exit_code": 127, "stdout": "", "stderr": b64(b"agent: empty argv\n"), "timed_out": False,
                "duration": 0.0}
    try:
        p = subprocess.Popen(argv, cwd=req.get("cwd") or "/", env=env, start_new_session=True,
                             stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        code = 127 if isinstance(e, FileNotFoundError) else 126
        return {"exit_code": code, "stdout": "", "stderr": b64(f"agent: {argv[0]}: {e}\n".encode()),
                "timed_out": False, "duration": time.monotonic() - start}
    timed_out = False
    try:
        out, err = p.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
    return {"exit_code": p.returncode, "stdout": b64(out), "stderr": b64(err), "timed_out": timed_out,
            "duration": time.monotonic() - start}


def serve(fd_in: int, fd_out: int, base_env: Optional[Dict[str, str]] = None) -> None:
    write_all(fd_out, encode({"event": "ready", "uptime": uptime(), "kernel": os.uname().release}))
    for req in read_messages(fd_in):
        op = req.get("op")
        if op == "run":
            argv = req.get("argv") or []
            print(f"blguest-agent: run {argv[:4]!r}{' ...' if len(argv) > 4 else ''} "
                  f"(uptime {uptime():.1f})", flush=True)
            resp = run_command(req, base_env)
            print(f"blguest-agent: exit {resp['exit_code']}{' (timed out)' if resp['timed_out'] else ''} "
                  f"after {resp['duration']:.1f}s", flush=True)
        elif op == "poweroff":
            os.sync()
            write_all(fd_out, encode({"ok": True}))
            return
        else:
            resp = {"error": f"unknown op {op!r}"}
        write_all(fd_out, encode(resp))


def main(argv: Optional[list] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = args[args.index("--port") + 1] if "--port" in args else PORT_NAME
    os.environ.update(BASE_ENV)
    path = find_port(name)
    fd = os.open(path, os.O_RDWR)
    try:
        serve(fd, fd, dict(os.environ))
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
