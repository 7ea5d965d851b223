"""The example CLI: every subcommand has --help, JSON output, and the demo's RBD part runs end to end."""

import json
import subprocess
import sys

import pytest

from blocklink.cli import build_parser

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "blocklink.cli", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_expected_commands_exist():
    for cmd in ("connector-properties", "connect", "disconnect", "export", "disk-xml", "attach", "detach", "list",
                "reconcile", "demo"):
        assert cmd in COMMANDS


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd):
    assert "usage:" in run(cmd, "--help").stdout


def test_connector_properties_json():
    props = json.loads(run("connector-properties", "--ip", "127.0.0.1").stdout)
    assert props["ip"] == "127.0.0.1" and props["os_type"] == "linux"


def test_list_and_reconcile_on_an_empty_store(tmp_path):
    db = str(tmp_path / "a.db")
    assert json.loads(run("list", "--store", db).stdout) == []


def test_errors_are_json_and_typed():
    info = {"driver_volume_type": "iscsi", "data": {"target_portal": "1.2.3.4:99999", "target_iqn": "iqn.x:y",
                                                    "target_lun": 0}}
    p = run("connect", json.dumps(info), check=False)
    assert p.returncode == 1
    err = json.loads(p.stdout)
    assert err["error"] == "InvalidConnectionInfo" and "target_portal" in err["message"]


def test_demo_rbd_runs_end_to_end():
    out = run("demo", "--only", "rbd", "--json").stdout
    assert "all demo steps succeeded" in out and "0 watcher(s)" in out
