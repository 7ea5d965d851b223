"""ISCSIConnector against LIO targets in the real kernel (open-iscsi, dm-multipath, udev).

Each test checks what the host is left with: no iSCSI session (``iscsiadm -m session``), no dm
map (``multipath -ll``), no node record, no SCSI disk (the ``leak_check`` fixture also checks).
Timings (single attach, 16 parallel attaches) are recorded as test properties and printed.
"""

from __future__ import annotations

import glob
import os
import subprocess
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from blocklink import privileged
from blocklink.connection import AttachedDevice, IscsiInfo, IscsiTarget, Portal
from blocklink.errors import AuthenticationFailed, DeviceMismatch
from blocklink.executor import CommandResult, ProcessExecutor
from blocklink.initiator.iscsi import ISCSIConnector
from blocklink.masking import Secret
from blocklink.target.lio import LioTarget
from tests.harness.guest.blockio import block_size, direct_read, direct_write

pytestmark = pytest.mark.kernel

MiB = 1 << 20


class RecordingExecutor(ProcessExecutor):
    """Runs commands for real and keeps every argv, to prove no secret was ever on one."""

    def __init__(self) -> None:
        super().__init__()
        self.argvs: List[Tuple[str, ...]] = []
        self.seconds: List[Tuple[str, float]] = []
        self._mu = threading.Lock()

    def run(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        t0 = time.monotonic()
        try:
            return super().run(argv, **kw)
        finally:
            with self._mu:
                self.argvs.append(tuple(argv))
                self.seconds.append((" ".join(a for a in argv[:5] if not a.startswith("iqn.")), time.monotonic() - t0))

    def profile(self, start: int = 0) -> str:
        """Seconds spent per kind of command (count, total, max), slowest kinds first."""
        kinds: Dict[str, List[float]] = {}
        for what, secs in self.seconds[start:]:
            key = " ".join(w for w in what.split() if not w[0].isdigit() and not w.startswith("/dev/"))
            kinds.setdefault(key, []).append(secs)
        rows = sorted(kinds.items(), key=lambda kv: -sum(kv[1]))
        return "\n".join(f"  {len(v):3d} x {k:<45} total {sum(v):7.2f}s max {max(v):6.2f}s" for k, v in rows)

    def assert_never_on_argv(self, *secrets: Optional[Secret]) -> None:
        for s in secrets:
            if s:
                assert not [a for a in self.argvs if any(s.reveal() in arg for arg in a)], "secret on argv"


def sh(*argv: str, ok: Sequence[int] = (0,)) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    assert res.returncode in ok, f"{' '.join(argv)}: exit {res.returncode}: {res.stderr}"
    return res.stdout


def assert_host_clean(*iqns: str) -> None:
    """Nothing left: no session, no map, no SCSI disk, no node record of the test's targets."""
    assert sh("iscsiadm", "-m", "session", ok=(0, 21)).strip() == ""
    assert sh("multipath", "-ll", ok=(0, 1)).strip() == ""
    assert glob.glob("/sys/block/sd*") == []
    for iqn in iqns:
        assert glob.glob(f"/etc/iscsi/nodes/{iqn}/*") == []


def sd_disks() -> List[str]:
    return sorted(os.path.basename(p) for p in glob.glob("/sys/block/sd*"))


def scsi_id(dev: str) -> str:
    return sh("/lib/udev/scsi_id", "--page", "0x83", "--whitelisted", dev).strip()


@pytest.fixture
def executor() -> RecordingExecutor:
    return RecordingExecutor()


@pytest.fixture
def lio(lio_clean: Any, tmp_path: Any) -> Any:
    """A LIO target helper with portals on 127.0.0.1 and 127.0.0.2 (127.0.0.3 stays unused: 'down')."""
    return LioTarget(portals=["127.0.0.1:3260", "127.0.0.2:3260"], backing_dir=str(tmp_path),
                     lock_path=str(tmp_path / "target-locks"))


def connector(executor: RecordingExecutor, tmp_path: Any, **kw: Any) -> ISCSIConnector:
    kw.setdefault("timeout", 60)
    return ISCSIConnector(executor=executor, lock_path=str(tmp_path / "locks"), **kw)


def export(lio: LioTarget, conn: ISCSIConnector, volume_id: str, size: int = 32 * MiB, *,
           mutual: bool = False, multipath: bool = False) -> IscsiInfo:
    lio.create_export(volume_id, size=size, chap=True, mutual_chap=mutual)
    props = dict(conn.get_connector_properties(), host="guest", multipath=multipath)
    info: IscsiInfo = lio.initialize_connection(volume_id, props)
    if not multipath:  # the single-portal form Cinder sends without multipath
        info = info.replace(targets=info.targets[:1], form="single")
    return info


def check_io(dev: AttachedDevice, backing: str, offset: int = 8192) -> None:
    data = os.urandom(MiB)
    direct_write(dev.path or "", data, offset=offset)
    assert direct_read(dev.path or "", len(data), offset=offset) == data
    with open(backing, "rb") as f:  # the bytes reached the target's backstore
        f.seek(offset)
        assert f.read(len(data)) == data


# ---------------------------------------------------------------------------------------------
def test_single_path_attach_io_detach(lio, iscsid, executor, tmp_path, record_property) -> None:
    conn = connector(executor, tmp_path)
    info = export(lio, conn, "single1")
    t0 = time.monotonic()
    dev = conn.connect_volume(info)
    attach_s = time.monotonic() - t0
    record_property("single_attach_seconds", round(attach_s, 3))
    print(f"single attach: {attach_s:.3f}s")

    assert dev.path and dev.path.startswith("/dev/sd") and dev.multipath_id is None
    assert dev.wwn == scsi_id(dev.path)  # our VPD parsing agrees with udev's scsi_id
    conn.disconnect_volume(info, dev)
    t0 = time.monotonic()  # again, now that imports and caches are warm
    mark = len(executor.seconds)
    dev = conn.connect_volume(info)
    warm_s = time.monotonic() - t0
    record_property("single_attach_warm_seconds", round(warm_s, 3))
    print(f"single attach (warm): {warm_s:.3f}s, of which in commands:\n" + executor.profile(mark))
    assert block_size(dev.path) == 32 * MiB
    assert conn.get_volume_paths(info) == [dev.path]
    rec = glob.glob(f"/etc/iscsi/nodes/{info.targets[0].iqn}/*")
    assert rec and all(os.stat(r).st_mode & 0o077 == 0 for r in rec)  # the CHAP secret is in a 0600 file
    check_io(dev, str(tmp_path / "volume-single1"))
    assert conn.connect_volume(info) == dev  # idempotent

    conn.disconnect_volume(info, dev)
    assert not os.path.exists(dev.path)
    assert_host_clean(info.targets[0].iqn)
    conn.disconnect_volume(info, dev)  # twice is harmless
    executor.assert_never_on_argv(info.auth_password)


def test_detach_flush_writes_out_what_a_holder_left_in_the_page_cache(tmp_path) -> None:
    """The flush step of a detach (privileged.flush_block: the BLKFLSBUF ioctl ``blockdev --flushbufs``
    makes, now without the child process) writes bytes left in a device's page cache by a holder
    that still has it open. A loop device shows it: its backing file gets them only then."""
    sh("modprobe", "loop")
    img = str(tmp_path / "flush.img")
    with open(img, "wb") as f:
        f.truncate(4 * MiB)
    loop = sh("losetup", "--find", "--show", img).strip()
    data = os.urandom(64 * 1024)

    def backing() -> bytes:
        with open(img, "rb") as f:
            f.seek(MiB)
            return f.read(len(data))

    try:
        fd = os.open(loop, os.O_RDWR)
        try:
            os.pwrite(fd, data, MiB)
            before = backing()
            privileged.flush_block(loop)
            after = backing()
        finally:
            os.close(fd)
    finally:
        sh("losetup", "-d", loop)
    assert before != data  # only in the loop device's page cache so far
    assert after == data


def test_multipath_two_portals(lio, iscsid, multipathd, executor, tmp_path) -> None:
    conn = connector(executor, tmp_path, use_multipath=True, enforce_multipath=True)
    info = export(lio, conn, "mpath1", multipath=True)
    assert len(info.targets) == 2
    dev = conn.connect_volume(info)
    assert dev.path and dev.path.startswith("/dev/dm-") and dev.multipath_id == dev.wwn
    assert len(dev.paths) == 2
    slaves = sorted(os.listdir(f"/sys/block/{os.path.basename(dev.path)}/slaves"))
    assert slaves == sorted(os.path.basename(p) for p in dev.paths)
    assert dev.wwn in sh("multipath", "-ll")
    check_io(dev, str(tmp_path / "volume-mpath1"))
    conn.disconnect_volume(info, dev)
    assert_host_clean(info.targets[0].iqn)


def test_multipath_one_portal_down(lio, iscsid, multipathd, executor, tmp_path) -> None:
    # one login try with a short timeout, so the dead portal costs seconds, not iscsid.conf's minutes
    conn = connector(executor, tmp_path, use_multipath=True, enforce_multipath=True, login_retries=1,
                     login_timeout=5)
    info = export(lio, conn, "mpath2", multipath=True)
    up = info.targets[0]
    down = IscsiTarget(Portal.of("127.0.0.3", 3260), up.iqn, up.lun)  # nobody listens there
    info = info.replace(targets=(up, down), primary=up, form="both")
    t0 = time.monotonic()
    dev = conn.connect_volume(info)
    print(f"multipath attach with one portal down: {time.monotonic() - t0:.3f}s")
    assert dev.path and dev.path.startswith("/dev/dm-") and len(dev.paths) == 1
    check_io(dev, str(tmp_path / "volume-mpath2"))
    assert not glob.glob(f"/etc/iscsi/nodes/{up.iqn}/127.0.0.3*")  # the failed portal's record is gone
    conn.disconnect_volume(info, dev)
    assert_host_clean(info.targets[0].iqn)


def test_mutual_chap(lio, iscsid, executor, tmp_path) -> None:
    conn = connector(executor, tmp_path)
    info = export(lio, conn, "mutual1", mutual=True)
    assert info.auth_username_in and info.auth_password_in
    dev = conn.connect_volume(info)
    check_io(dev, str(tmp_path / "volume-mutual1"))
    conn.disconnect_volume(info, dev)
    assert_host_clean(info.targets[0].iqn)
    executor.assert_never_on_argv(info.auth_password, info.auth_password_in)


def test_wrong_chap_refused(lio, iscsid, executor, tmp_path) -> None:
    conn = connector(executor, tmp_path)
    info = export(lio, conn, "badchap1", mutual=True)
    bad = info.replace(auth_password=Secret("not-the-right-one"))
    with pytest.raises(AuthenticationFailed) as exc:
        conn.connect_volume(bad)
    assert "not-the-right-one" not in str(exc.value)
    assert_host_clean(info.targets[0].iqn)  # no session, no node record with the wrong secret
    wrong_mutual = info.replace(auth_password_in=Secret("wrong-target-secret"))
    with pytest.raises(AuthenticationFailed):
        conn.connect_volume(wrong_mutual)
    assert_host_clean(info.targets[0].iqn)
    executor.assert_never_on_argv(bad.auth_password, wrong_mutual.auth_password_in)


def test_sendtargets_discovery_with_chap(lio, iscsid, multipathd, executor, tmp_path) -> None:
    """target_discovered + the single-portal form + multipath: discovery (with discovery CHAP)
    finds the second portal; the discovery record holding the secret does not outlive it."""
    from rtslib_fb import FabricModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fabric = FabricModule("iscsi")
    fabric.discovery_userid, fabric.discovery_password = "discuser", "disc-secret-123"
    fabric.discovery_enable_auth = True
    try:
        conn = connector(executor, tmp_path, use_multipath=True, enforce_multipath=True)
        info = export(lio, conn, "disc1").replace(
            target_discovered=True, discovery_auth_method="CHAP", discovery_auth_username="discuser",
            discovery_auth_password=Secret("disc-secret-123"))
        iqn = info.targets[0].iqn
        assert info.form == "single"
        with pytest.raises(AuthenticationFailed):
            conn.connect_volume(info.replace(discovery_auth_password=Secret("wrong-disc-secret")))
        assert_host_clean(iqn)
        dev = conn.connect_volume(info)
        assert dev.path and dev.path.startswith("/dev/dm-") and len(dev.paths) == 2  # 127.0.0.2 was discovered
        assert glob.glob("/etc/iscsi/send_targets/*") == []
        check_io(dev, str(tmp_path / "volume-disc1"))
        conn.disconnect_volume(info, dev)
        assert_host_clean(iqn)
        executor.assert_never_on_argv(info.discovery_auth_password, info.auth_password)
    finally:
        fabric.discovery_enable_auth = False
        fabric.discovery_userid = fabric.discovery_password = ""


# ---------------------------------------------------------------------------------------------
SHARED_IQN = "iqn.2003-01.org.blocklink.test:shared"


def make_shared_target(backing_dir: str, initiator: str, luns: int = 3) -> List[str]:
    """One target, ``luns`` LUNs all mapped to our initiator; returns the backing files."""
    from rtslib_fb import LUN, TPG, FabricModule, FileIOStorageObject, MappedLUN, NetworkPortal, NodeACL, Target

    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tpg = TPG(Target(FabricModule("iscsi"), SHARED_IQN), 1)
        tpg.set_attribute("authentication", "0")
        tpg.set_attribute("generate_node_acls", "0")
        NetworkPortal(tpg, "127.0.0.1", 3260)
        acl = NodeACL(tpg, initiator)
        for n in range(luns):
            path = os.path.join(backing_dir, f"shared{n}.img")
            so = FileIOStorageObject(f"shared{n}", path, size=16 * MiB, write_back=False)
            MappedLUN(acl, n, LUN(tpg, n, so))
            files.append(path)
        tpg.enable = True
    return files


def shared_info(lun: int) -> Dict[str, Any]:
    return {"driver_volume_type": "iscsi",
            "data": {"target_portal": "127.0.0.1:3260", "target_iqn": SHARED_IQN, "target_lun": lun,
                     "volume_id": f"shared-{lun}", "target_discovered": False}}


def test_shared_target_manual_scan(lio_clean, iscsid, executor, tmp_path) -> None:
    files = make_shared_target(str(tmp_path), iscsid.initiator_iqn)
    conn = connector(executor, tmp_path)
    dev1 = conn.connect_volume(shared_info(1))
    assert sd_disks() == [os.path.basename(dev1.path or "")]  # LUNs 0 and 2 did not surface
    hctl = os.path.basename(os.path.realpath(f"/sys/block/{sd_disks()[0]}/device"))
    assert hctl.endswith(":1")
    check_io(dev1, files[1])

    dev2 = conn.connect_volume(shared_info(2))
    assert len(sd_disks()) == 2
    assert len(sh("iscsiadm", "-m", "session").splitlines()) == 1  # one session for both

    # OSSA-2023-003: LUN 1's disconnect handed LUN 2's device must refuse and touch nothing
    with pytest.raises(DeviceMismatch):
        conn.disconnect_volume(shared_info(1), dev2)
    assert len(sd_disks()) == 2

    conn.disconnect_volume(shared_info(1), dev1)
    assert sd_disks() == [os.path.basename(dev2.path or "")]  # LUN 2 stays, and so does the session
    assert len(sh("iscsiadm", "-m", "session").splitlines()) == 1
    check_io(dev2, files[2])
    conn.disconnect_volume(shared_info(2), dev2)
    assert_host_clean(SHARED_IQN)


# ---------------------------------------------------------------------------------------------
def resize_fileio(name: str, backing: str, size: int) -> None:
    """Grow a LIO fileio backstore the way targetcli would: the file, then fd_dev_size."""
    os.truncate(backing, size)
    controls = glob.glob(f"/sys/kernel/config/target/core/fileio_*/{name}/control")
    assert len(controls) == 1, controls
    with open(controls[0], "w") as f:
        f.write(f"fd_dev_size={size}")


@pytest.mark.parametrize("multipath", [False, True], ids=["single", "multipath"])
def test_extend(lio, iscsid, executor, tmp_path, multipath, request) -> None:
    if multipath:
        request.getfixturevalue("multipathd")
    conn = connector(executor, tmp_path, use_multipath=multipath, enforce_multipath=multipath)
    vid = f"grow-{int(multipath)}"
    info = export(lio, conn, vid, size=32 * MiB, multipath=multipath)
    dev = conn.connect_volume(info.replace(wwn=None))
    info = info.replace(wwn=dev.wwn)
    resize_fileio(f"volume-{vid}", str(tmp_path / f"volume-{vid}"), 48 * MiB)
    assert conn.extend_volume(info) == 48 * MiB
    assert block_size(dev.path or "") == 48 * MiB
    check_io(dev, str(tmp_path / f"volume-{vid}"), offset=40 * MiB)
    conn.disconnect_volume(info, dev)
    assert_host_clean(info.targets[0].iqn)


# ---------------------------------------------------------------------------------------------
def test_sixteen_volumes_in_parallel(lio, iscsid, executor, tmp_path, record_property) -> None:
    n = 16
    conn = connector(executor, tmp_path)
    infos = [export(lio, conn, f"par{i}", size=8 * MiB) for i in range(n)]
    spans: List[Tuple[float, float]] = []

    def attach(info: IscsiInfo) -> AttachedDevice:
        t0 = time.monotonic()
        dev = conn.connect_volume(info)
        spans.append((t0, time.monotonic()))
        return dev

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as pool:
        devs = list(pool.map(attach, infos))
    total = time.monotonic() - t0
    record_property("parallel16_attach_seconds", round(total, 3))
    print(f"16 parallel attaches: {total:.3f}s (slowest single {max(e - s for s, e in spans):.3f}s)")

    assert len({d.path for d in devs}) == n and len({d.wwn for d in devs}) == n
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap > 1, "attaches to different targets did not overlap"
    for i, dev in enumerate(devs):
        direct_write(dev.path or "", bytes([i]) * 4096)
    for i, dev in enumerate(devs):  # each volume got its own bytes: no device mix-up
        assert direct_read(dev.path or "", 4096) == bytes([i]) * 4096

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(lambda pair: conn.disconnect_volume(*pair), zip(infos, devs)))
    print(f"16 parallel detaches: {time.monotonic() - t0:.3f}s")
    print("commands (16 attaches and detaches):\n" + executor.profile())
    assert_host_clean(*(i.targets[0].iqn for i in infos))
