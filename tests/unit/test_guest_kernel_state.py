"""Leak detection on a fake sysfs/configfs tree."""

from __future__ import annotations

import os

from blocklink.hostpaths import HostPaths
from tests.harness.guest.kernel_state import KernelState, cleanup, snapshot


def mk(root, rel, content=None):
    path = os.path.join(root, rel)
    if content is None:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
    return path


def base_tree(root):
    for d in ("sys/block/vda", "sys/block/loop0/queue", "sys/block/nbd0", "sys/class/iscsi_session",
              "sys/bus/rbd/devices", "sys/kernel/config/target/core/alua",
              "sys/kernel/config/target/iscsi/discovery_auth"):
        mk(root, d)
    mk(root, "sys/kernel/config/target/version", "Target Engine Core ConfigFS Infrastructure v5.0\n")
    mk(root, "sys/kernel/config/target/iscsi/lio_version", "v4.1.0\n")
    mk(root, "sys/bus/rbd/remove_single_major", "")


def test_empty_host_is_clean(tmp_path) -> None:
    base_tree(str(tmp_path))
    state = snapshot(HostPaths.under(str(tmp_path)))
    assert state == KernelState() and not state and state.items() == []


def test_everything_a_test_can_leave(tmp_path) -> None:
    root = str(tmp_path)
    base_tree(root)
    paths = HostPaths.under(root)
    before = snapshot(paths)
    mk(root, "sys/class/iscsi_session/session3")
    mk(root, "sys/block/sdb/device")
    mk(root, "sys/block/dm-0/dm/name", "3600140512345\n")
    mk(root, "sys/bus/rbd/devices/0/pool", "volumes\n")
    mk(root, "sys/bus/rbd/devices/0/name", "volume-1\n")
    mk(root, "sys/block/nbd0/pid", "123\n")
    mk(root, "sys/block/loop0/loop/backing_file", "/tmp/x\n")
    mk(root, "sys/class/nvme/nvme0")
    mk(root, "sys/kernel/config/target/core/fileio_1/disk0")
    mk(root, "sys/kernel/config/target/core/fileio_1/hba_info", "x")
    mk(root, "sys/kernel/config/target/iscsi/iqn.2003-01.org.x:t1/tpgt_1")
    mk(root, "sys/kernel/config/target/fc/naa.2000020000000f01")
    mk(root, "sys/kernel/config/nvmet/subsystems/nqn.x")
    mk(root, "sys/kernel/config/nvmet/ports/1")
    leaked = snapshot(paths).new_since(before)
    assert leaked == KernelState(
        iscsi_sessions=("session3",), scsi_disks=("sdb",), dm_maps=("3600140512345",),
        rbd_mappings=("0 volumes/volume-1",), nbd_devices=("nbd0",), nvme_controllers=("nvme0",),
        loop_devices=("loop0",),
        lio_objects=("core/fileio_1/disk0", "fc/naa.2000020000000f01", "iscsi/iqn.2003-01.org.x:t1"),
        nvmet_objects=("subsystems/nqn.x", "ports/1"))
    assert "rbd_mappings: 0 volumes/volume-1" in leaked.items()


def test_only_new_state_is_blamed(tmp_path) -> None:
    root = str(tmp_path)
    base_tree(root)
    mk(root, "sys/block/sda/device")
    paths = HostPaths.under(root)
    before = snapshot(paths)
    mk(root, "sys/block/sdb/device")
    assert snapshot(paths).new_since(before).scsi_disks == ("sdb",)


def test_cleanup_writes_the_kernel_files_and_reports_what_stays(tmp_path) -> None:
    root = str(tmp_path)
    base_tree(root)
    paths = HostPaths.under(root)
    mk(root, "sys/bus/rbd/devices/2/pool", "volumes\n")
    mk(root, "sys/bus/rbd/devices/2/name", "v\n")
    delete = mk(root, "sys/block/sdc/device/delete", "")
    problems = cleanup(KernelState(rbd_mappings=("2 volumes/v",), scsi_disks=("sdc",)), paths)
    with open(os.path.join(root, "sys/bus/rbd/remove_single_major")) as f:
        assert f.read() == "2 force"
    with open(delete) as f:
        assert f.read() == "1"
    # a fake tree does not react like the kernel: both are still there, and cleanup says so
    assert "still present: rbd_mappings: 2 volumes/v" in problems
    assert "still present: scsi_disks: sdc" in problems
