"""``blocklink export ...`` (the cinder-rtstool equivalents) against a real tgtd on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Iterator, List

import pytest

from blocklink.testing.tgt import TgtDaemon
from tests.functional.target_suite import HOST_A, HOST_B, LibiscsiInitiator

pytestmark = pytest.mark.tgt


@pytest.fixture
def daemon() -> Iterator[TgtDaemon]:
    with TgtDaemon.start() as d:
        yield d


def cli(d: TgtDaemon, tmp: Any, *args: str, rc: int = 0, stdin: str = "") -> Any:
    argv = [sys.executable, "-m", "blocklink.cli", "export", "--helper", "tgt", "--control-port",
            str(d.control_port), "--portal", d.portal, "--config-dir", str(tmp / "config"),
            "--lock-path", str(tmp / "locks"), "--backing-dir", str(tmp), *args]
    p = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert p.returncode == rc, p.stdout + p.stderr
    return json.loads(p.stdout)


def test_export_lifecycle_through_the_cli(daemon: TgtDaemon, tmp_path: Any) -> None:
    created = cli(daemon, tmp_path, "create", "vol1", "--size", str(16 << 20), "--mutual-chap")
    assert created["target_iqn"] == "iqn.2010-10.org.openstack:volume-vol1" and created["target_lun"] == 1
    assert created["chap"]["password"] == "***" and created["mutual_chap"]["password"] == "***"
    info = cli(daemon, tmp_path, "add-initiator", "vol1", HOST_A)
    assert info["driver_volume_type"] == "iscsi"
    data = info["data"]
    assert data["auth_username"] == created["chap"]["username"] and len(data["auth_password"]) == 20
    ini = LibiscsiInitiator(workdir=str(tmp_path))
    assert ini.login(data, HOST_A).ok
    assert not ini.login(data, HOST_B).ok
    assert cli(daemon, tmp_path, "get-targets") == [{"volume_id": "vol1", "target_iqn": data["target_iqn"]}]
    assert cli(daemon, tmp_path, "verify")["ok"] is True
    daemon.restart()
    assert cli(daemon, tmp_path, "restore") == {"restored": ["vol1"]}
    assert ini.login(data, HOST_A).ok  # same credentials after tgtd restarted
    cli(daemon, tmp_path, "delete-initiator", "vol1", HOST_A)
    assert ini.login(data, HOST_A).status == "denied"
    cli(daemon, tmp_path, "delete", "vol1")
    assert cli(daemon, tmp_path, "get-targets") == []
    assert daemon.admin.show_targets() == [] and daemon.admin.accounts() == []


def test_cli_supplied_credentials_come_from_stdin(daemon: TgtDaemon, tmp_path: Any) -> None:
    out = cli(daemon, tmp_path, "create", "vol2", "--size", str(1 << 20), "--chap-user", "operator1",
              "--chap-password-file", "-", "--show-secrets", stdin="Operator-Secret-42\n")
    assert out["chap"] == {"username": "operator1", "password": "Operator-Secret-42"}
    data = cli(daemon, tmp_path, "add-initiator", "vol2", HOST_A)["data"]
    assert LibiscsiInitiator(workdir=str(tmp_path)).login(data, HOST_A).ok
    cli(daemon, tmp_path, "delete", "vol2")


def test_cli_errors_are_json(daemon: TgtDaemon, tmp_path: Any) -> None:
    err = cli(daemon, tmp_path, "add-initiator", "nope", HOST_A, rc=1)
    assert err["error"] == "ExportNotFound"
    err = cli(daemon, tmp_path, "create", "Bad_Id", "--size", "512", rc=1)
    assert err["error"] == "InvalidConnectionInfo" and "volume_id" in err["message"]
    cli(daemon, tmp_path, "create", "vol3", "--size", str(1 << 20))
    err = cli(daemon, tmp_path, "add-initiator", "vol3", "not-an-iqn", rc=1)
    assert err["error"] == "InvalidConnector" and "initiator" in err["message"]
    cli(daemon, tmp_path, "delete", "vol3")


def test_cli_verify_reports_a_missing_daemon(tmp_path: Any) -> None:
    argv: List[str] = [sys.executable, "-m", "blocklink.cli", "export", "--control-port", "31999",
                       "--lock-path", str(tmp_path), "verify"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["ok"] is False and "31999" in out["problems"][0]
