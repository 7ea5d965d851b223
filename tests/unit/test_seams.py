"""Executor, masking, host paths, registry and connector properties (fake trees, no services)."""

import json
import logging
import os
import subprocess
import sys

import pytest

import blocklink
from blocklink.errors import CommandFailed, CommandTimeout, UnknownProtocol
from blocklink.executor import ProcessExecutor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.properties import MultipathdNotRunning, get_connector_properties
from blocklink.masking import Secret, get_logger, mask_argv, mask_text
from blocklink.testing.fakes import FakeExecutor


# ------------------------------------------------------------------ masking
def test_secret_value_semantics():
    s = Secret("s3cr3t-value")
    assert str(s) == "***" and "s3cr3t" not in repr(s) and s.reveal() == "s3cr3t-value"
    assert s == "s3cr3t-value" and s == Secret("s3cr3t-value") and s != "other"
    assert f"{s}" == "***"


def test_mask_text_patterns_and_known_values():
    Secret("known-secret-42")  # revealing code anywhere remembers the value for masking
    text = ("password=abc123 auth_password: 'hunter22' key = AQBxyz== "
            "-n node.session.auth.password -v pw9999 and known-secret-42 again")
    out = mask_text(text)
    for s in ("abc123", "hunter22", "AQBxyz==", "pw9999", "known-secret-42"):
        assert s not in out
    assert mask_argv(["tgtadm", "--password", "zzzz1111"]) == ["tgtadm", "--password", "***"]


def test_log_records_are_masked(caplog):
    log = get_logger("blocklink.test")
    secret = Secret("log-secret-7777")
    with caplog.at_level(logging.DEBUG, logger="blocklink"):
        log.info("chap is %s and raw %s", secret, secret.reveal())
        try:
            raise ValueError(f"failed with {secret.reveal()}")
        except ValueError:
            log.exception("boom")
    assert "log-secret-7777" not in caplog.text
    assert "log-secret-7777" not in "".join(r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ executor
def test_process_executor_exit_codes_and_input():
    ex = ProcessExecutor()
    r = ex.run(["sh", "-c", "cat; echo err >&2; exit 3"], input="in", check=False)
    assert (r.exit_code, r.stdout, r.stderr) == (3, "in", "err\n")
    assert ex.run(["sh", "-c", "exit 2"], ok_codes=(0, 2)).exit_code == 2
    with pytest.raises(CommandFailed) as ei:
        ex.run(["sh", "-c", "echo nope >&2; exit 1"])
    assert ei.value.exit_code == 1 and "nope" in str(ei.value)


def test_process_executor_timeout_kills_child():
    ex = ProcessExecutor()
    marker = "blocklink-timeout-probe-91"
    with pytest.raises(CommandTimeout):
        ex.run(["bash", "-c", f"exec -a {marker} sleep 30"], timeout=0.3)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert marker not in ps


def test_executor_refuses_secret_on_argv_and_masks_errors():
    ex = ProcessExecutor()
    with pytest.raises(TypeError):
        ex.run(["echo", Secret("abcdefgh")])
    with pytest.raises(CommandFailed) as ei:
        ex.run(["sh", "-c", "echo password=visible99 >&2; exit 1", "x"])
    assert "visible99" not in str(ei.value)


def test_executor_root_helper_only_when_not_root(monkeypatch):
    ex = ProcessExecutor(root_helper="env FOO=1")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = ex.run(["sh", "-c", "echo $FOO"])
    assert r.argv[:2] == ("env", "FOO=1") and r.stdout.strip() == "1"


def test_fake_executor_rules():
    fx = FakeExecutor().on(("iscsiadm", "-m", "session"), (21, "", "No active sessions")).on(r"^rbd ", "ok")
    assert fx.run(["iscsiadm", "-m", "session"], check=False).exit_code == 21
    assert fx.run(["rbd", "ls"]).stdout == "ok"
    with pytest.raises(CommandFailed):
        fx.run(["unknown"])
    assert fx.argvs(("rbd",)) == [("rbd", "ls")]


# ------------------------------------------------------------------ connector properties on a fake host
def _fake_host(tmp_path, fc=True, multipathd=False):
    paths = HostPaths.under(str(tmp_path))
    os.makedirs(paths.etcpath("iscsi"))
    with open(paths.etcpath("iscsi", "initiatorname.iscsi"), "w") as f:
        f.write("## comment\nInitiatorName=iqn.1993-08.org.debian:01:abcdef\n")
    os.makedirs(paths.etcpath("nvme"))
    with open(paths.etcpath("nvme", "hostnqn"), "w") as f:
        f.write("nqn.2014-08.org.nvmexpress:uuid:1111\n")
    if fc:
        for host, wwpn, state in (("host5", "0x21000024ff406cc3", "Online"), ("host6", "0x21000024FF406CC2", "Online"),
                                  ("host7", "0x2100000000000007", "Linkdown")):
            d = paths.sys("class", "fc_host", host)
            os.makedirs(d)
            for name, val in (("port_name", wwpn), ("node_name", wwpn.replace("0x21", "0x20")), ("port_state", state)):
                with open(os.path.join(d, name), "w") as f:
                    f.write(val + "\n")
    os.makedirs(paths.procpath("net"))
    with open(paths.procpath("net", "unix"), "w") as f:
        f.write("Num       RefCount Protocol Flags    Type St Inode Path\n")
        if multipathd:
            f.write("0000000000000000: 00000002 00000000 00010000 0001 01 20519 @/org/kernel/linux/storage/multipathd\n")
    return paths


def test_connector_properties_from_files(tmp_path, monkeypatch):
    paths = _fake_host(tmp_path, multipathd=True)
    spawned = []
    monkeypatch.setattr(subprocess.Popen, "__init__", lambda *a, **k: spawned.append(a) or (_ for _ in ()).throw(
        AssertionError("no child process for the standard keys")))
    props = get_connector_properties(ip="10.0.0.5", host="cmp1", multipath=True, paths=paths)
    assert props["initiator"] == "iqn.1993-08.org.debian:01:abcdef"
    assert props["wwpns"] == ["21000024ff406cc3", "21000024ff406cc2"]  # online ports only, normalised
    assert props["wwnns"] == ["20000024ff406cc3", "20000024ff406cc2"]
    assert props["nqn"] == "nqn.2014-08.org.nvmexpress:uuid:1111"
    assert props["multipath"] is True and props["ip"] == "10.0.0.5" and props["host"] == "cmp1"
    assert props["os_type"] == sys.platform and props["platform"]
    assert not spawned
    # the dict is a valid HostConnector
    assert blocklink.HostConnector.from_dict(props).initiator == props["initiator"]


def test_connector_properties_multipath_needs_daemon(tmp_path):
    paths = _fake_host(tmp_path, fc=False, multipathd=False)
    props = get_connector_properties(ip="1.2.3.4", multipath=True, paths=paths)
    assert props["multipath"] is False and "wwpns" not in props
    with pytest.raises(MultipathdNotRunning):
        get_connector_properties(ip="1.2.3.4", multipath=True, enforce_multipath=True, paths=paths)


def test_connector_properties_bare_host(tmp_path):
    props = get_connector_properties(paths=HostPaths.under(str(tmp_path)))
    assert "initiator" not in props and props["multipath"] is False and props["ip"]


# ------------------------------------------------------------------ registry and import weight
def test_connector_for_unknown_lists_known():
    with pytest.raises(UnknownProtocol) as ei:
        blocklink.connector_for("floppy")
    assert "rbd" in ei.value.known and "floppy" in str(ei.value)


def test_connector_for_registered_plugin():
    from blocklink.registry import register_connector

    class Dummy:
        def __init__(self, **kw):
            self.kw = kw

    register_connector("dummy-proto", Dummy)
    assert blocklink.connector_for("dummy-proto", a=1).kw == {"a": 1}


def test_connector_for_rbd_with_options():
    c = blocklink.connector_for("rbd", do_local_attach=True, device_type="nbd")
    assert c.protocol == "rbd" and c.do_local_attach and c.device_type == "nbd"


def test_import_blocklink_is_light():
    code = ("import sys, blocklink; heavy = ('rados', 'rbd', 'libvirt', 'rtslib_fb', 'oslo_privsep', 'eventlet', "
            "'oslo_concurrency'); print([m for m in sys.modules if m.split('.')[0] in heavy])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _auto_env() -> dict:
    env = dict(os.environ)
    env.pop("BLOCKLINK_PRIVSEP", None)
    return env


def test_privileged_runs_directly_as_root_without_privsep(tmp_path):
    """As root (BLOCKLINK_PRIVSEP unset): privileged calls run in the calling process, and oslo.privsep
    is never imported; checked inside the process that makes the calls."""
    if os.geteuid() != 0:
        pytest.skip("direct path is for root")  # unit tests also run as non-root developers
    code = ("import os, sys, blocklink.privileged as p\n"
            "from blocklink.hostpaths import HostPaths\n"
            "p.SYSFS_ROOT = sys.argv[1] + '/sys'  # a sysfs-like tree instead of the host's /sys\n"
            "attr = sys.argv[1] + '/sys/class/x/scan'\n"
            "HostPaths(sysfs=sys.argv[1] + '/sys').write(attr, '- - -')  # the real host's writer\n"
            "assert open(attr).read() == '- - -'\n"
            "assert p._Entrypoint(lambda: 42)() == 42 and p.probe() == (os.getpid(), 0)\n"
            "assert p.privsep_started() is None, p.privsep_started()\n"
            "assert 'oslo_privsep' not in sys.modules and 'eventlet' not in sys.modules\n"
            "print('checked')\n")
    os.makedirs(tmp_path / "sys" / "class" / "x")
    (tmp_path / "sys" / "class" / "x" / "scan").write_text("")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         env=_auto_env(), timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["checked"], out.stderr[-2000:]


def test_privsep_channel_when_forced():
    """Not root (simulated by BLOCKLINK_PRIVSEP=force): calls go to a privsep daemon, not in-process."""
    code = ("import os, blocklink.privileged as p\n"
            "from oslo_privsep import priv_context\n"
            "p.context.start(priv_context.Method.FORK)\n"
            "pid, euid = p.probe()\n"
            "print(pid != os.getpid(), p.privsep_started())\n"
            "p.context.stop()\n")
    env = dict(os.environ, BLOCKLINK_PRIVSEP="force")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]


_FORCED_WRITES = """
import json, os, sys
import blocklink.privileged as p
from oslo_privsep import priv_context
root = sys.argv[1]
p.SYSFS_ROOT, p.NVMET_ROOT = root + "/sys", root + "/sys/kernel/config/nvmet"  # inherited by the fork
real_confine = p.confine

def confine(path, top, **kw):  # every confined privileged call notes the process that runs it
    with open(root + "/ran-in", "a") as f:
        f.write(f"{os.getpid()}\\n")
    return real_confine(path, top, **kw)

p.confine = confine
p.context.start(priv_context.Method.FORK)
from blocklink.errors import PathRefused
from blocklink.hostpaths import HostPaths
from blocklink.target.nvmet_config import ConfigFS
paths = HostPaths(sysfs=root + "/sys")  # the real host's writer, on a sysfs-like tree
nvmet = root + "/sys/kernel/config/nvmet"
paths.write(root + "/sys/class/x/scan", "- - -")
fs = ConfigFS(paths)
fs.mkdir(nvmet + "/hosts/h")
fs.mkdir(nvmet + "/subsystems/s")
fs.symlink(nvmet + "/hosts/h", nvmet + "/subsystems/s/h")
linked = os.readlink(nvmet + "/subsystems/s/h")
fs.unlink(nvmet + "/subsystems/s/h")
fs.rmdir(nvmet + "/subsystems/s")
try:
    p.PRIVILEGED.write(root + "/outside", "x")
    refused = None
except PathRefused as e:
    refused = [type(e).__name__, e.path, e.root]
print(json.dumps({"me": os.getpid(), "daemon": p.probe()[0], "started": p.privsep_started(), "linked": linked,
                  "refused": refused, "ran_in": sorted(set(open(root + "/ran-in").read().split()))}))
p.context.stop()
"""


def test_force_sends_sysfs_and_configfs_writes_through_the_daemon(tmp_path):
    """BLOCKLINK_PRIVSEP=force as root, for real: a privsep daemon starts, and the sysfs write and the
    nvmet configfs changes (on a sysfs-like tree) happen in it, confined there too."""
    root = tmp_path
    for d in ("sys/class/x", "sys/kernel/config/nvmet/hosts", "sys/kernel/config/nvmet/subsystems"):
        os.makedirs(root / d)
    (root / "sys" / "class" / "x" / "scan").write_text("")
    out = subprocess.run([sys.executable, "-c", _FORCED_WRITES, str(root)], capture_output=True, text=True,
                         env=dict(os.environ, BLOCKLINK_PRIVSEP="force"), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["started"] is True and got["daemon"] != got["me"]
    assert got["ran_in"] == [str(got["daemon"])]  # every confined call ran in the daemon, none here
    assert (root / "sys" / "class" / "x" / "scan").read_text() == "- - -"
    assert got["linked"] == str(root / "sys/kernel/config/nvmet/hosts/h")
    assert os.listdir(root / "sys/kernel/config/nvmet/hosts") == ["h"]
    assert os.listdir(root / "sys/kernel/config/nvmet/subsystems") == []
    assert got["refused"] == ["PathRefused", str(root / "outside"), str(root / "sys")]  # re-raised typed
    assert not (root / "outside").exists()


def test_replace_private_is_0600_from_the_start(tmp_path) -> None:
    from blocklink.privatefile import replace_private

    path = tmp_path / "rec"
    path.write_text("old")
    os.chmod(path, 0o644)
    replace_private(str(path), "new secret", sync_dir=True)
    assert path.read_text() == "new secret" and os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["rec"]  # no temporary file left


def test_create_private_never_reuses_or_follows(tmp_path) -> None:
    from blocklink.privatefile import create_private

    create_private(str(tmp_path / "key"), "k")
    assert os.stat(tmp_path / "key").st_mode & 0o777 == 0o600
    (tmp_path / "elsewhere").write_text("x")
    os.symlink(tmp_path / "elsewhere", tmp_path / "planted")
    for taken in ("key", "planted"):
        with pytest.raises(FileExistsError):
            create_private(str(tmp_path / taken), "secret")
    assert (tmp_path / "elsewhere").read_text() == "x" and (tmp_path / "key").read_text() == "k"

