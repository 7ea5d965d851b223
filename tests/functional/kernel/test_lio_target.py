"""LioTarget in the real kernel: the shared behavioural suite (libiscsi as initiator over 127.0.0.1),
plus the kernel initiator (iscsiadm login with CHAP, data on /dev/sdX, session dropped by
terminate_connection) and save/restore of the configuration."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import warnings
from typing import Any, Iterator, List

import pytest

from blocklink.initiator.host.wait import wait_for
from blocklink.target.lio import LIO_SAVE_DIR, LioTarget
from tests.functional.target_suite import *  # noqa: F401,F403 - the shared suite runs here
from tests.functional.target_suite import HOST_A, HOST_B, MiB, LibiscsiInitiator, _connector, new_volume_id

pytestmark = pytest.mark.kernel

PORTAL = "127.0.0.1:3260"


def _lio_dump() -> str:
    from rtslib_fb import RTSRoot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return json.dumps(RTSRoot().dump(), sort_keys=True)


class LioEnv:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        os.makedirs(os.path.join(tmp, "volumes"), exist_ok=True)
        # the privileged functions save only in rtslib's directory (/etc is a RAM overlay in the guest)
        self.save_file = os.path.join(LIO_SAVE_DIR, f"blocklink-test-{os.path.basename(tmp)}.json")
        self.helper = LioTarget(portals=[PORTAL], backing_dir=os.path.join(tmp, "volumes"),
                                save_file=self.save_file, lock_path=os.path.join(tmp, "locks"))
        self.initiator = LibiscsiInitiator(workdir=tmp)

    def new_device(self, volume_id: str, size: int) -> str:
        path = os.path.join(self.tmp, "volumes", f"dev-{volume_id}")
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    def read_backing(self, path: str, offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def config_text(self) -> str:
        return _lio_dump()

    def restart(self) -> None:
        """What a reboot does to LIO: the whole configuration is gone."""
        from rtslib_fb import RTSRoot

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            RTSRoot().clear_existing(confirm=True)


@pytest.fixture
def target_env(lio_clean: Any, tmp_path: Any) -> Iterator[LioEnv]:
    env = LioEnv(str(tmp_path))
    yield env
    for vid in env.helper.list_exports():
        env.helper.remove_export(vid)
    assert env.helper.list_exports() == []
    if os.path.exists(env.save_file):
        os.unlink(env.save_file)


# ---------------------------------------------------------------------------------------------
# the kernel initiator
# ---------------------------------------------------------------------------------------------

def iscsiadm(*args: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
    res = subprocess.run(["iscsiadm", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert res.returncode == 0, f"iscsiadm {' '.join(args[:6])}: exit {res.returncode}: {res.stderr}"
    return res


def session_state() -> str:
    out = iscsiadm("-m", "session", "-P", "1", check=False).stdout
    m = re.search(r"iSCSI Session State:\s*(\S+)", out)
    return m.group(1) if m else "NONE"


def node_with_chap(iqn: str, data: dict) -> List[str]:
    node = ["-m", "node", "-T", iqn, "-p", PORTAL]
    iscsiadm(*node, "-o", "new")
    for name, value in (("node.session.auth.authmethod", "CHAP"),
                        ("node.session.auth.username", data["auth_username"]),
                        ("node.session.auth.password", data["auth_password"])):
        iscsiadm(*node, "-o", "update", "-n", name, "-v", value)
    return node


def test_kernel_initiator_login_data_and_revocation(target_env: LioEnv, iscsid: Any) -> None:
    vid = new_volume_id()
    export = target_env.helper.create_export(vid, target_env.new_device(vid, 32 * MiB))
    data = target_env.helper.initialize_connection(vid, _connector(iscsid.initiator_iqn)).data_dict()
    assert data["target_lun"] == 0
    node = node_with_chap(export.iqn, data)
    try:
        iscsiadm(*node, "--login")
        by_path = f"/dev/disk/by-path/ip-{PORTAL}-iscsi-{export.iqn}-lun-0"
        dev = wait_for(lambda: os.path.realpath(by_path) if os.path.exists(by_path) else None, timeout=60,
                       watch=["/dev/disk/by-path", "/dev/disk"], what=by_path)
        payload = os.urandom(MiB)
        fd = os.open(dev, os.O_WRONLY)
        try:
            os.pwrite(fd, payload, 5 * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        assert target_env.read_backing(export.device_path, 5 * MiB, MiB) == payload
        assert len(iscsid.sessions()) == 1
        # terminate_connection: LIO drops the NodeACL and with it the session; a new login is refused
        assert session_state() == "LOGGED_IN"
        target_env.helper.terminate_connection(vid, _connector(iscsid.initiator_iqn))
        wait_for(lambda: True if session_state() != "LOGGED_IN" else None, timeout=30, uevents=False,
                 what="the target dropping the session", recheck=0.2)
        iscsiadm(*node, "--logout", check=False)  # end the initiator's recovery attempts
        wait_for(lambda: True if not os.path.exists(dev) else None, timeout=60, watch=["/dev"], what="removal")
        refused = iscsiadm(*node, "--login", check=False)
        assert refused.returncode != 0, refused.stdout
        assert iscsid.sessions() == []
    finally:
        iscsiadm(*node, "--logout", check=False)
        iscsiadm(*node, "-o", "delete", check=False)


def test_kernel_initiator_wrong_chap_is_refused(target_env: LioEnv, iscsid: Any) -> None:
    vid = new_volume_id()
    export = target_env.helper.create_export(vid, target_env.new_device(vid, 8 * MiB))
    data = target_env.helper.initialize_connection(vid, _connector(iscsid.initiator_iqn)).data_dict()
    node = node_with_chap(export.iqn, dict(data, auth_password="WrongPassword12345"))
    try:
        res = iscsiadm(*node, "--login", check=False)
        assert res.returncode != 0 and "auth" in (res.stdout + res.stderr).lower(), res.stdout + res.stderr
        assert iscsid.sessions() == []
    finally:
        iscsiadm(*node, "-o", "delete", check=False)


def test_export_described_without_read_back_is_what_lio_has(target_env: LioEnv) -> None:
    """create_export describes the export from what it asked for; the kernel's view agrees, and
    remove_export (which removes the storage object directly, not through rtslib's walk over every
    LUN) leaves no storage object and no HBA directory behind, while other exports stay intact."""
    vid, other = new_volume_id(), new_volume_id()
    export = target_env.helper.create_export(vid, target_env.new_device(vid, 8 * MiB), mutual_chap=True)
    kept = target_env.helper.create_export(other, target_env.new_device(other, 8 * MiB))
    read = target_env.helper.get_export(vid)
    assert read == export and read.extra == export.extra
    core = "/sys/kernel/config/target/core"
    hbas = {h for h in os.listdir(core) if os.path.isdir(os.path.join(core, h, target_env.helper.volume_name(vid)))}
    assert len(hbas) == 1
    target_env.helper.remove_export(vid)
    assert not any(os.path.exists(os.path.join(core, h)) for h in hbas)
    assert target_env.helper.volume_name(vid) not in _lio_dump()
    assert target_env.helper.get_export(other) == kept
    again = target_env.helper.create_export(vid, export.device_path)  # the name is free again in this process
    assert again.iqn == export.iqn


# ---------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------

def test_save_file_is_private_and_restores_one_volume(target_env: LioEnv) -> None:
    vid, other = new_volume_id(), new_volume_id()
    export = target_env.helper.create_export(vid, target_env.new_device(vid, 8 * MiB), mutual_chap=True)
    target_env.helper.create_export(other, target_env.new_device(other, 8 * MiB))
    data = target_env.helper.initialize_connection(vid, _connector(HOST_A)).data_dict()
    st = os.stat(target_env.save_file)
    assert stat.S_IMODE(st.st_mode) == 0o600
    with open(target_env.save_file) as f:
        saved = json.load(f)
    assert {t["wwn"] for t in saved["targets"]} == {export.iqn, target_env.helper.target_iqn(other)}
    # lose only this volume (the other stays live), then ensure_export restores it from the file
    target_env.helper.lio.delete(export.iqn, target_env.helper.volume_name(vid))
    assert target_env.helper.get_export(vid) is None
    again = target_env.helper.ensure_export(vid)
    assert again.chap == export.chap and again.mutual_chap == export.mutual_chap
    assert again.initiators == (HOST_A,) and again.device_path == export.device_path
    assert target_env.initiator.login(data, HOST_A).ok
    res = target_env.initiator.login(data, HOST_B)
    assert not res.ok and res.status == "denied", res


def test_acl_changes_keep_the_saved_target_equal_to_a_full_dump(target_env: LioEnv) -> None:
    """initialize/terminate_connection patch only the initiator's NodeACL in the save file; what is
    saved is still exactly what rtslib's dump of the target gives."""
    from rtslib_fb import FabricModule, Target

    vid = new_volume_id()
    export = target_env.helper.create_export(vid, target_env.new_device(vid, 8 * MiB), mutual_chap=True)
    for host in (HOST_A, HOST_B):
        target_env.helper.initialize_connection(vid, _connector(host))
    target_env.helper.terminate_connection(vid, _connector(HOST_A))
    target_env.helper.initialize_connection(vid, _connector(HOST_A))
    with open(target_env.save_file) as f:
        (entry,) = [t for t in json.load(f)["targets"] if t["wwn"] == export.iqn]
    full = json.loads(json.dumps(Target(FabricModule("iscsi"), export.iqn, "lookup").dump()))
    for d in (entry, full):
        d["tpgs"][0]["node_acls"].sort(key=lambda a: a["node_wwn"])
    assert [a["node_wwn"] for a in full["tpgs"][0]["node_acls"]] == sorted([HOST_A, HOST_B])
    assert entry == full


def test_removed_export_is_gone_from_the_save_file(target_env: LioEnv) -> None:
    vid = new_volume_id()
    export = target_env.helper.create_export(vid, target_env.new_device(vid, 8 * MiB))
    target_env.helper.remove_export(vid)
    with open(target_env.save_file) as f:
        text = f.read()
    assert export.iqn not in text and export.chap.username not in text
    target_env.restart()
    fresh = target_env.helper.ensure_export(vid, export.device_path)  # nothing to restore: a new export
    assert fresh.chap != export.chap
    assert not os.path.isdir(f"/sys/kernel/config/target/iscsi/{export.iqn}/tpgt_1/acls/{HOST_A}")


@pytest.mark.slow  # about 30 s under TCG emulation with the save file updated after every change
def test_hundred_volumes_exported_and_connected(target_env: LioEnv, record_property: Any) -> None:
    import time

    n = 100
    vids = [f"hv{i:03d}-{new_volume_id()}" for i in range(n)]
    paths = [target_env.new_device(v, MiB) for v in vids]
    t0 = time.monotonic()
    infos = []
    for v, p in zip(vids, paths):
        target_env.helper.create_export(v, p)
        infos.append(target_env.helper.initialize_connection(v, _connector(HOST_A)).data_dict())
    elapsed = time.monotonic() - t0
    record_property("lio_100_volumes_seconds", round(elapsed, 2))
    print(f"\n100 volumes exported + connected on LIO (saving after each change) in {elapsed:.2f}s")
    assert sorted(target_env.helper.list_exports()) == sorted(vids)
    for d in (infos[0], infos[-1]):
        assert target_env.initiator.login(d, HOST_A).ok
    t0 = time.monotonic()
    for v in vids:
        target_env.helper.remove_export(v)
    print(f"100 LIO exports removed in {time.monotonic() - t0:.2f}s")
    assert target_env.helper.list_exports() == [] and "hv0" not in _lio_dump()
