"""The guest's boot settings file: sourced by busybox sh (/init) and bash (stage 2) alike."""

from __future__ import annotations

import subprocess

import pytest

from tests.harness.guest.stage2 import INITIATOR_IQN, config_sh, rwdirs_file


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_config_values_survive_the_shell(tmp_path, shell: str) -> None:
    conf = tmp_path / "config.sh"
    conf.write_text(config_sh(agent_python="/opt/my venv/bin/python", agent="/x/agent.py; rm -rf /",
                              agent_port="org.blocklink.agent", hostname="g'1"))
    out = subprocess.run([shell, "-c", f'. "{conf}"; printf "%s|" "$AGENT_PYTHON" "$AGENT" "$INITIATOR_IQN" '
                          f'"$GUEST_HOSTNAME" "$LOOPBACK_ADDRS"'], capture_output=True, text=True, check=True)
    assert out.stdout.split("|")[:5] == ["/opt/my venv/bin/python", "/x/agent.py; rm -rf /", INITIATOR_IQN,
                                         "g'1", "127.0.0.2 127.0.0.3"]


def test_loopback_addresses_must_be_ipv4() -> None:
    with pytest.raises(ValueError):
        config_sh(agent_python="p", agent="a", agent_port="x", loopback_addrs=["127.0.0.2; reboot"])


def test_rwdirs_lines_and_validation(tmp_path) -> None:
    text = rwdirs_file([("rw0", "/tmp/a b"), ("rw1", "/srv/c")])
    assert text == "rw0 /tmp/a b\nrw1 /srv/c\n"
    f = tmp_path / "rwdirs"
    f.write_text(text)
    out = subprocess.run(["/bin/sh", "-c", f'while read -r tag dir; do echo "[$tag][$dir]"; done < "{f}"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == "[rw0][/tmp/a b]\n[rw1][/srv/c]\n"
    for bad in ("relative", "/a\nb"):
        with pytest.raises(ValueError, match="absolute path"):
            rwdirs_file([("rw0", bad)])
