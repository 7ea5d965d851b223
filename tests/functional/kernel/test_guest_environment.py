"""The guest gives kernel tests what they were promised (runs inside the guest)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.harness.guest import INITIATOR_IQN, LOOPBACK_ADDRS, in_guest
from tests.harness.guest.daemons import DaemonError, modprobe as load_modules
from tests.harness.guest.kernel_state import cleanup, snapshot

pytestmark = pytest.mark.kernel

MODULES = ["target_core_mod", "iscsi_target_mod", "target_core_file", "target_core_iblock", "iscsi_tcp",
           "dm_multipath", "rbd", "nbd", "scsi_debug", "loop", "nvme_tcp", "nvmet_tcp"]


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def test_runs_in_the_guest_kernel() -> None:
    assert in_guest()
    assert os.uname().release.endswith("-amd64")  # Debian's kernel, not the host's
    assert os.path.isdir(f"/lib/modules/{os.uname().release}")


@pytest.mark.parametrize("module", MODULES)
def test_modprobe(modprobe, module: str) -> None:
    if module == "scsi_debug":
        modprobe.load(module, add_host=0)  # by default it adds a disk: a leak for leak_check
    else:
        modprobe(module)
    assert os.path.isdir(f"/sys/module/{module}")


def test_configfs_is_mounted(configfs: str) -> None:
    assert os.path.ismount(configfs)
    assert os.path.isdir(os.path.join(configfs, "target", "core"))


def test_root_is_read_only_and_etc_writable(tmp_path) -> None:
    with pytest.raises(OSError):
        open("/usr/blocklink-guest-probe", "w")
    with open("/etc/iscsi/blocklink-probe", "w") as f:
        f.write("ok")
    os.unlink("/etc/iscsi/blocklink-probe")
    os.makedirs("/etc/multipath", exist_ok=True)
    (tmp_path / "x").write_text("ok")


def test_initiator_name() -> None:
    with open("/etc/iscsi/initiatorname.iscsi") as f:
        assert f.read().strip() == f"InitiatorName={INITIATOR_IQN}"


def test_loopback_addresses() -> None:
    out = sh("ip", "-o", "-4", "addr", "show", "dev", "lo")
    for addr in ("127.0.0.1", *LOOPBACK_ADDRS):
        assert f"inet {addr}/8" in out


def test_udevd_is_running() -> None:
    names = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    names.append(f.read().strip())
            except OSError:
                pass
    assert "systemd-udevd" in names
    assert subprocess.run(["udevadm", "control", "--ping"], timeout=30).returncode == 0


def test_scsi_debug_disk_gets_by_id_link(modprobe) -> None:
    """udev (no coldplug) creates /dev/disk links for a disk that appears after boot."""
    from blocklink.initiator.host.wait import wait_for

    modprobe.load("scsi_debug", add_host=0)  # no disk yet; then one host with one disk
    before = set(os.listdir("/sys/block"))
    with open("/sys/bus/pseudo/drivers/scsi_debug/add_host", "w") as f:
        f.write("1")
    try:
        disk = wait_for(lambda: next(iter(sorted(set(os.listdir("/sys/block")) - before)), None), timeout=60,
                        watch=["/dev"], what="scsi_debug disk")
        assert disk.startswith("sd")

        def link():
            d = "/dev/disk/by-id"
            for name in os.listdir(d) if os.path.isdir(d) else []:
                if os.path.realpath(os.path.join(d, name)) == f"/dev/{disk}":
                    return name
            return None

        assert wait_for(link, timeout=60, watch=["/dev/disk/by-id", "/dev/disk"], what=f"by-id link of {disk}")
    finally:
        with open("/sys/bus/pseudo/drivers/scsi_debug/add_host", "w") as f:
            f.write("-1")


def test_a_module_that_does_not_load_fails_naming_it() -> None:
    with pytest.raises(DaemonError, match="modprobe blocklink_no_such_module failed"):
        load_modules("blocklink_no_such_module")


def test_leaks_are_seen_and_cleaned(modprobe, configfs, tmp_path) -> None:
    """What leak_check relies on: a snapshot sees a new SCSI disk, loop device and LIO objects; cleanup removes them."""
    from rtslib_fb import TPG, FabricModule, FileIOStorageObject, Target

    from blocklink.initiator.host.wait import wait_for

    modprobe("loop")
    before = snapshot()
    modprobe.load("scsi_debug", add_host=0)
    with open("/sys/bus/pseudo/drivers/scsi_debug/add_host", "w") as f:
        f.write("1")
    try:
        wait_for(lambda: snapshot().new_since(before).scsi_disks or None, timeout=60, watch=["/dev"], what="disk")
        img = tmp_path / "loop.img"
        img.write_bytes(b"\0" * (1 << 20))
        subprocess.run(["losetup", "-f", str(img)], check=True, timeout=60)
        so = FileIOStorageObject("leak0", str(tmp_path / "leak0.img"), size=1 << 20)
        TPG(Target(FabricModule("iscsi"), "iqn.2003-01.org.blocklink.test:leak0"), 1)
        leaked = snapshot().new_since(before)
        assert leaked.scsi_disks and leaked.loop_devices
        assert os.path.relpath(so.path, "/sys/kernel/config/target") in leaked.lio_objects
        assert "iscsi/iqn.2003-01.org.blocklink.test:leak0" in leaked.lio_objects
        assert cleanup(leaked) == []
        assert not snapshot().new_since(before)
    finally:
        with open("/sys/bus/pseudo/drivers/scsi_debug/add_host", "w") as f:
            f.write("-1")
