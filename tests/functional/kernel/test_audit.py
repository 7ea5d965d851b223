"""blocklink audit in the real-kernel guest, with orphans made for real: a session logged in by hand,
a multipath map left by a process killed mid-detach, an NVMe/TCP controller without a record and an
nbd mapping. ``audit`` lists each; ``audit --clean`` removes those it proves safe, refuses a mounted
one with the reason; afterwards a second ``audit`` is empty. Records live in a SQLite store."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from typing import Any, Dict, Iterator, List

import pytest

from blocklink.attach.records import AttachmentStore
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host import scsi
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.host.wwn import device_wwid
from blocklink.target.lio import LioTarget
from tests.functional.kernel.test_iscsi_connector import assert_host_clean, sh
from tests.harness.guest import INITIATOR_IQN

pytestmark = pytest.mark.kernel

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MiB = 1 << 20


def audit_cli(db: str, *extra: str, fresh_process: bool = False) -> Any:
    """``blocklink audit --store DB ...``: (exit status, its JSON). The CLI's own ``main`` in this process,
    or (``fresh_process``) ``python -m blocklink.cli`` — each start costs 10-20 s of TCG, so one test does it."""
    argv = ["audit", "--store", db, *extra]
    if fresh_process:
        res = subprocess.run([sys.executable, "-m", "blocklink.cli", *argv], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ, PYTHONPATH=TOP))
        assert res.returncode in (0, 1), res.stdout + res.stderr
        return res.returncode, json.loads(res.stdout)
    from blocklink.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    assert rc in (0, 1), out.getvalue()
    return rc, json.loads(out.getvalue())


def orphans(doc: Dict[str, Any]) -> List[Any]:
    return sorted((o["kind"], o["name"]) for o in doc["orphans"])


@pytest.fixture
def store(tmp_path: Any) -> str:
    db = str(tmp_path / "attachments.db")
    AttachmentStore(db).close()
    return db


@pytest.fixture
def lio(lio_clean: Any, tmp_path: Any) -> LioTarget:
    return LioTarget(portals=["127.0.0.1:3260", "127.0.0.2:3260"], backing_dir=str(tmp_path),
                     lock_path=str(tmp_path / "target-locks"))


def export_without_chap(lio: LioTarget, vid: str, multipath: bool = False) -> Any:
    lio.create_export(vid, size=16 * MiB, chap=False)
    return lio.initialize_connection(vid, {"initiator": INITIATOR_IQN, "host": "guest", "multipath": multipath})


def login_by_hand(iqn: str, portal: str = "127.0.0.1:3260") -> str:
    """What an administrator does: a node record, a login (automatic scan), the LUN's disk."""
    sh("iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-o", "new")
    sh("iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "--login")

    def disk() -> Any:
        paths = HostPaths()
        for sess in scsi.iscsi_sessions(paths):
            for d in scsi.session_devices(paths, sess.sid) if sess.iqn == iqn else ():
                if d.name and os.path.exists(f"/dev/{d.name}") and device_wwid(paths, d.name):
                    return d.name
        return None

    return str(wait_for(disk, timeout=60, watch=["/dev"], what=f"the disk of {iqn}"))


def test_a_session_logged_in_by_hand_is_orphaned_then_cleaned(lio, iscsid, store) -> None:
    info = export_without_chap(lio, "audit1")
    iqn = info.targets[0].iqn
    name = login_by_hand(iqn)
    try:
        rc, doc = audit_cli(store, fresh_process=True)
        assert rc == 1
        session = scsi.iscsi_sessions(HostPaths())[0]
        assert orphans(doc) == [("iscsi_node", f"{iqn} 127.0.0.1:3260"), ("iscsi_session", f"session{session.sid}"),
                                ("scsi_disk", name)]
        disk = [o for o in doc["orphans"] if o["kind"] == "scsi_disk"][0]
        assert disk["wwn"] == device_wwid(HostPaths(), name) and disk["ids"]["iqn"] == iqn
        rc, cleaned = audit_cli(store, "--clean", fresh_process=True)
        assert rc == 0 and cleaned["refused"] == [] and len(cleaned["removed"]) == 3, cleaned
        rc, again = audit_cli(store)
        assert rc == 0 and again["orphans"] == [] and again["ghosts"] == [] and again["mismatches"] == []
        assert_host_clean(iqn)
    finally:
        sh("iscsiadm", "-m", "node", "-T", iqn, "--logout", ok=(0, 21))
        sh("iscsiadm", "-m", "node", "-T", iqn, "-o", "delete", ok=(0, 21))
        lio.remove_export("audit1")


def test_a_record_whose_device_changed_is_a_mismatch_and_protects_the_device(lio, iscsid, store) -> None:
    info = export_without_chap(lio, "audit2")
    iqn = info.targets[0].iqn
    name = login_by_hand(iqn)
    try:
        st = AttachmentStore(store)
        rec = st.reserve("audit2", "vm1")
        st.record_step(rec.id, "initialize", protocol="iscsi", connection_info=info.to_dict(),
                       host=os.uname().nodename)
        st.record_step(rec.id, "connect", host_device=f"/dev/{name}", extra={"device_wwn": "36001405aaaabbbbcccc"})
        st.transition(rec.id, ["attaching"], "attached")
        ghost = st.reserve("gone-volume", "vm1")
        st.record_step(ghost.id, "connect", host_device="/dev/sdzz", protocol="iscsi", host=os.uname().nodename)
        st.transition(ghost.id, ["attaching"], "attached")
        rc, doc = audit_cli(store)
        assert rc == 1 and doc["orphans"] == []  # the record names the session, the disk and the node
        assert [(m["volume_id"], m["device"]) for m in doc["mismatches"]] == [("audit2", f"/dev/{name}")]
        assert [(g["volume_id"], g["device"]) for g in doc["ghosts"]] == [("gone-volume", "/dev/sdzz")]
        rc, cleaned = audit_cli(store, "--clean")
        assert cleaned["removed"] == [] and os.path.exists(f"/sys/block/{name}")  # nothing of a record touched
    finally:
        sh("iscsiadm", "-m", "node", "-T", iqn, "--logout", ok=(0, 21))
        sh("iscsiadm", "-m", "node", "-T", iqn, "-o", "delete", ok=(0, 21))
        lio.remove_export("audit2")
    assert_host_clean(iqn)


KILL_MID_DETACH = r"""
import json, os, signal, sys
from blocklink.connection import parse_connection_info
from blocklink.initiator.iscsi import ISCSIConnector
from blocklink.trace import add_hook
info = parse_connection_info(json.load(sys.stdin))
conn = ISCSIConnector(use_multipath=True, enforce_multipath=True, timeout=120, lock_path=sys.argv[1])
dev = conn.connect_volume(info)
print(json.dumps(dev.to_dict()), flush=True)
def die(ev):  # the map's buffers are flushed, the map is not removed yet: killed here
    if ev.step == "teardown" and ev.ids.get("action", "").startswith("flush /dev/dm-"):
        os.kill(os.getpid(), signal.SIGKILL)
add_hook(die)
conn.disconnect_volume(info, dev)
print("not killed", flush=True)
"""


def test_a_map_left_by_a_process_killed_mid_detach(lio, iscsid, multipathd, store, tmp_path) -> None:
    info = export_without_chap(lio, "audit3", multipath=True)
    iqn = info.targets[0].iqn
    res = subprocess.run([sys.executable, "-c", KILL_MID_DETACH, str(tmp_path / "locks")], input=json.dumps(
        info.to_dict()), capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=TOP))
    try:
        assert res.returncode == -9, res.stdout + res.stderr
        dev = json.loads(res.stdout.splitlines()[0])
        dm = os.path.basename(dev["path"])
        assert os.path.exists(f"/sys/block/{dm}")  # the killed detach left the map
        rc, doc = audit_cli(store)
        kinds = sorted(k for k, _ in orphans(doc))
        assert kinds == ["iscsi_node", "iscsi_node", "iscsi_session", "iscsi_session", "multipath_map", "scsi_disk",
                         "scsi_disk"], doc
        mp = [o for o in doc["orphans"] if o["kind"] == "multipath_map"][0]
        assert mp["device"] == dm and mp["wwn"] == dev["scsi_wwn"] == dev["multipath_id"]
        rc, cleaned = audit_cli(store, "--clean")
        assert rc == 0 and cleaned["refused"] == [] and len(cleaned["removed"]) == 7, cleaned
        assert audit_cli(store) == (0, {"orphans": [], "ghosts": [], "mismatches": [], "explained": [], "removed": [],
                                        "refused": []})
    finally:
        if os.path.exists("/sys/class/iscsi_session"):
            sh("multipath", "-F", ok=(0, 1))
            sh("iscsiadm", "-m", "node", "-T", iqn, "--logout", ok=(0, 21))
            sh("iscsiadm", "-m", "node", "-T", iqn, "-o", "delete", ok=(0, 21))
        lio.remove_export("audit3")
    assert_host_clean(iqn)


@pytest.fixture
def nvme_workdir(modprobe: Any) -> Iterator[str]:
    modprobe("nvmet", "nvmet-tcp", "nvme-tcp", "nvme-fabrics")
    d = tempfile.mkdtemp(prefix="blocklink-audit-", dir="/run")
    yield d
    shutil.rmtree(d)


def test_an_nvme_controller_without_a_record(nvme_workdir, store) -> None:
    from blocklink.connection import HostConnector
    from blocklink.registry import connector_for
    from blocklink.target.nvmet import NvmetTarget

    target = NvmetTarget(portals=["127.0.0.1:4420"], backing_dir=nvme_workdir,
                         lock_path=os.path.join(nvme_workdir, "locks"))
    conn = connector_for("nvmeof", run_dir=os.path.join(nvme_workdir, "run"), timeout=60.0)
    vid = str(uuid.uuid4())
    target.create_export(vid, size=16 * MiB)
    try:
        info = target.initialize_connection(vid, HostConnector.from_dict(
            {"host": "guest", **conn.get_connector_properties()}))
        dev = conn.connect_volume(info.to_dict())
        rc, doc = audit_cli(store)
        ctrls = [o for o in doc["orphans"] if o["kind"] == "nvme_controller"]
        assert rc == 1 and len(ctrls) == 1 and ctrls[0]["ids"]["nqn"] == info.target_nqn, doc
        rc, cleaned = audit_cli(store, "--clean")
        assert rc == 0 and [o["kind"] for o in cleaned["removed"]] == ["nvme_controller"], cleaned
        wait_for(lambda: not os.path.exists(dev.path or "/nonexistent") or None, timeout=60, what="namespace gone")
        assert audit_cli(store)[1]["orphans"] == []
    finally:
        for ctrl in glob.glob("/sys/class/nvme/nvme*/subsysnqn"):
            with open(ctrl) as f:
                if vid in f.read() or "blocklink" in ctrl:
                    with open(os.path.join(os.path.dirname(ctrl), "delete_controller"), "w") as d:
                        d.write("1")
        target.remove_export(vid)


def test_an_nbd_mapping_mounted_is_refused_then_cleaned(modprobe, store, tmp_path) -> None:
    modprobe.load("nbd", nbds_max=4)
    img = "/run/blocklink-audit-nbd.img"
    with open(img, "wb") as f:
        f.truncate(32 * MiB)
    mnt = tempfile.mkdtemp(prefix="blocklink-audit-mnt-", dir="/run")
    sh("qemu-nbd", "--connect=/dev/nbd0", "--format=raw", img)
    wait_for(lambda: os.path.exists("/sys/block/nbd0/pid") or None, timeout=60, watch=["/dev"], what="nbd0 up")
    try:
        sh("mkfs.ext4", "-q", "-F", "/dev/nbd0")
        sh("mount", "/dev/nbd0", mnt)
        rc, doc = audit_cli(store)
        assert ("nbd_mapping", "nbd0") in orphans(doc)
        rc, cleaned = audit_cli(store, "--clean")
        refused = {o["name"]: o["reason"] for o in cleaned["refused"]}
        assert rc == 1 and refused == {"nbd0": f"mounted on {mnt}"}, cleaned
        assert os.path.exists("/sys/block/nbd0/pid")  # still connected
        sh("umount", mnt)
        rc, cleaned = audit_cli(store, "--clean")
        assert rc == 0 and [o["name"] for o in cleaned["removed"]] == ["nbd0"], cleaned
        wait_for(lambda: not os.path.exists("/sys/block/nbd0/pid") or None, timeout=60, what="nbd0 disconnected")
        assert audit_cli(store) == (0, {"orphans": [], "ghosts": [], "mismatches": [], "explained": [], "removed": [],
                                        "refused": []})
    finally:
        sh("umount", mnt, ok=(0, 1, 32))
        sh("qemu-nbd", "--disconnect", "/dev/nbd0", ok=(0, 1))
        os.rmdir(mnt)
        os.unlink(img)


def audit_here(db: str, clean: bool = False) -> Dict[str, Any]:
    from blocklink.audit import Auditor

    store = AttachmentStore(db)
    try:
        auditor = Auditor(store)
        report = auditor.audit()
        return (auditor.clean(report) if clean else report).to_dict()
    finally:
        store.close()


def test_a_dm_crypt_mapping_left_over_a_session_is_orphaned_then_cleaned_top_down(lio, iscsid, store) -> None:
    """What an encryptor killed before its record leaves: a session and, over its disk, an open LUKS
    mapping. ``audit`` lists the mapping with the transport below it; ``--clean`` closes the mapping
    first (the disk is its holder's), then the disk, the session and the node. (In process: the CLI's
    own path is the other tests'; a CLI start costs tens of seconds under TCG.)"""
    info = export_without_chap(lio, "audit-crypt")
    iqn = info.targets[0].iqn
    name = login_by_hand(iqn)
    mapping = "crypt-audit-orphan"
    key = os.urandom(32).hex().encode()
    try:
        for args in (["luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf-force-iterations", "1000",
                      "--key-file=-", f"/dev/{name}"],
                     ["open", "--type", "luks1", "--key-file=-", f"/dev/{name}", mapping]):
            res = subprocess.run(["cryptsetup", *args], input=key, capture_output=True, timeout=300)
            assert res.returncode == 0, res.stderr.decode()
        dm = os.path.basename(os.path.realpath(f"/dev/mapper/{mapping}"))
        assert os.listdir(f"/sys/block/{dm}/slaves") == [name]
        doc = audit_here(store)
        assert ("dm_crypt", mapping) in orphans(doc) and ("scsi_disk", name) in orphans(doc), doc
        crypt = [o for o in doc["orphans"] if o["kind"] == "dm_crypt"][0]
        assert crypt["device"] == dm and crypt["ids"]["slaves"] == name
        cleaned = audit_here(store, clean=True)
        assert cleaned["refused"] == [], cleaned
        removed = [(o["kind"], o["name"]) for o in cleaned["removed"]]
        assert removed[0] == ("dm_crypt", mapping) and ("scsi_disk", name) in removed, removed
        assert not os.path.exists(f"/dev/mapper/{mapping}")
        again = audit_here(store)
        assert again["orphans"] == [] and again["ghosts"] == [] and again["mismatches"] == [], again
        assert_host_clean(iqn)
    finally:
        subprocess.run(["cryptsetup", "close", mapping], capture_output=True, timeout=60)
        sh("iscsiadm", "-m", "node", "-T", iqn, "--logout", ok=(0, 21))
        sh("iscsiadm", "-m", "node", "-T", iqn, "-o", "delete", ok=(0, 21))
        lio.remove_export("audit-crypt")
