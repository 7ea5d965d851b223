"""Short soak in the real kernel: kernel iSCSI on LIO (CHAP), krbd, NVMe/TCP (and FC, see test_fc_connector.py);
leak counters after every cycle.

``BLOCKLINK_KERNEL_SOAK_CYCLES`` cycles per protocol (defaults in _DEFAULTS; 200 with ``BLOCKLINK_LONG=1``). For
kernel iSCSI with CHAP, every process's argv and environment is sampled during the cycles and every
command blocklink ran is kept: the CHAP password is on none of them (iscsiadm gets it from the node
record file, 0600).
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable, List

import pytest

import blocklink
from blocklink.initiator.iscsi import ISCSIConnector
from blocklink.initiator.nvmeof import NVMeOFConnector
from blocklink.target.lio import LioTarget
from blocklink.target.nvmet import NvmetTarget
from tests.harness.guest.blockio import direct_read, direct_write
from tests.harness.leaks import LeakChecker
from tests.harness.leaks import soak as run_soak
from tests.functional.kernel.test_iscsi_connector import RecordingExecutor
from tests.functional.kernel.test_nvme_tcp import connector, host, nvme_modules, target, workdir  # noqa: F401 - fixtures

pytestmark = pytest.mark.kernel

MiB = 1 << 20
_LONG = os.environ.get("BLOCKLINK_LONG", "") not in ("", "0")
# per protocol, sized so the soaks add ~1.5 min to the CI guest (TCG, loaded host: iSCSI ~5 s, krbd ~6 s, NVMe ~1.5 s,
# FC ~1 s a cycle); the FC soak lives in test_fc_connector.py, on that module's fabric
_DEFAULTS = {"kernel_iscsi_lio_chap": 10, "krbd": 6, "nvme_tcp": 15, "fc_single_path": 10}


def cycles(name: str) -> int:
    if os.environ.get("BLOCKLINK_KERNEL_SOAK_CYCLES"):
        return int(os.environ["BLOCKLINK_KERNEL_SOAK_CYCLES"])
    return 200 if _LONG else _DEFAULTS[name]


def soak(name: str, cycle: Callable[[int], None], record_property: Any) -> List[float]:
    # kernel probes: sessions, sd, dm, rbd, nbd, LIO, nvmet, NVMe controllers
    times = sorted(run_soak(name, cycles(name), cycle, LeakChecker()))
    record_property(f"{name}_cycles", len(times))
    record_property(f"{name}_median_s", round(times[len(times) // 2], 3))
    print(f"{name}: {len(times)} cycles, median {times[len(times) // 2]:.3f}s, max {times[-1]:.3f}s")
    return times


def _io(path: str, i: int) -> None:
    data = os.urandom(64 << 10)
    offset = (i % 8) * MiB
    direct_write(path, data, offset=offset)
    assert direct_read(path, len(data), offset=offset) == data


def test_soak_kernel_iscsi_lio_chap(lio_clean: Any, iscsid: Any, tmp_path: Any, record_property: Any) -> None:
    import threading

    lio = LioTarget(portals=["127.0.0.1:3260"], backing_dir=str(tmp_path), lock_path=str(tmp_path / "tlocks"))
    executor = RecordingExecutor()
    conn = ISCSIConnector(executor=executor, lock_path=str(tmp_path / "locks"), timeout=60)
    vid = "soak" + uuid.uuid4().hex[:8]
    export = lio.create_export(vid, size=16 * MiB, chap=True)
    info = lio.initialize_connection(vid, dict(conn.get_connector_properties(), host="guest"))
    info = info.replace(targets=info.targets[:1], form="single")
    password = export.chap.password.reveal().encode()
    seen: List[str] = []
    stop = threading.Event()

    def sample() -> None:  # argv/environ of every process while iscsiadm logs in and out
        while not stop.is_set():
            for pid in (p for p in os.listdir("/proc") if p.isdigit()):
                for what in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{what}", "rb") as f:
                            if password in f.read():
                                seen.append(f"/proc/{pid}/{what}")
                    except OSError:
                        pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def cycle(i: int) -> None:
        dev = conn.connect_volume(info)
        _io(dev.path or "", i)
        conn.disconnect_volume(info, dev)

    try:
        soak("kernel_iscsi_lio_chap", cycle, record_property)
    finally:
        stop.set()
        sampler.join(10)
        lio.remove_export(vid)
    assert not seen, f"the CHAP password was visible in {sorted(set(seen))}"
    executor.assert_never_on_argv(export.chap.password)
    assert any(a[0] == "iscsiadm" for a in executor.argvs)


def test_soak_krbd(ceph_cluster: Any, modprobe: Any, record_property: Any) -> None:
    modprobe("rbd")
    rbd_target = ceph_cluster.rbd_target(include_keyring=True)
    vid = "soak" + uuid.uuid4().hex[:8]
    rbd_target.create_volume(vid, 16 * MiB)
    info = rbd_target.initialize_connection(vid)
    conn = blocklink.connector_for("rbd", do_local_attach=True, device_type="krbd")

    def cycle(i: int) -> None:
        dev = conn.connect_volume(info)
        assert (dev.path or "").startswith("/dev/rbd")
        _io(dev.path or "", i)
        conn.disconnect_volume(info, dev)

    try:
        soak("krbd", cycle, record_property)
        assert ceph_cluster.watchers(f"volume-{vid}") == []
    finally:
        rbd_target.delete_volume(vid)
        rbd_target.close()


def test_soak_nvme_tcp(target: NvmetTarget, connector: NVMeOFConnector, host: Any,  # noqa: F811
                       record_property: Any) -> None:
    vid = str(uuid.uuid4())
    target.create_export(vid, size=16 * MiB)
    info = target.initialize_connection(vid, host)

    def cycle(i: int) -> None:
        dev = connector.connect_volume(info)
        _io(dev.path or "", i)
        connector.disconnect_volume(info, dev)

    try:
        soak("nvme_tcp", cycle, record_property)
    finally:
        target.remove_export(vid)
