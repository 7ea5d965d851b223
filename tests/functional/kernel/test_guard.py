"""The wrong-volume guard on a real kernel: an iSCSI volume attached from LIO with ISCSIConnector,
the guard running over its attachment record (SQLite).

* The array remaps the LUN to another backstore (same target, same LUN number, same size) while the
  volume is attached; a rescan (what another attach's session scan does) makes the kernel re-read
  the LU's identity. The guard sets the disk offline within 1 s of that, and a write through a file
  descriptor opened before the remap (a VM's) fails with EIO and never reaches the other backstore.
* A legitimate extend (the backstore grows, ``extend_volume`` rescans) leaves the disk running: the
  guard reports the new capacity with the same WWN and nothing else.
* ``blocklink guard`` (the CLI, a separate process) does the same and prints the event.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import subprocess
import sys
import threading
import time
import warnings
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from blocklink.attach.records import AttachmentStore
from blocklink.guard import GuardEvent, WrongVolumeGuard
from blocklink.initiator.iscsi import ISCSIConnector
from blocklink.target.lio import LioTarget
from tests.functional.kernel.test_iscsi_connector import assert_host_clean, check_io, resize_fileio, sh
from tests.harness.guest.blockio import block_size

pytestmark = pytest.mark.kernel

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MiB = 1 << 20


@pytest.fixture
def lio(lio_clean: Any, tmp_path: Any) -> LioTarget:
    return LioTarget(portals=["127.0.0.1:3260"], backing_dir=str(tmp_path), lock_path=str(tmp_path / "target-locks"))


class Seen:
    """Guard callback: keeps (monotonic time, event); tests wait on it (no sleeping)."""

    def __init__(self) -> None:
        self.events: List[Tuple[float, GuardEvent]] = []
        self.cond = threading.Condition()

    def __call__(self, ev: GuardEvent) -> None:
        with self.cond:
            self.events.append((time.monotonic(), ev))
            self.cond.notify_all()

    def wait(self, kind: str, timeout: float = 30.0) -> Tuple[float, GuardEvent]:
        with self.cond:
            assert self.cond.wait_for(lambda: any(e.kind == kind for _, e in self.events), timeout), self.events
            return [(t, e) for t, e in self.events if e.kind == kind][0]

    def kinds(self) -> List[str]:
        with self.cond:
            return [e.kind for _, e in self.events]


def attach(lio: LioTarget, tmp_path: Any, vid: str, store: AttachmentStore) -> Tuple[ISCSIConnector, Any, Any, str]:
    conn = ISCSIConnector(timeout=60, lock_path=str(tmp_path / "locks"))
    lio.create_export(vid, size=32 * MiB, chap=False)
    props = dict(conn.get_connector_properties(), host="guest", multipath=False)
    info = lio.initialize_connection(vid, props)
    info = info.replace(targets=info.targets[:1], form="single")
    dev = conn.connect_volume(info)
    rec = store.reserve(vid, "vm1")
    store.record_step(rec.id, "initialize", protocol="iscsi", connection_info=info.to_dict(), host=os.uname().nodename)
    store.record_step(rec.id, "connect", host_device=dev.path, extra={"device_wwn": dev.wwn})
    store.transition(rec.id, ["attaching"], "attached")
    return conn, info.replace(wwn=dev.wwn), dev, rec.id


def remap_lun0(iqn: str, so_name: str, backing: str, size: int) -> None:
    """What the array does under the host: LUN 0 of the target (and of each ACL) now leads to another
    backstore. The session stays logged in."""
    from rtslib_fb import LUN, FileIOStorageObject, MappedLUN, RTSRoot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tpg = [t for t in RTSRoot().tpgs if t.parent_target.wwn == iqn][0]
        so = FileIOStorageObject(so_name, backing, size=size, write_back=False)
        acls = list(tpg.node_acls)
        for acl in acls:
            for ml in list(acl.mapped_luns):
                ml.delete()
        for lun in list(tpg.luns):
            lun.delete()
        new = LUN(tpg, 0, so)
        for acl in acls:
            MappedLUN(acl, 0, new)


def rescan(name: str) -> Tuple[float, float]:
    """What another attach's session scan does to this disk; returns (start, end) wall-clock times."""
    t0 = time.time()
    with open(f"/sys/block/{name}/device/rescan", "w") as f:
        f.write("1")
    return t0, time.time()


def state(name: str) -> str:
    with open(f"/sys/block/{name}/device/state") as f:
        return f.read().strip()


def size(name: str) -> int:
    with open(f"/sys/block/{name}/size") as f:
        return int(f.read()) * 512


def wwid(name: str) -> str:
    with open(f"/sys/block/{name}/device/wwid") as f:
        return f.read().strip()


def open_direct(path: str) -> Tuple[int, mmap.mmap]:
    buf = mmap.mmap(-1, 4096)
    buf.write(b"\xab" * 4096)
    return os.open(path, os.O_RDWR | os.O_DIRECT), buf


def drop_offline_disk(name: str, iqn: str) -> None:
    """The disk holds another volume now: it goes without a flush, then the session and its record."""
    if os.path.exists(f"/sys/block/{name}"):
        with open(f"/sys/block/{name}/device/delete", "w") as f:
            f.write("1")
    sh("iscsiadm", "-m", "node", "-T", iqn, "--logout", ok=(0, 21))
    sh("iscsiadm", "-m", "node", "-T", iqn, "-o", "delete", ok=(0, 21))


@pytest.fixture
def store(tmp_path: Any) -> Iterator[AttachmentStore]:
    st = AttachmentStore(str(tmp_path / "attachments.db"))
    yield st
    st.close()


def test_a_lun_remapped_to_another_backstore_is_offlined_within_a_second(lio, iscsid, store, tmp_path) -> None:
    conn, info, dev, rid = attach(lio, tmp_path, "guard1", store)
    name, iqn = os.path.basename(dev.path), info.targets[0].iqn
    other = str(tmp_path / "other-volume")
    seen = Seen()
    fd: Optional[int] = None
    try:
        fd, buf = open_direct(dev.path)  # the VM's descriptor, open across the remap
        assert os.pwritev(fd, [buf], 0) == 4096
        with WrongVolumeGuard(store, callback=seen) as guard:
            assert guard.watched() == {name: dev.wwn}
            remap_lun0(iqn, "other-volume", other, 32 * MiB)
            assert state(name) == "running" and seen.kinds() == []  # the kernel has not noticed yet
            t0, t1 = rescan(name)
            _, ev = seen.wait("wwn_changed")  # ev.time: just after the guard's offline write returned
        print(f"rescan took {t1 - t0:.3f}s; offline {ev.time - t1:+.3f}s after it returned "
              f"({ev.time - t0:.3f}s after it started); trigger {ev.trigger}; size now {size(name)} bytes")
        assert ev.time - t1 < 1.0
        assert (ev.device, ev.action, ev.attachment_id, ev.volume_id) == (name, "offline", rid, "guard1")
        assert ev.expected_wwn == dev.wwn and ev.found_wwn != dev.wwn and wwid(name) != f"naa.{dev.wwn[1:]}"
        assert state(name) == "offline"
        with pytest.raises(OSError) as err:  # the VM's next write
            os.pwritev(fd, [buf], 0)
        # EIO from the offline disk; ENOSPC when the offline landed inside the rescan, whose READ
        # CAPACITY then failed (capacity 0: the block layer refuses the write before any command)
        assert err.value.errno in (errno.EIO, errno.ENOSPC), err.value
        print(f"the write failed: {err.value!r}")
        with pytest.raises(OSError) as err:  # and nobody opens it any more
            os.open(dev.path, os.O_RDWR | os.O_DIRECT)
        assert err.value.errno in (errno.ENXIO, errno.EIO)
        with open(other, "rb") as f:
            assert set(f.read(4096)) <= {0}  # the other volume got nothing (its file may be sparse, even empty)
        assert store.get(rid).extra["guard_events"][0]["kind"] == "wwn_changed"  # recorded
    finally:
        if fd is not None:
            os.close(fd)
        drop_offline_disk(name, iqn)
        store.transition(rid, ["attached"], "detached")
    assert_host_clean(iqn)


def test_extend_volume_does_not_trip_the_guard(lio, iscsid, store, tmp_path) -> None:
    conn, info, dev, rid = attach(lio, tmp_path, "guard2", store)
    name = os.path.basename(dev.path)
    seen = Seen()
    with WrongVolumeGuard(store, callback=seen) as guard:
        assert guard.watched() == {name: dev.wwn}
        resize_fileio("volume-guard2", str(tmp_path / "volume-guard2"), 48 * MiB)
        assert conn.extend_volume(info) == 48 * MiB
        _, ev = seen.wait("resized")  # the RESIZE uevent, or the sweep if it read the size first
        assert ev.expected_wwn == ev.found_wwn == dev.wwn and ev.action == "none"
        check_io(dev, str(tmp_path / "volume-guard2"), offset=40 * MiB)
        assert state(name) == "running"
        guard.check()  # one more look at everything, to be sure nothing is pending
    assert seen.kinds() == ["resized"] and block_size(dev.path) == 48 * MiB
    assert "guard_events" not in store.get(rid).extra
    conn.disconnect_volume(info, dev)
    store.transition(rid, ["attached"], "detached")
    assert_host_clean(info.targets[0].iqn)


def test_the_guard_cli_offlines_a_remapped_lun(lio, iscsid, store, tmp_path) -> None:
    conn, info, dev, rid = attach(lio, tmp_path, "guard3", store)
    name, iqn = os.path.basename(dev.path), info.targets[0].iqn
    proc = subprocess.Popen([sys.executable, "-m", "blocklink.cli", "guard", "--store", str(tmp_path /
                            "attachments.db")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=TOP))
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"watching": {name: dev.wwn}}
        remap_lun0(iqn, "other-cli", str(tmp_path / "other-cli"), 24 * MiB)  # another size: a RESIZE uevent too
        rescan(name)
        line = json.loads(proc.stdout.readline())["event"]
        assert (line["kind"], line["device"], line["action"]) == ("wwn_changed", name, "offline")
        assert state(name) == "offline"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        drop_offline_disk(name, iqn)
        store.transition(rid, ["attached"], "detached")
    assert proc.returncode == 1, err  # it took a disk offline
    assert_host_clean(iqn)
