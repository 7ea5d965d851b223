"""A LIO iSCSI target (rtslib-fb, fileio) and open-iscsi over 127.0.0.1, in the real kernel."""

from __future__ import annotations

import os
import subprocess
import warnings

import pytest

from blocklink.initiator.host.wait import wait_for
from tests.harness.guest.blockio import block_size, direct_read, direct_write


pytestmark = pytest.mark.kernel

TARGET_IQN = "iqn.2003-01.org.blocklink.test:smoke0"
SIZE = 32 << 20


def iscsiadm(*args: str) -> str:
    res = subprocess.run(["iscsiadm", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"iscsiadm {' '.join(args)}: exit {res.returncode}: {res.stderr}"
    return res.stdout


def make_target(backing: str, initiator_iqn: str) -> None:
    from rtslib_fb import LUN, TPG, FabricModule, FileIOStorageObject, MappedLUN, NetworkPortal, NodeACL, Target

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rtslib's "Cannot set dbroot" warning
        so = FileIOStorageObject("smoke0", backing, size=SIZE, write_back=False)
        tpg = TPG(Target(FabricModule("iscsi"), TARGET_IQN), 1)
        tpg.set_attribute("authentication", "0")
        tpg.set_attribute("generate_node_acls", "0")
        NetworkPortal(tpg, "127.0.0.1", 3260)
        lun = LUN(tpg, 0, so)
        MappedLUN(NodeACL(tpg, initiator_iqn), 0, lun)
        tpg.enable = True


def test_login_write_read_logout(lio_clean, iscsid, tmp_path) -> None:
    backing = str(tmp_path / "smoke0.img")
    make_target(backing, iscsid.initiator_iqn)
    assert os.path.isdir(f"/sys/kernel/config/target/iscsi/{TARGET_IQN}/tpgt_1")

    assert f"127.0.0.1:3260,1 {TARGET_IQN}" in iscsiadm("-m", "discovery", "-t", "sendtargets", "-p", "127.0.0.1")
    iscsiadm("-m", "node", "-T", TARGET_IQN, "-p", "127.0.0.1:3260", "--login")
    try:
        by_path = f"/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-{TARGET_IQN}-lun-0"
        dev = wait_for(lambda: os.path.realpath(by_path) if os.path.exists(by_path) else None, timeout=60,
                       watch=["/dev/disk/by-path", "/dev/disk"], what=by_path)
        assert dev.startswith("/dev/sd")
        assert os.listdir("/sys/class/iscsi_session")
        assert block_size(dev) == SIZE

        data = os.urandom(1 << 20)
        direct_write(dev, data, offset=4096)
        assert direct_read(dev, len(data), offset=4096) == data
        with open(backing, "rb") as f:  # the bytes reached the target's backstore
            f.seek(4096)
            assert f.read(len(data)) == data
    finally:
        iscsiadm("-m", "node", "-T", TARGET_IQN, "-p", "127.0.0.1:3260", "--logout")
        iscsiadm("-m", "node", "-T", TARGET_IQN, "-p", "127.0.0.1:3260", "-o", "delete")
    assert not os.path.exists(dev)
    assert iscsid.sessions() == []
