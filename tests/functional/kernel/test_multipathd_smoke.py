"""The multipathd fixture: the daemon is ready, builds a map for a new disk, and the map can be flushed."""

from __future__ import annotations

import os
import subprocess

import pytest

from blocklink.initiator.host.wait import wait_for

pytestmark = pytest.mark.kernel

ADD_HOST = "/sys/bus/pseudo/drivers/scsi_debug/add_host"


def holder_map(disk: str):
    """The dm map holding ``disk`` (its name), if any."""
    for dm in os.listdir(f"/sys/block/{disk}/holders") if os.path.isdir(f"/sys/block/{disk}/holders") else []:
        with open(f"/sys/block/{dm}/dm/name") as f:
            return f.read().strip()
    return None


def test_map_for_a_new_disk_and_flush(multipathd, modprobe) -> None:
    assert "idle" in multipathd.command("show", "daemon")
    assert multipathd.running() and multipathd.pid > 0
    modprobe.load("scsi_debug", add_host=0)
    before = set(os.listdir("/sys/block"))
    with open(ADD_HOST, "w") as f:
        f.write("1")
    try:
        disk = wait_for(lambda: next(iter(sorted(set(os.listdir("/sys/block")) - before - {"dm-0"})), None),
                        timeout=60, watch=["/dev"], what="scsi_debug disk")
        assert disk.startswith("sd")
        name = wait_for(lambda: holder_map(disk), timeout=90, watch=["/dev", "/dev/mapper"],
                        what=f"multipath map over {disk}")
        assert name in multipathd.command("show", "maps")
        assert not name.startswith("mpath")  # user_friendly_names no: the WWID names the map

        def flush():  # a new map is briefly open (udev's blkid probes it), as the connector knows too
            res = subprocess.run(["multipath", "-f", name], capture_output=True, text=True, timeout=60)
            if res.returncode != 0 and "in use" in res.stderr:
                return None
            assert res.returncode == 0, res.stderr
            return True

        wait_for(flush, timeout=30, what=f"multipath -f {name} (map in use)")
        assert holder_map(disk) is None
    finally:
        with open(ADD_HOST, "w") as f:
            f.write("-1")
