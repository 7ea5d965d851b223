"""FibreChannelConnector on a real kernel FC stack: FCoE VN2VN over four virtio-net NICs on one hub.

Fabric (fixed MACs, so fixed WWNs; WWPN = 0x2000 + MAC)::

    A1 0f:01, A2 0f:02   initiators (the connector's HBAs)
    B1 0f:03             LIO tcm_fc target, ACLs for A1 and A2
    B2 0f:04             LIO tcm_fc target, ACL for A1 only (A2 sees B2 as a mere "FCP Initiator")

Every FCoE port logs in with every other, so without an ``initiator_target_map`` A1 reaches a LUN
through B1 and B2, A2 through B1. LUNs are mapped after the logins (as Cinder maps a volume to
an already zoned host), so only the connector's targeted scans make them appear. Each test checks
what the guest is left with; the last one tears the fabric down and checks nothing FC is left.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from blocklink.connection import AttachedDevice
from blocklink.errors import DeviceMismatch, VolumeNotFound
from blocklink.executor import CommandResult, ProcessExecutor
from blocklink.initiator.fc import FibreChannelConnector
from blocklink.initiator.host import fc
from blocklink.initiator.host.wait import wait_for
from blocklink.locks import LockFactory
from tests.harness.fcoe import FcLun, FcoeFabric, TcmFcTarget, fcoe_wwpn
from tests.harness.guest import nic_mac
from tests.harness.guest.blockio import block_size, direct_read, direct_write

pytestmark = pytest.mark.kernel(nics=4)

MiB = 1 << 20
A1, A2, B1, B2 = (nic_mac(i) for i in range(4))
W_A1, W_A2, W_B1, W_B2 = (fcoe_wwpn(m) for m in (A1, A2, B1, B2))


@dataclass
class Fabric:
    fabric: FcoeFabric
    targets: Dict[str, TcmFcTarget]
    timings: Dict[str, List[float]] = field(default_factory=dict)
    down: bool = False

    def teardown(self) -> List[str]:
        if self.down:
            return []
        self.down = True
        for t in self.targets.values():
            t.delete()
        return self.fabric.stop()

    def timed(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        t0 = time.monotonic()
        out = fn(*args, **kw)
        self.timings.setdefault(what, []).append(time.monotonic() - t0)
        return out


def fc_state() -> Dict[str, List[str]]:
    """Everything FC/FCoE or SCSI-disk-like in the guest now."""
    return {"fc_hosts": sorted(os.listdir("/sys/class/fc_host")),
            "fcoe_ctlrs": sorted(os.listdir("/sys/bus/fcoe/devices")) if os.path.isdir("/sys/bus/fcoe/devices") else [],
            "sd": sd_disks(), "dm": sorted(glob.glob("/sys/block/dm-*")),
            "lio_fc": sorted(n for n in os.listdir("/sys/kernel/config/target/fc") if ":" in n)
            if os.path.isdir("/sys/kernel/config/target/fc") else []}


def sd_disks() -> List[str]:
    return sorted(os.path.basename(p) for p in glob.glob("/sys/block/sd*"))


def hctl(dev: str) -> str:
    return os.path.basename(os.path.realpath(f"/sys/block/{os.path.basename(os.path.realpath(dev))}/device"))


def scsi_id(dev: str) -> str:
    res = subprocess.run(["/lib/udev/scsi_id", "--page", "0x83", "--whitelisted", dev], capture_output=True,
                         text=True, timeout=30)
    return res.stdout.strip()


@pytest.fixture(autouse=True)
def connector_log(caplog: Any) -> Iterator[None]:
    """The connector's debug log with timestamps, printed after each test (shown with ``-rP``)."""
    caplog.set_level(logging.DEBUG, logger="blocklink")
    yield
    records = caplog.get_records("call")
    t0 = records[0].created if records else 0.0
    for r in records:
        if r.name.startswith("blocklink"):
            print(f"  {r.created - t0:8.3f}s {r.levelname:7s} {r.name}: {r.getMessage()}")


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: Any) -> Iterator[Fabric]:
    backing = str(tmp_path_factory.mktemp("fc-backing"))
    targets: Dict[str, TcmFcTarget] = {}
    fcoe = FcoeFabric([A1, A2, B1, B2])
    fab = Fabric(fcoe, targets)
    try:
        targets["B1"] = TcmFcTarget(W_B1, backing).create(initiators=[W_A1, W_A2])
        targets["B2"] = TcmFcTarget(W_B2, backing).create(initiators=[W_A1])
        t0 = time.monotonic()
        fcoe.start()
        for ini, tgt in ((A1, W_B1), (A2, W_B1), (A1, W_B2)):
            fcoe.wait_for_port(ini, tgt)
        print(f"FCoE fabric up with target logins in {time.monotonic() - t0:.2f}s")
        # warm up what a long-lived caller has imported already (oslo locks and processutils load slowly
        # from 9p under TCG), so the timings below are the connector's own
        with LockFactory("/run/blocklink/fc-test-locks").lock("warm-up"):
            ProcessExecutor().run(["true"])
        yield fab
    finally:
        left = fab.teardown()
        assert not left, left
        for what, times in sorted(fab.timings.items()):
            print(f"{what}: {', '.join(f'{t:.3f}s' for t in times)}")


@pytest.fixture
def luns(fabric: Fabric, tmp_path: Any) -> Iterator[Callable[..., FcLun]]:
    """``luns(name, lun, size, target="B1", initiators=[...], share=None)``: a LUN mapped now (after the
    logins); removed after the test."""
    made: List[Tuple[TcmFcTarget, int]] = []

    def make(name: str, lun: int, size: int = 32 * MiB, target: str = "B1",
             initiators: Sequence[str] = (W_A1, W_A2), share: Optional[FcLun] = None) -> FcLun:
        t = fabric.targets[target]
        t.backing_dir = str(tmp_path)
        entry = t.add_lun(name, lun, size, initiators=initiators, share=share)
        made.append((t, lun))
        return entry

    yield make
    for t, lun in reversed(made):  # shared LUNs first, their storage objects' owners last
        t.remove_lun(lun)


class TimedExecutor(ProcessExecutor):
    """Runs commands for real and notes how long each took (printed with the test's output)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: List[Tuple[float, float, str]] = []
        self.t0 = time.monotonic()

    def run(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        t0 = time.monotonic()
        try:
            return super().run(argv, **kw)
        finally:
            self.log.append((t0 - self.t0, time.monotonic() - t0, " ".join(argv[:4])))

    def print(self) -> None:
        for start, took, cmd in self.log:
            print(f"  +{start:7.3f}s {took:6.3f}s {cmd}")


def connector(**kw: Any) -> FibreChannelConnector:
    kw.setdefault("timeout", 30)
    kw.setdefault("executor", TimedExecutor())
    return FibreChannelConnector(lock_path="/run/blocklink/fc-test-locks", **kw)


def check_io(dev: AttachedDevice, backing: str, offset: int = 8192) -> None:
    data = os.urandom(MiB)
    direct_write(dev.path or "", data, offset=offset)
    assert direct_read(dev.path or "", len(data), offset=offset) == data
    with open(backing, "rb") as f:  # the bytes crossed the FC fabric into the target's file
        f.seek(offset)
        assert f.read(len(data)) == data


def by_path_link(ini_mac: str, wwpn: str, lun: int, fabric: Fabric) -> str:
    name = fc.by_path_name(fabric.fabric.host(ini_mac), wwpn, lun)
    assert name is not None
    return f"/dev/disk/by-path/{name}"


def wait_link(link: str, timeout: float = 90) -> str:  # udev under a loaded TCG guest: tens of seconds
    return wait_for(lambda: os.path.realpath(link) if os.path.exists(link) else None, timeout=timeout,
                    watch=["/dev/disk/by-path"], what=link)


# ---------------------------------------------------------------------------------------------
def test_connector_properties(fabric: Fabric) -> None:
    props = connector().get_connector_properties()
    assert sorted(props["wwpns"]) == sorted([W_A1, W_A2, W_B1, W_B2])
    assert sorted(props["wwnns"]) == sorted("1000" + w[4:] for w in (W_A1, W_A2, W_B1, W_B2))


def test_single_path_attach_io_extend_detach(fabric: Fabric, luns: Any, record_property: Any) -> None:
    vol = luns("single1", 1)
    other = luns("single2", 2)  # another volume on the same ports: must not surface
    info = {"driver_volume_type": "fibre_channel",
            "data": {"target_wwn": [W_B1.upper()], "target_lun": 1, "initiator_target_map": {W_A1: [W_B1]}}}
    conn = connector()
    assert sd_disks() == []
    dev = fabric.timed("single-path connect", conn.connect_volume, info)
    record_property("fc_connect_seconds", round(fabric.timings["single-path connect"][-1], 3))
    assert dev.path and dev.path.startswith("/dev/sd") and dev.multipath_id is None
    assert sd_disks() == [os.path.basename(dev.path)]  # only LUN 1, only through A1 -> B1
    host_a1 = fabric.fabric.host(A1).host
    assert hctl(dev.path).startswith(f"{host_a1}:0:") and hctl(dev.path).endswith(":1")
    assert wait_link(by_path_link(A1, W_B1, 1, fabric)) == dev.path  # udev's name for it
    assert dev.wwn == scsi_id(dev.path)  # WWN read from sysfs VPD = udev's scsi_id
    assert block_size(dev.path) == 32 * MiB
    check_io(dev, vol.path)
    assert conn.get_volume_paths(info) == [dev.path]
    assert conn.connect_volume(info) == dev  # idempotent

    fabric.targets["B1"].resize(1, 48 * MiB)
    assert fabric.timed("extend", conn.extend_volume, {**info["data"], "wwn": dev.wwn}) == 48 * MiB
    assert block_size(dev.path) == 48 * MiB
    check_io(dev, vol.path, offset=40 * MiB)

    fabric.timed("single-path disconnect", conn.disconnect_volume, info, dev)
    assert not os.path.exists(dev.path) and sd_disks() == []
    assert not os.path.exists(by_path_link(A1, W_B1, 1, fabric)) or wait_for(
        lambda: True if not os.path.exists(by_path_link(A1, W_B1, 1, fabric)) else None, timeout=20,
        watch=["/dev/disk/by-path"], what="by-path link removal")
    assert conn.get_volume_paths(info) == []
    conn.disconnect_volume(info, dev)  # twice is harmless
    for _ in range(3):  # a few more attach/detach cycles for the timings
        again = fabric.timed("single-path connect", conn.connect_volume, info)
        assert again.wwn == dev.wwn
        fabric.timed("single-path disconnect", conn.disconnect_volume, info, again)
    assert sd_disks() == [] and other.lun == 2


def test_multipath_over_the_nics(fabric: Fabric, luns: Any, multipathd: Any) -> None:
    vol = luns("mp1", 3)
    luns("mp1-b2", 3, target="B2", initiators=[W_A1], share=vol)  # the same LU behind B2 too
    conn = connector(use_multipath=True, enforce_multipath=True)
    hosts = {fabric.fabric.host(m).host: m for m in (A1, A2)}

    # the map pairs each initiator with B1 only: two paths, two targeted scans
    mapped = {"target_wwn": [W_B1, W_B2], "target_lun": 3, "initiator_target_map": {W_A1: [W_B1], W_A2: [W_B1]}}
    dev = fabric.timed("multipath connect (2 paths)", conn.connect_volume, mapped)
    assert dev.path and dev.path.startswith("/dev/dm-") and dev.multipath_id == dev.wwn == scsi_id(dev.path)
    assert sorted(hosts[int(hctl(p).split(":")[0])] for p in dev.paths) == sorted([A1, A2])
    assert sorted(os.listdir(f"/sys/block/{os.path.basename(dev.path)}/slaves")) == sd_disks()
    check_io(dev, vol.path)
    fabric.timed("multipath disconnect", conn.disconnect_volume, mapped, dev)
    assert sd_disks() == [] and glob.glob("/sys/block/dm-*") == []

    # no map: every online HBA and every target port (A2 is refused by B2: not a path)
    plain = {"target_wwn": [W_B1, W_B2], "target_lun": 3}
    dev = fabric.timed("multipath connect (3 paths)", conn.connect_volume, plain)
    got = sorted((hosts[int(hctl(p).split(":")[0])], hctl(p)) for p in dev.paths)
    assert [m for m, _ in got] == sorted([A1, A1, A2]), got
    check_io(dev, vol.path, offset=MiB)
    fabric.targets["B1"].resize(3, 40 * MiB)
    assert fabric.timed("multipath extend", conn.extend_volume, {**plain, "wwn": dev.wwn}) == 40 * MiB
    assert block_size(dev.path or "") == 40 * MiB
    fabric.timed("multipath disconnect", conn.disconnect_volume, plain, dev)
    assert sd_disks() == [] and glob.glob("/sys/block/dm-*") == []
    assert isinstance(conn.executor, TimedExecutor)
    conn.executor.print()


def test_lun_not_mapped_to_this_initiator(fabric: Fabric, luns: Any) -> None:
    luns("a1only", 4, initiators=[W_A1])  # on B1, mapped to A1's WWPN only
    conn = connector(timeout=8)
    t0 = time.monotonic()
    with pytest.raises(VolumeNotFound, match="report no such LUN"):
        conn.connect_volume({"target_wwn": W_B1, "target_lun": 4, "initiator_target_map": {W_A2: [W_B1]}})
    declined = time.monotonic() - t0
    print(f"unmapped LUN refused in {declined:.3f}s")
    assert declined < 8 and sd_disks() == []  # the target answered: no waiting for the timeout

    # B2 has no ACL for A2 at all: logged in, but not as a target for A2
    luns("b2a1", 5, target="B2", initiators=[W_A1])
    t0 = time.monotonic()
    with pytest.raises(VolumeNotFound, match="not an FCP target for this initiator"):
        connector(timeout=3).connect_volume(
            {"target_wwn": W_B2, "target_lun": 5, "initiator_target_map": {W_A2: [W_B2]}})
    assert time.monotonic() - t0 < 3 + 5 and sd_disks() == []


def test_lun_above_255_and_wrong_wwn(fabric: Fabric, luns: Any) -> None:
    vol = luns("big", 300, initiators=[W_A1])
    conn = connector()
    info = {"target_wwn": W_B1, "target_lun": 300, "initiator_target_map": {W_A1: [W_B1]}}
    with pytest.raises(DeviceMismatch):
        conn.connect_volume({**info, "wwn": "36001405" + "0" * 24 + "1"})
    assert sd_disks() == []  # the disk our scan surfaced was removed again
    dev = conn.connect_volume(info)
    try:
        assert hctl(dev.path or "").endswith(":300")
        link = by_path_link(A1, W_B1, 300, fabric)
        assert link.endswith("-lun-0x012c000000000000") and wait_link(link) == dev.path
        check_io(dev, vol.path)
    finally:
        conn.disconnect_volume(info, dev)
    assert sd_disks() == []


def test_soak_single_path(fabric: Fabric, luns: Any, record_property: Any) -> None:
    """Attach, I/O that must land in the target's file, detach: again and again, leak counters after every
    cycle (``cycles("fc_single_path")``: 200 with BLOCKLINK_LONG=1)."""
    from tests.functional.kernel.test_soak_kernel import soak

    vol = luns("soak", 6, initiators=[W_A1])
    info = {"driver_volume_type": "fibre_channel",
            "data": {"target_wwn": [W_B1], "target_lun": 6, "initiator_target_map": {W_A1: [W_B1]}}}
    conn = connector()

    def cycle(i: int) -> None:
        dev = conn.connect_volume(info)
        check_io(dev, vol.path, offset=(i % 8) * 4 * MiB)
        conn.disconnect_volume(info, dev)

    soak("fc_single_path", cycle, record_property)
    assert sd_disks() == []


def test_teardown_leaves_nothing(fabric: Fabric) -> None:
    """Last: tear the fabric down here, so a leftover fails a test of its own."""
    assert fabric.teardown() == []
    assert fc_state() == {"fc_hosts": [], "fcoe_ctlrs": [], "sd": [], "dm": [], "lio_fc": []}
