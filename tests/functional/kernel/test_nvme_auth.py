"""NVMe/TCP DH-HMAC-CHAP and the nvme-cli-free connect, in the real-kernel guest.

On 6.12 (``BLOCKLINK_GUEST_KERNEL=6.12``): nvmet requires the host's key (and for bidirectional auth
the host checks the controller's), NVMeOFConnector authenticates through /dev/nvme-fabrics; wrong
or missing keys are typed errors with nothing left on the host. On Debian's 6.1 (no NVME_AUTH on
either side) both ends refuse with :class:`AuthenticationUnsupported` instead of connecting
unauthenticated. Connects run no child process (strace), on both kernels. A bidirectional flow runs
under the reliability suite's secret watchers (tests/reliability/secretscan.py), after the watchers
have shown they find these very secrets when planted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List

import pytest

from blocklink.connection import HostConnector, NvmeofInfo
from blocklink.dhchap import HostAuth, generate_key
from blocklink.errors import AuthenticationFailed, AuthenticationUnsupported
from blocklink.initiator.nvmeof import NVMeOFConnector
from blocklink.masking import reveal
from blocklink.target.nvmet import NvmetTarget
from tests.functional.kernel.test_nvme_tcp import (MiB, assert_clean, connector, direct_io, host,  # noqa: F401
                                                   make_target, nvme_modules, nvmet_objects, workdir)
from tests.reliability.secretscan import GUEST_SWEEP_ROOTS

pytestmark = pytest.mark.kernel


@pytest.fixture
def target(nvme_modules: None, workdir: str) -> Any:  # noqa: F811
    t = make_target(workdir)
    yield t
    for vid in t.list_exports():
        t.remove_export(vid)
    assert nvmet_objects() == []


def with_data(info: NvmeofInfo, **changes: Any) -> Dict[str, Any]:
    """The wire dict of ``info`` with data keys changed (None removes one)."""
    wire = info.to_dict()
    data = {**wire["data"], **changes}
    wire["data"] = {k: v for k, v in data.items() if v is not None}
    return wire


def attach_io_detach(connector: NVMeOFConnector, wire: Dict[str, Any], nqn: str) -> None:  # noqa: F811
    dev = connector.connect_volume(wire)
    assert os.path.exists(dev.path)
    data = os.urandom(1 * MiB)
    assert direct_io(dev.path, data, 4 * MiB) == data
    connector.disconnect_volume(wire, dev)
    assert_clean(nqn)


def ctrl_attr(name: str) -> str:
    ctrls = os.listdir("/sys/class/nvme")
    assert len(ctrls) == 1, ctrls
    with open(f"/sys/class/nvme/{ctrls[0]}/{name}") as f:
        return f.read().strip()


# ---------------------------------------------------------------------------------------------- 6.12
@pytest.mark.needs_kernel("6.12")
def test_unidirectional_auth_connect_io_disconnect(target: NvmetTarget, connector: NVMeOFConnector,  # noqa: F811
                                                   host: HostConnector) -> None:  # noqa: F811
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    auth = HostAuth.generate()
    info = target.initialize_connection(vid, host, host_auth=auth)
    assert reveal(info.dhchap_secret) == reveal(auth.key) and info.dhchap_ctrl_secret is None
    assert reveal(auth.key) not in repr(info)
    with open(f"/sys/kernel/config/nvmet/hosts/{host.nqn}/dhchap_key") as f:
        assert f.read().strip() == reveal(auth.key)
    attach_io_detach(connector, info.to_dict(), export.nqn)


@pytest.mark.needs_kernel("6.12")
def test_bidirectional_auth_with_dh_group(target: NvmetTarget, connector: NVMeOFConnector,  # noqa: F811
                                          host: HostConnector) -> None:  # noqa: F811
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    info = target.initialize_connection(vid, host, host_auth=HostAuth.generate(bidirectional=True,
                                                                               dhgroup="ffdhe2048"))
    assert info.dhchap_ctrl_secret is not None
    wire = info.to_dict()
    dev = connector.connect_volume(wire)
    # the host kernel keeps what it authenticated with on the controller (6.x sysfs, made root-only on connect)
    assert ctrl_attr("dhchap_secret") == reveal(info.dhchap_secret)
    assert ctrl_attr("dhchap_ctrl_secret") == reveal(info.dhchap_ctrl_secret)
    connector.disconnect_volume(wire, dev)
    assert_clean(export.nqn)


@pytest.mark.needs_kernel("6.12")
@pytest.mark.parametrize("case", ["wrong_host_key", "wrong_ctrl_key", "missing_key"])
def test_refused_auth_is_typed_and_leaves_nothing(target: NvmetTarget, connector: NVMeOFConnector,  # noqa: F811
                                                  host: HostConnector, case: str) -> None:  # noqa: F811
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    info = target.initialize_connection(vid, host, host_auth=HostAuth.generate(bidirectional=True))
    other = reveal(generate_key())
    wire = {"wrong_host_key": lambda: with_data(info, dhchap_secret=other),
            "wrong_ctrl_key": lambda: with_data(info, dhchap_ctrl_secret=other),
            "missing_key": lambda: with_data(info, dhchap_secret=None, dhchap_ctrl_secret=None)}[case]()
    with pytest.raises(AuthenticationFailed) as ei:
        connector.connect_volume(wire)
    assert not isinstance(ei.value, AuthenticationUnsupported)
    assert other not in str(ei.value) and reveal(info.dhchap_secret) not in str(ei.value)
    assert_clean(export.nqn)
    attach_io_detach(connector, info.to_dict(), export.nqn)  # the right keys still work afterwards


# a process with a secret in its argv ($1): it announces itself, then lives until its stdin closes
# (a shell, not python: every syscall of a process under strace -f stops, and python's start makes thousands)
ANNOUNCER = ["sh", "-c", "echo up; read -r _ || true", "announcer"]


ROOTS = GUEST_SWEEP_ROOTS


def kernel_secret_files(hostnqn: str) -> List[str]:
    """The kernel's own files that hold the DH-HMAC-CHAP secrets now: nvmet's host entry (configfs) and
    the host controllers' attributes (sysfs); the watchers' file sweep leaves /sys out."""
    found = [f"/sys/kernel/config/nvmet/hosts/{hostnqn}/{a}" for a in ("dhchap_key", "dhchap_ctrl_key")]
    found += [f"/sys/class/nvme/{c}/{a}" for c in os.listdir("/sys/class/nvme")
              for a in ("dhchap_secret", "dhchap_ctrl_secret")]
    return [p for p in found if os.path.exists(p)]


@pytest.mark.needs_kernel("6.12")
# strace -f -p stops this process at every syscall (minutes under TCG): the traced variant runs on demand
# (-m slow); the default one keeps the /proc argv+environment sampler, logs, files, output and reprs
@pytest.mark.parametrize("traced", [pytest.param(True, marks=pytest.mark.slow, id="strace"),
                                    pytest.param(False, id="sampled")])
def test_secret_watchers_never_see_the_dhchap_secrets(target: NvmetTarget, connector: NVMeOFConnector,  # noqa: F811
                                                      host: HostConnector, workdir: str,  # noqa: F811
                                                      capfd: Any, traced: bool) -> None:
    """Bidirectional DH-HMAC-CHAP connect -> I/O -> disconnect (and the target's initialize/terminate)
    with every watcher of the reliability suite running: no process argv or environment (/proc sampled,
    execve traced), log record, exception text, output or file others can read shows either secret."""
    from tests.reliability.secretscan import SecretWatch, _others_can_read

    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    auth = HostAuth.generate(bidirectional=True, dhgroup="ffdhe2048")
    assert auth.ctrl_key is not None
    host_secret, ctrl_secret = reveal(auth.key), reveal(auth.ctrl_key)

    # the watchers can fail: each secret planted where a leak would put it is found
    shared = f"/run/blocklink-canary-{uuid.uuid4().hex}.txt"  # /run is o+x (workdir is 0700: nobody else gets in)
    t0 = time.monotonic()
    try:
        with SecretWatch([host_secret, ctrl_secret], sweep_roots=ROOTS, strace=traced) as planted:
            child = subprocess.Popen([*ANNOUNCER, host_secret], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
            try:
                assert child.stdout is not None and child.stdout.readline() == "up\n"
                assert planted.wait_sampled(child.pid), "the /proc sampler never observed the announced process"
            finally:
                assert child.stdin is not None
                child.stdin.close()
                assert child.wait(timeout=60) == 0
            subprocess.run(["true"], env={"PATH": os.environ["PATH"], "KEY": ctrl_secret}, check=True)
            logging.getLogger("some.library").debug("nvme connect --dhchap-ctrl-secret=%s", ctrl_secret)
            with open(shared, "w") as f:
                f.write(host_secret)
            os.chmod(shared, 0o644)  # still there for the watch's final file sweep
    finally:
        if os.path.exists(shared):
            os.unlink(shared)
    planted_secs = time.monotonic() - t0
    where = [e.where for e in planted.exposures]
    assert any(w.endswith("/cmdline") for w in where), where  # argv, sampled
    if traced:
        assert sum(1 for w in where if w.startswith("execve")) >= 2, where  # argv and environment, traced
    assert "log record some.library" in where and shared in where, where

    t0 = time.monotonic()
    with SecretWatch([host_secret, ctrl_secret], run_dirs=[workdir], sweep_roots=ROOTS, strace=traced) as watch:
        info = target.initialize_connection(vid, host, host_auth=auth)
        wire = info.to_dict()
        dev = connector.connect_volume(wire)
        assert ctrl_attr("dhchap_secret") == host_secret  # the kernel authenticated with both keys
        assert ctrl_attr("dhchap_ctrl_secret") == ctrl_secret
        exposed = [p for p in kernel_secret_files(host.nqn) if _others_can_read(p)]
        modes = {p: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in kernel_secret_files(host.nqn)}
        data = os.urandom(1 * MiB)
        assert direct_io(dev.path, data, 4 * MiB) == data
        watch.sweep_files()  # while attached: the connector's record is there
        for what, obj in (("info", info), ("device", dev)):
            watch.check_text(f"repr({what})", repr(obj))
            watch.check_text(f"str({what})", str(obj))
        connector.disconnect_volume(wire, dev)
        target.terminate_connection(vid, host)
    out, err = capfd.readouterr()
    watch.check_text("captured stdout/stderr", out + err)
    print(f"TIMING planted watch {planted_secs:.1f}s: {planted.summary()}")
    print(f"TIMING flow watch {time.monotonic() - t0:.1f}s: {watch.summary()} {modes}")
    assert watch.proc_samples > 1 and watch.records > 0 and watch.files_checked > 0, watch.summary()
    assert exposed == [], f"kernel files others can read hold a secret: {modes}"
    watch.assert_clean()
    assert_clean(export.nqn)


# ---------------------------------------------------------------------------------------------- 6.1
@pytest.mark.needs_kernel("6.1")
def test_61_host_refuses_auth_info_instead_of_connecting_unauthenticated(
        target: NvmetTarget, connector: NVMeOFConnector, host: HostConnector) -> None:  # noqa: F811
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    info = target.initialize_connection(vid, host)  # 6.1's nvmet cannot require auth: allowed plainly
    with open("/dev/nvme-fabrics") as f:
        assert "dhchap_secret=" in f.read()  # 6.1 lists the option and would ignore it
    wire = with_data(info, dhchap_secret=reveal(generate_key()))
    with pytest.raises(AuthenticationUnsupported, match="lacks NVMe in-band authentication"):
        connector.connect_volume(wire)
    assert_clean(export.nqn)


@pytest.mark.needs_kernel("6.1")
def test_61_target_refuses_to_require_auth(target: NvmetTarget, host: HostConnector) -> None:  # noqa: F811
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    with pytest.raises(AuthenticationUnsupported, match="NVME_TARGET_AUTH"):
        target.initialize_connection(vid, host, host_auth=HostAuth.generate())
    assert target.config.allowed_hosts(export.nqn) == [] and host.nqn not in target.config.hosts()


# ---------------------------------------------------------------------------------------------- both
CHILD = """
import json, sys
from blocklink.initiator.nvmeof import NVMeOFConnector
c = NVMeOFConnector(run_dir=sys.argv[1], timeout=60.0)
print(json.dumps({"path": c.connect_volume(json.load(sys.stdin)).path}))
"""


def test_connect_spawns_no_child_process(target: NvmetTarget, host: HostConnector,  # noqa: F811
                                         workdir: str) -> None:  # noqa: F811
    """strace -f of a process whose only work is connect_volume: no execve but its own, no fork."""
    vid = str(uuid.uuid4())
    export = target.create_export(vid, size=16 * MiB)
    info = target.initialize_connection(vid, host)
    run_dir, trace = os.path.join(workdir, "run"), os.path.join(workdir, "strace.out")
    res = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve,fork,vfork,clone,clone3", "-o", trace,
                          sys.executable, "-c", CHILD, run_dir], input=json.dumps(info.to_dict()),
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    path = json.loads(res.stdout.strip().splitlines()[-1])["path"]
    with open(trace) as f:
        lines = f.read().splitlines()
    execs = [ln for ln in lines if re.search(r"\bexecve\(", ln) and "= 0" in ln]
    forks = [ln for ln in lines if re.search(r"\b(v?fork|clone3?)\(", ln) and "CLONE_THREAD" not in ln
             and "resumed" not in ln]
    assert len(execs) == 1 and sys.executable in execs[0], execs  # the python itself, nothing else
    assert forks == [], "\n".join(lines)
    conn = NVMeOFConnector(run_dir=run_dir, timeout=60.0)
    assert conn.get_volume_paths(info.to_dict()) == [path]
    conn.disconnect_volume(info.to_dict())
    assert_clean(export.nqn)
