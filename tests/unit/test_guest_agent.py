"""The guest agent's protocol, run on the host over a socket pair (what the virtio-serial port carries)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from tests.harness.guest import agent
from blocklink.testing.procs import alive


@pytest.fixture
def channel():
    host, guest = socket.socketpair()
    env = dict(agent.BASE_ENV, PATH=os.environ["PATH"])
    t = threading.Thread(target=agent.serve, args=(guest.fileno(), guest.fileno(), env), daemon=True)
    t.start()
    f = host.makefile("rwb")

    def call(msg=None):
        if msg is not None:
            f.write(agent.encode(msg))
            f.flush()
        return json.loads(f.readline())

    yield call, t
    f.close()
    host.close()
    t.join(5)
    guest.close()


def test_ready_then_commands(channel, tmp_path) -> None:
    call, _ = channel
    ready = call()
    assert ready["event"] == "ready" and ready["kernel"] == os.uname().release
    r = call({"op": "run", "argv": ["sh", "-c", "cat; echo $X $BLOCKLINK_IN_GUEST; pwd; echo e >&2; exit 4"],
              "env": {"X": "y"}, "cwd": str(tmp_path), "input": agent.b64(b"in\n"), "timeout": 30})
    assert r["exit_code"] == 4 and not r["timed_out"]
    assert agent.unb64(r["stdout"]) == f"in\ny 1\n{tmp_path}\n".encode()
    assert agent.unb64(r["stderr"]) == b"e\n"
    binary = call({"op": "run", "argv": ["printf", "\\377\\000"]})
    assert agent.unb64(binary["stdout"]) == b"\xff\x00"
    assert call({"op": "run", "argv": ["/no/such/tool"]})["exit_code"] == 127
    assert call({"op": "nope"}) == {"error": "unknown op 'nope'"}


def test_timeout_kills_the_process_group(channel, tmp_path) -> None:
    call, _ = channel
    call()
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    r = call({"op": "run", "argv": ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], "timeout": 1})
    assert r["timed_out"] and time.monotonic() - start < 20
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)  # bounded: the orphaned child is reaped by init
    assert not alive(child), "the command's background child was killed with its process group"

def test_poweroff_ends_the_agent(channel) -> None:
    call, t = channel
    call()
    assert call({"op": "poweroff"}) == {"ok": True}
    t.join(5)
    assert not t.is_alive()


def test_end_of_input_ends_the_agent() -> None:
    host, guest = socket.socketpair()
    t = threading.Thread(target=agent.serve, args=(guest.fileno(), guest.fileno()), daemon=True)
    t.start()
    host.recv(4096)
    host.shutdown(socket.SHUT_WR)
    t.join(5)
    assert not t.is_alive()
    host.close()
    guest.close()


def test_find_port_by_name(tmp_path) -> None:
    sysfs = tmp_path / "virtio-ports"
    for port, name in (("vport1p0", "other"), ("vport2p1", agent.PORT_NAME)):
        (sysfs / port).mkdir(parents=True)
        (sysfs / port / "name").write_text(name + "\n")
    (sysfs / "vport3p0").mkdir()  # a console port has no name file
    assert agent.find_port(sysfs=str(sysfs), dev="/dev") == "/dev/vport2p1"
    with pytest.raises(FileNotFoundError, match="missing"):
        agent.find_port("missing", sysfs=str(sysfs))
