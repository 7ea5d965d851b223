"""NVMe/TCP DH-HMAC-CHAP and the nvme-cli-free connect, in the real-kernel guest.

On 6.12 (``BLOCKLINK_GUEST_KERNEL=6.12``): nvmet requires the host's key (and for bidirectional auth
the host checks the controller's), NVMeOFConnector authenticates through /dev/nvme-fabrics; wrong
or missing keys are typed errors with nothing left on the host. On Debian's 6.1 (no NVME_AUTH on
either side) both ends refuse with :class:`AuthenticationUnsupported` instead of connecting
unauthenticated. Connects run no child process (strace), on both kernels.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from typing import Any, Dict

import pytest

from blocklink.connection import HostConnector, NvmeofInfo
from blocklink.dhchap import HostAuth, generate_key
from blocklink.errors import AuthenticationFailed, AuthenticationUnsupported
from blocklink.initiator.nvmeof import NVMeOFConnector
from blocklink.masking import reveal
from blocklink.target.nvmet import NvmetTarget
from tests.functional.kernel.test_nvme_tcp import (MiB, assert_clean, connector, direct_io, host,  # noqa: F401
                                                   make_target, nvme_modules, nvmet_objects, workdir)

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
    # the host kernel keeps what it authenticated with on the controller (6.x sysfs, root-only)
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
