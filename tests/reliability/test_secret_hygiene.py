"""Secret hygiene: full attach/detach flows at DEBUG logging while every channel a secret could leak through
is watched (see secretscan.SecretWatch): argv and environment of every process (sampled) and of every
program this process or its children execute (strace), log records, exception texts, and files others
can read under /tmp, /run, /dev/shm, the venv and the run dirs.

iSCSI with CHAP on tgtd: the attach flow (QEMU-native disk with a libvirt secret; userspace host attach),
the userspace connector directly, and a wrong password. RBD with cephx: the RBD handle, the userspace
connector, the libvirt network disk through the attach flow, and a wrong key.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

import pytest

from blocklink.errors import BlocklinkError
from blocklink.initiator.rbd import RBDConnector
from blocklink.initiator.userspace import UserspaceISCSIConnector, UserspaceRBDConnector
from blocklink.testing.tgt import TgtDaemon
from tests.reliability.flows import (HOST_IQN, MiB, backing_file, chap, io_roundtrip, make_flow, new_id, run_dir,
                                     spec, store)
from tests.reliability.results import RESULTS
from tests.reliability.secretscan import SecretWatch

__all__ = ["run_dir", "store"]  # fixtures


def _record(watch: SecretWatch, flow: str) -> None:
    RESULTS.scanned(f"{flow}: /proc sweeps", watch.proc_samples)
    RESULTS.scanned(f"{flow}: execve traced", watch.execs)
    RESULTS.scanned(f"{flow}: log records", watch.records)
    RESULTS.scanned(f"{flow}: files checked", watch.files_checked)
    for e in watch.exposures:
        RESULTS.exposure(flow, str(e))
    print(f"{flow}: {watch.summary()}")


def _daemon_pid(dev: Any) -> int:
    """The pid of the qemu-storage-daemon behind a userspace attachment (it holds the secret)."""
    pid = getattr(dev, "pid", None) or dev.extra.get("pid")
    assert isinstance(pid, int) and pid > 0, dev
    return pid


def _observed(watch: SecretWatch, dev: Any) -> None:
    """The sampler read the secret-bearing daemon's /proc entries while it ran (a blind sampler fails)."""
    pid = _daemon_pid(dev)
    assert watch.wait_sampled(pid), f"the /proc sampler never observed qemu-storage-daemon {pid} while it ran"


def _error_texts(watch: SecretWatch, e: BaseException, where: str) -> None:
    watch.check_text(f"{where} str()", str(e))
    watch.check_text(f"{where} repr()", repr(e))
    watch.check_text(f"{where} traceback", "".join(traceback.format_exception(type(e), e, e.__traceback__)))


@pytest.mark.tgt
@pytest.mark.libvirt
def test_iscsi_chap_flows(tgtd: TgtDaemon, tmp_path: Any, run_dir: str, store: Any, libvirt_host: Any,
                          libvirt_domain: Any) -> None:
    target = tgtd.target(backing_dir=str(tmp_path / "backing"))
    creds = [chap() for _ in range(3)]
    wrong = "wrong-" + creds[0][1]
    with SecretWatch([c[1] for c in creds] + [wrong], run_dirs=[run_dir, str(tmp_path)]) as watch:
        # 1. the attach flow, QEMU-native iSCSI: libvirt secret holds the CHAP password
        v1 = new_id("s")
        target.create_export(v1, backing_file(str(tmp_path / "b"), v1), chap=creds[0])
        flow = make_flow(store, libvirt_host, iscsi_target=target, run_dir=run_dir)
        att = flow.attach_volume(spec(v1, "iscsi"), libvirt_domain.name())
        watch.check_text("attachment record", repr(att) + str(att.to_dict()))
        watch.check_text("domain XML", libvirt_host.domain_xml(libvirt_domain))
        flow.detach_volume(att.id)
        # 2. the attach flow with a userspace host attach (qemu-storage-daemon logs in with libiscsi)
        v2 = new_id("s")
        target.create_export(v2, backing_file(str(tmp_path / "b"), v2), chap=creds[1])
        att = flow.attach_volume(spec(v2, "iscsi", host_attach=True), libvirt_domain.name())
        io_roundtrip(att.host_device)
        flow.detach_volume(att.id)
        # 3. the userspace connector on its own, then the same volume with a wrong password
        v3 = new_id("s")
        target.create_export(v3, backing_file(str(tmp_path / "b"), v3), chap=creds[2])
        info = target.initialize_connection(v3, {"host": "h", "initiator": HOST_IQN}).to_dict()
        conn = UserspaceISCSIConnector(run_dir=run_dir, initiator_name=HOST_IQN, timeout=20)
        dev = conn.connect_volume(info)
        _observed(watch, dev)
        watch.check_text("AttachedDevice", repr(dev) + str(dev.to_dict()))
        io_roundtrip(dev.path)
        conn.disconnect_volume(info, dev)
        bad = dict(info, data=dict(info["data"], auth_password=wrong))
        with pytest.raises(BlocklinkError) as ei:
            conn.connect_volume(bad)
        _error_texts(watch, ei.value, "wrong CHAP password error")
        for vid in (v1, v2, v3):
            target.remove_export(vid)
    _record(watch, "iscsi+chap (tgtd: flow native, flow userspace, userspace connector, wrong password)")
    watch.assert_clean()
    assert watch.execs > 0 and watch.proc_samples > 0, watch.summary()


@pytest.mark.ceph
@pytest.mark.libvirt
def test_rbd_cephx_flows(ceph_cluster: Any, tmp_path: Any, run_dir: str, store: Any, libvirt_host: Any,
                         libvirt_domain: Any) -> None:
    key = ceph_cluster.admin_key()
    rbd_target = ceph_cluster.rbd_target(include_keyring=True)
    vids = [new_id("c") for _ in range(3)]
    for v in vids:
        rbd_target.create_volume(v, 32 * MiB)
    try:
        with SecretWatch([key], run_dirs=[run_dir, str(tmp_path)]) as watch:
            # 1. the in-process RBD handle (librbd)
            info = rbd_target.initialize_connection(vids[0]).to_dict()
            conn = RBDConnector()
            dev = conn.connect_volume(info)
            dev.handle.write(os.urandom(MiB))
            dev.handle.flush()
            watch.check_text("AttachedDevice", repr(dev) + repr(dev.handle))
            conn.disconnect_volume(info, dev)
            # 2. the userspace connector (qemu-storage-daemon + librbd, key passed as a QEMU secret object)
            us = UserspaceRBDConnector(run_dir=run_dir, timeout=20)
            info2 = rbd_target.initialize_connection(vids[1]).to_dict()
            dev2 = us.connect_volume(info2)
            _observed(watch, dev2)
            io_roundtrip(dev2.path)
            us.disconnect_volume(info2, dev2)
            # 3. the libvirt network disk through the attach flow (libvirt secret holds the key)
            flow = make_flow(store, libvirt_host, rbd_target=rbd_target, run_dir=run_dir)
            att = flow.attach_volume(spec(vids[2], "rbd"), libvirt_domain.name())
            watch.check_text("attachment record", repr(att) + str(att.to_dict()))
            watch.check_text("domain XML", libvirt_host.domain_xml(libvirt_domain))
            flow.detach_volume(att.id)
            # 4. a wrong key: the refusal names no key
            bad = dict(info, data=dict(info["data"], keyring=f"[client.admin]\n\tkey = {key[:-6]}AAAAA=\n"))
            with pytest.raises(BlocklinkError) as ei:
                RBDConnector().connect_volume(bad)
            _error_texts(watch, ei.value, "wrong cephx key error")
    finally:
        for v in vids:
            rbd_target.delete_volume(v)
        rbd_target.close()
    _record(watch, "rbd+cephx (handle, userspace connector, flow network disk, wrong key)")
    watch.assert_clean()
    assert watch.execs > 0 and watch.proc_samples > 0, watch.summary()


def test_the_watch_sees_each_channel(tmp_path: Any) -> None:
    """The watch is not blind: a secret put on each channel on purpose is found there."""
    import shutil
    import tempfile
    from pathlib import Path

    secret = "canary-" + os.urandom(8).hex()
    open_dir = Path(tempfile.mkdtemp(prefix="bl-canary.", dir="/tmp"))  # /tmp/pytest-of-root is 0700
    os.chmod(open_dir, 0o755)
    try:
        _planted(secret, open_dir)
    finally:
        shutil.rmtree(open_dir)


# a process with the secret in its argv: it announces itself, then lives until its stdin closes
ANNOUNCER = "import sys; print('up', flush=True); sys.stdin.read()"


def _announced(secret: str) -> Any:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", ANNOUNCER, secret], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None and p.stdout.readline() == "up\n"  # running, argv in /proc
    return p


def _release(p: Any) -> None:
    p.stdin.close()
    assert p.wait(timeout=60) == 0


def _planted(secret: str, tmp_path: Any) -> None:
    import logging
    import subprocess

    with SecretWatch([secret], run_dirs=[str(tmp_path)]) as watch:
        child = _announced(secret)  # argv
        try:
            assert watch.wait_sampled(child.pid), "the /proc sampler never observed the announced process"
        finally:
            _release(child)
        subprocess.run(["true"], env={"PATH": os.environ["PATH"], "CANARY": secret}, check=True)  # environment
        logging.getLogger("some.library").debug("connecting with %s", secret)  # a logger without masking
        shared = tmp_path / "shared.txt"
        shared.write_text(secret)
        os.chmod(shared, 0o644)
        private = tmp_path / "private.txt"
        private.write_text(secret)
        os.chmod(private, 0o600)
    where = [e.where for e in watch.exposures]
    assert any(w.startswith("execve") for w in where), where  # strace saw both programs' argv and env
    assert sum(1 for w in where if w.startswith("execve")) >= 2, where
    assert any(w.endswith("/cmdline") for w in where), where  # the sampler caught the announced process
    assert any(w.startswith("log record some.library") for w in where), where
    assert str(shared) in where and str(private) not in where, where
    RESULTS.scanned("watch self-test (planted secrets found)", len(watch.exposures))


def test_the_sampler_reports_a_process_it_did_not_observe() -> None:
    """wait_sampled is not always True: a process that ended before the call was not observed."""
    secret = "canary-" + os.urandom(8).hex()
    with SecretWatch([secret], strace=False, sweep_roots=()) as watch:
        assert watch.proc_samples >= 1  # armed on entry
        child = _announced(secret)
        _release(child)
        assert not watch.wait_sampled(child.pid)
        alive = _announced(secret)
        try:
            assert watch.wait_sampled(alive.pid)
        finally:
            _release(alive)
