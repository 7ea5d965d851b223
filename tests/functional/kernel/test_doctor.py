"""blocklink doctor in the real-kernel guest: a healthy guest is all clear; iscsid stopped, two hosts
sharing one IQN in the shared store, an unreachable portal and a bad multipath.conf are each reported
with their severity (and the CLI's exit status)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import pytest

from blocklink.attach.records import AttachmentStore
from blocklink.doctor import Doctor
from tests.harness.guest import INITIATOR_IQN

pytestmark = pytest.mark.kernel

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
KERNEL_PROTOCOLS = ("iscsi", "nvmeof", "rbd")  # the guest has no FC HBA driver stack to speak of


def doctor_cli(*argv: str, fresh_process: bool = False) -> subprocess.CompletedProcess:
    """``blocklink doctor ...``: the CLI's own ``main`` in this process, or (``fresh_process``)
    ``python -m blocklink.cli`` — each start costs 10-20 s of TCG, so one test does it."""
    if fresh_process:
        return subprocess.run([sys.executable, "-m", "blocklink.cli", "doctor", *argv], capture_output=True,
                              text=True, timeout=300, env=dict(os.environ, PYTHONPATH=TOP))
    from blocklink.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["doctor", *argv])
    return subprocess.CompletedProcess(["blocklink", "doctor", *argv], rc, out.getvalue(), err.getvalue())


def findings(res: subprocess.CompletedProcess) -> Dict[str, List[str]]:
    doc = json.loads(res.stdout)
    out: Dict[str, List[str]] = {}
    for f in doc["findings"]:
        out.setdefault(f["check"], []).append(f["severity"])
    return out


def protocol_args() -> List[str]:
    return [a for p in KERNEL_PROTOCOLS for a in ("--protocol", p)]


def test_a_healthy_guest_is_all_clear(iscsid, multipathd, tmp_path) -> None:
    res = doctor_cli(*protocol_args(), "--store", str(tmp_path / "fleet.db"), fresh_process=True)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all clear" in res.stdout
    res = doctor_cli("--json", *protocol_args(), "--store", str(tmp_path / "fleet.db"))
    sev = findings(res)
    assert res.returncode == 0 and json.loads(res.stdout)["worst"] in ("ok", "info")
    assert sev["iscsid"] == ["ok"] and sev["multipathd"] == ["ok"] and sev["identity_unique"] == ["ok"]
    assert sev["initiator_iqn"] == ["ok"] and sev["kernel_module"] == ["ok"]


def test_iscsid_stopped_is_critical(iscsid, multipathd) -> None:
    iscsid.stop()
    try:
        res = doctor_cli("--json", "--protocol", "iscsi")
        assert res.returncode == 2, res.stdout
        assert findings(res)["iscsid"] == ["critical"]
    finally:
        iscsid.start()
    assert Doctor(protocols=("iscsi",)).run().by_check("iscsid")[0].severity == "ok"


def test_two_hosts_sharing_one_iqn_in_the_shared_store_is_critical(iscsid, multipathd, tmp_path) -> None:
    db = str(tmp_path / "fleet.db")
    assert doctor_cli("--json", "--protocol", "iscsi", "--store", db).returncode == 0
    # another host (its own process) registers the same IQN: a cloned image
    subprocess.run([sys.executable, "-c", "import sys; from blocklink.attach.records import AttachmentStore; "
                    "AttachmentStore(sys.argv[1]).register_host('clone-of-guest', iqn=sys.argv[2])", db, INITIATOR_IQN],
                   check=True, env=dict(os.environ, PYTHONPATH=TOP), timeout=120)
    res = doctor_cli("--json", "--protocol", "iscsi", "--store", db)
    assert res.returncode == 2, res.stdout
    dup = [f for f in json.loads(res.stdout)["findings"] if f["check"] == "identity_unique"]
    assert [(f["severity"], f["detail"]["hosts"], f["detail"]["iqn"]) for f in dup] == \
        [("critical", ["clone-of-guest"], INITIATOR_IQN)]
    assert {h.host for h in AttachmentStore(db).hosts()} == {os.uname().nodename, "clone-of-guest"}


def _attached_record(store: AttachmentStore, volume: str, portals: List[str]) -> None:
    rec = store.reserve(volume, "inst")
    data: Dict[str, Any] = {"target_portal": portals[0], "target_portals": portals, "target_lun": 0,
                            "target_iqn": "iqn.2003-01.org.linux-iscsi:doctor", "auth_password": "doctor-secret-1"}
    store.record_step(rec.id, "initialize", protocol="iscsi",
                      connection_info={"driver_volume_type": "iscsi", "data": data})
    store.transition(rec.id, ["attaching"], "attached")


def test_an_unreachable_portal_of_an_attachment_is_critical(lio_clean, iscsid, multipathd, tmp_path) -> None:
    from blocklink.target.lio import LioTarget

    lio = LioTarget(portals=["127.0.0.1:3260"], backing_dir=str(tmp_path), lock_path=str(tmp_path / "tl"))
    lio.create_export("doctor1", size=1 << 20)  # LIO now listens on 127.0.0.1:3260; nobody on 127.0.0.3
    try:
        db = str(tmp_path / "fleet.db")
        _attached_record(AttachmentStore(db), "doctor1", ["127.0.0.1:3260", "127.0.0.3:3260"])
        res = doctor_cli("--json", "--protocol", "iscsi", "--store", db)
        assert res.returncode == 2, res.stdout
        portals = {f["detail"]["portal"]: f["severity"] for f in json.loads(res.stdout)["findings"]
                   if f["check"] == "portal"}
        assert portals == {"127.0.0.1:3260": "ok", "127.0.0.3:3260": "critical"}
        assert "doctor-secret-1" not in res.stdout + res.stderr
    finally:
        lio.remove_export("doctor1")


def test_a_multipath_conf_that_blacklists_every_disk_is_critical(iscsid, multipathd) -> None:
    with open("/etc/multipath.conf") as f:
        good = f.read()
    try:
        with open("/etc/multipath.conf", "w") as f:
            f.write('defaults {\n    find_multipaths no\n}\nblacklist {\n    devnode ".*"\n}\n')
        res = doctor_cli("--json", "--protocol", "iscsi")
        assert res.returncode == 2, res.stdout
        conf = [f for f in json.loads(res.stdout)["findings"] if f["check"] == "multipath_conf"]
        assert conf[0]["severity"] == "critical" and 'devnode ".*"' in conf[0]["message"]
        assert conf[0]["detail"]["source"] == "multipath -t"  # multipath's own merged view was read
        with open("/etc/multipath.conf", "w") as f:
            f.write('defaults {\n    find_multipaths smart\n}\n')
        res = doctor_cli("--json", "--protocol", "iscsi")
        assert res.returncode == 1 and "warning" in findings(res)["multipath_conf"], res.stdout
    finally:
        with open("/etc/multipath.conf", "w") as f:
            f.write(good)
    assert doctor_cli("--json", "--protocol", "iscsi").returncode == 0
