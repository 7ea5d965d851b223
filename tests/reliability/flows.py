"""Real attach/detach flows shared by the secret, fault and soak suites (tgtd, Ceph, libvirtd + QEMU)."""

from __future__ import annotations

import mmap
import os
import secrets
import shutil
import tempfile
import uuid
from typing import Any, Callable, Dict, Iterator, Optional

import pytest

import blocklink
from blocklink.attach.flow import AttachFlow, VolumeSpec
from blocklink.attach.records import AttachmentStore
from blocklink.initiator.qsd import DaemonLayout
from blocklink.initiator.userspace import UserspaceISCSIConnector
from tests.harness.leaks import LeakChecker

MiB = 1 << 20
HOST_IQN = "iqn.2024-01.test.blocklink:reliability"


def connector_props() -> Dict[str, Any]:
    return blocklink.get_connector_properties(ip="127.0.0.1")


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def backing_file(directory: str, name: str, size: int = 32 * MiB) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.img")
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def chap() -> tuple:
    return ("u" + secrets.token_hex(4), "chap-" + secrets.token_urlsafe(18))


def aligned(data: bytes) -> mmap.mmap:
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    return buf


def io_roundtrip(path: str, offset: int = MiB) -> None:
    """Write 64 KiB at ``offset`` through the attached file and read it back (O_DIRECT where possible)."""
    data = os.urandom(64 << 10)
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
        assert os.pread(fd, len(data), offset) == data
    finally:
        os.close(fd)


def make_flow(store: AttachmentStore, hypervisor: Any, *, rbd_target: Any = None, iscsi_target: Any = None,
              run_dir: Optional[str] = None, on_step: Optional[Callable[[str, Any], None]] = None) -> AttachFlow:
    targets: Dict[str, Any] = {}
    if rbd_target is not None:
        targets["rbd"] = rbd_target
    if iscsi_target is not None:
        targets["iscsi"] = iscsi_target

    def connectors(protocol: str) -> Any:
        # the host's own initiator name: the one connector_properties() gave the target's ACL
        return blocklink.connector_for(protocol, attach="userspace", run_dir=run_dir, timeout=20)

    return AttachFlow(store=store, targets=targets, hypervisor=hypervisor, connector_properties=connector_props,
                      connector_factory=connectors, on_step=on_step)


def spec(volume_id: str, protocol: str, **kw: Any) -> VolumeSpec:
    kw.setdefault("bus", "scsi")
    return VolumeSpec(volume_id=volume_id, protocol=protocol, **kw)


@pytest.fixture
def run_dir() -> Iterator[str]:
    """A private run dir for userspace attachments; whatever a failed test left is stopped by PID."""
    d = tempfile.mkdtemp(prefix="bl-rel.", dir="/run")
    yield d
    for p in os.listdir(d):
        if p != "locks" and os.path.isdir(os.path.join(d, p)):
            UserspaceISCSIConnector(run_dir=d, timeout=5)._teardown(DaemonLayout(os.path.join(d, p)), p, hard=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def store(tmp_path: Any) -> Iterator[AttachmentStore]:
    s = AttachmentStore(f"sqlite:///{tmp_path}/attachments.db")
    yield s
    s.close()


def leak_checker(*, run_dirs: tuple = (), tgtd: Any = None, target: Any = None, ceph: Any = None,
                 images: tuple = (), libvirt_host: Any = None, domain: Any = None, store: Any = None) -> LeakChecker:
    return LeakChecker(run_dirs=run_dirs, tgt_admins=[tgtd.admin] if tgtd is not None else [],
                       tgt_config_dirs=[target.store.volumes_dir] if target is not None and target.store.directory
                       else [], ceph=ceph, images=images,
                       libvirt=libvirt_host.connection if libvirt_host is not None else None,
                       domains=[domain.name()] if domain is not None else [], store=store)
