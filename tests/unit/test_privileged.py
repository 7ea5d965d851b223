"""The privilege model (blocklink.privileged): the one in-process/privsep decision, and the entry
points' confinement. The confinement tests call the functions the privsep daemon runs (``.func`` of
each entry point, the undecorated function), not only the wrappers around them."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, List, Tuple

import pytest

from blocklink import privileged
from blocklink.errors import DeviceBusy, InvalidOption, PathRefused
from blocklink.executor import ProcessExecutor
from blocklink.initiator.host import scsi
from blocklink.testing.fakes import FakeExecutor
from blocklink.hostpaths import HostPaths
from blocklink.privileged import DIRECT, NVMET_ROOT, PRIVILEGED, SYSFS_ROOT, confine
from blocklink.target import lio
from blocklink.target.nvmet_config import ConfigFS

ESCAPES = ("/etc/passwd", "/sys/../etc/passwd", "/sys/./class/x", "/sys//class/x", "/sys/class/x/",
           "sys/class/x", "", "/sys", "/sys-evil/x", "/sysx", "/sys\x00/x")


# ------------------------------------------------------------------ confine
def test_confine_accepts_paths_strictly_inside_and_resolves_links(tmp_path: Any) -> None:
    root = tmp_path / "root"
    (root / "devices" / "host0").mkdir(parents=True)
    (root / "class").mkdir()
    os.symlink("../devices/host0", root / "class" / "host0")  # a sysfs-style link that stays inside
    assert confine(str(root / "class" / "host0" / "scan"), str(root)) == str(root / "devices" / "host0" / "scan")
    assert confine(str(root / "class" / "host0"), str(root), follow=False) == str(root / "class" / "host0")


@pytest.mark.parametrize("bad", ESCAPES + (None, 42, b"/sys/x"))
def test_confine_refuses_everything_else(bad: Any) -> None:
    with pytest.raises(PathRefused) as ei:
        confine(bad, "/sys")
    assert ei.value.root == "/sys"


def test_confine_refuses_symlink_escapes(tmp_path: Any) -> None:
    root, outside = tmp_path / "root", tmp_path / "root-evil"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "out")
    for p in (root / "out", root / "out" / "x", root / "out" / "deeper" / "x"):
        with pytest.raises(PathRefused):
            confine(str(p), str(root))
    with pytest.raises(PathRefused):  # only the last component is kept: a link in the parent is followed
        confine(str(root / "out" / "x"), str(root), follow=False)
    assert confine(str(root / "out"), str(root), follow=False) == str(root / "out")  # the link itself


def test_path_refused_survives_the_privsep_channel() -> None:
    """oslo.privsep sends (class name, e.args) and raises ``cls(*args)`` in the caller."""
    e = PathRefused("/etc/shadow", "/sys")
    again = type(e)(*e.args)
    assert (again.path, again.root, str(again)) == ("/etc/shadow", "/sys", str(e))
    assert "/etc/shadow" in str(e) and "/sys" in str(e) and isinstance(e, ValueError)


# ------------------------------------------------------------------ sysfs and nvmet entry points
@pytest.fixture
def fake_roots(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Tuple[str, str, str]:
    """The fixed roots pointed at a temp tree (as the daemon's would be at /sys), plus a directory
    outside them that a symlink inside leads to."""
    sysfs, outside = str(tmp_path / "sys"), str(tmp_path / "sys-evil")
    nvmet = os.path.join(sysfs, "kernel", "config", "nvmet")
    for d in (os.path.join(sysfs, "class", "x"), os.path.join(nvmet, "subsystems"), os.path.join(nvmet, "hosts"),
              outside):
        os.makedirs(d)
    for d in (sysfs, nvmet):
        os.symlink(outside, os.path.join(d, "out"))
    with open(os.path.join(outside, "victim"), "w") as f:
        f.write("untouched")
    monkeypatch.setattr(privileged, "SYSFS_ROOT", sysfs)
    monkeypatch.setattr(privileged, "NVMET_ROOT", nvmet)
    return sysfs, nvmet, outside


def _refused(fn: Callable[..., Any], *args: Any) -> None:
    with pytest.raises(PathRefused):
        fn(*args)


def test_write_sysfs_writes_only_inside_sysfs(fake_roots: Tuple[str, str, str]) -> None:
    sysfs, _, outside = fake_roots
    attr = os.path.join(sysfs, "class", "x", "scan")
    open(attr, "w").close()
    privileged.write_sysfs.func(attr, "- - -")
    assert open(attr).read() == "- - -"
    for bad in ESCAPES + (os.path.join(sysfs, "out", "victim"), os.path.join(sysfs, "..", "sys-evil", "victim"),
                          os.path.join(outside, "victim"), sysfs + "-evil/victim"):
        _refused(privileged.write_sysfs.func, bad, "owned")
    assert open(os.path.join(outside, "victim")).read() == "untouched"


def test_restrict_sysfs_makes_an_attribute_root_only_inside_sysfs(fake_roots: Tuple[str, str, str]) -> None:
    sysfs, _, outside = fake_roots
    attr = os.path.join(sysfs, "class", "x", "dhchap_secret")
    open(attr, "w").close()
    os.chmod(attr, 0o644)  # what the kernel gives its DH-HMAC-CHAP attributes
    privileged.restrict_sysfs.func(attr)
    assert os.stat(attr).st_mode & 0o777 == 0o600
    victim = os.path.join(outside, "victim")
    os.chmod(victim, 0o644)
    for bad in ESCAPES + (os.path.join(sysfs, "..", "sys-evil", "victim"), victim, sysfs + "-evil/victim"):
        _refused(privileged.restrict_sysfs.func, bad)
    assert os.stat(victim).st_mode & 0o777 == 0o644


def test_configfs_entry_points_stay_in_the_nvmet_tree(fake_roots: Tuple[str, str, str]) -> None:
    sysfs, nvmet, outside = fake_roots
    sub, host = os.path.join(nvmet, "subsystems", "nqn.a"), os.path.join(nvmet, "hosts", "nqn.h")
    privileged.configfs_mkdir.func(sub)
    privileged.configfs_mkdir.func(host)
    privileged.configfs_symlink.func(host, os.path.join(sub, "h"))
    assert os.readlink(os.path.join(sub, "h")) == host
    privileged.configfs_unlink.func(os.path.join(sub, "h"))
    privileged.configfs_rmdir.func(host)
    assert os.listdir(sub) == [] and os.listdir(os.path.join(nvmet, "hosts")) == []
    for bad in (os.path.join(sysfs, "class", "y"), nvmet, nvmet + "-evil/x", os.path.join(nvmet, "..", "x"),
                os.path.join(nvmet, "out", "x"), os.path.join(outside, "x"), "/etc/x", "x"):
        for fn in (privileged.configfs_mkdir.func, privileged.configfs_rmdir.func, privileged.configfs_unlink.func):
            _refused(fn, bad)
        _refused(privileged.configfs_symlink.func, host, bad)
        _refused(privileged.configfs_symlink.func, bad, os.path.join(sub, "l"))
    _refused(privileged.configfs_symlink.func, os.path.join(nvmet, "out"), os.path.join(sub, "l"))  # target escapes
    assert sorted(os.listdir(outside)) == ["victim"] and os.listdir(sub) == []


def test_the_real_roots() -> None:
    assert (SYSFS_ROOT, NVMET_ROOT, lio.LIO_SAVE_DIR) == ("/sys", "/sys/kernel/config/nvmet", "/etc/rtslib-fb-target")


def _a_block_device() -> str:
    for entry in sorted(os.scandir("/dev"), key=lambda e: e.name):
        try:
            if stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode):
                os.close(os.open(entry.path, os.O_RDONLY))
                return entry.path
        except OSError:
            continue
    pytest.skip("no block device this test may open")


def test_flush_block_flushes_only_block_devices_under_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: List[Tuple[str, int]] = []
    monkeypatch.setattr(privileged.fcntl, "ioctl", lambda fd, req: asked.append((os.readlink(f"/proc/self/fd/{fd}"),
                                                                                 req)))
    for bad in ("/etc/passwd", "/dev/../etc/passwd", "/dev", "/dev/", "dev/sda", "/sys/block/sda"):
        _refused(privileged.flush_block.func, bad)
    with pytest.raises(OSError) as ei:
        privileged.flush_block.func("/dev/null")  # a character device: nothing to flush, nothing done
    assert ei.value.errno == errno.ENOTBLK and asked == []
    dev = _a_block_device()
    privileged.flush_block.func(dev)
    assert asked == [(os.path.realpath(dev), privileged.BLKFLSBUF)]  # what blockdev --flushbufs asks


def test_scsi_flush_is_the_entry_point_on_the_host_and_blockdev_on_a_tree(tmp_path: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: List[str] = []
    monkeypatch.setattr(privileged, "flush_block", flushed.append)
    ex = FakeExecutor().on(("blockdev",), "")
    scsi.flush(ex, HostPaths(), "sdq")
    assert flushed == ["/dev/sdq"] and ex.calls == []  # no child process on the real host

    def broken(path: str) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    monkeypatch.setattr(privileged, "flush_block", broken)
    with pytest.raises(DeviceBusy, match="Input/output error"):  # a failed flush stops the detach
        scsi.flush(ex, HostPaths(), "sdq")
    scsi.flush(ex, HostPaths.under(str(tmp_path)), "sda")  # a tree of another root: its simulated blockdev
    assert ex.argvs() == [("blockdev", "--flushbufs", "/dev/sda")] and flushed == ["/dev/sdq"]


# ------------------------------------------------------------------ LIO save/restore entry points
class _NoRtslib:
    """Any use of rtslib fails the test: a refused path must be refused before LIO is touched."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"rtslib.{name} used for a refused path")


LIO_ESCAPES = ("/etc/passwd", "/etc/shadow.json", "/etc/rtslib-fb-target/../shadow.json",
               "/etc/rtslib-fb-target-evil/saveconfig.json", "/etc/rtslib-fb-target/backup/saveconfig.json",
               "/etc/rtslib-fb-target/saveconfig.conf", "/etc/rtslib-fb-target/.json", "/etc/rtslib-fb-target",
               "/etc/rtslib-fb-target/", "etc/rtslib-fb-target/saveconfig.json", "/tmp/saveconfig.json")


def _lio_entry_calls(path: str) -> List[Tuple[Callable[..., Any], Tuple[Any, ...]]]:
    return [(lio.lio_save.func, (path,)),
            (lio.lio_save_volume.func, (path, "iqn.2010-10.org.openstack:volume-v1", "volume-v1")),
            (lio.lio_save_volume.func, (path, "iqn.2010-10.org.openstack:volume-v1", "volume-v1", "iqn.x:h")),
            (lio.lio_restore_one.func, (path, "iqn.2010-10.org.openstack:volume-v1", "volume-v1", lio.new_pad()))]


@pytest.mark.parametrize("bad", LIO_ESCAPES)
def test_lio_save_and_restore_refuse_paths_outside_the_save_dir(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lio, "_HOST", lio.LioConfig(_NoRtslib()))  # the daemon's, with LIO_SAVE_DIR
    for fn, args in _lio_entry_calls(bad):
        with pytest.raises(PathRefused) as ei:
            fn(*args)
        assert ei.value.root == "/etc/rtslib-fb-target"


def test_lio_save_dir_symlinks_do_not_lead_out(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    save_dir, outside = tmp_path / "rtslib-fb-target", tmp_path / "elsewhere"
    save_dir.mkdir()
    outside.mkdir()
    (outside / "saveconfig.json").write_text('{"targets": []}')
    os.symlink(outside / "saveconfig.json", save_dir / "saveconfig.json")  # a planted file link
    os.symlink(outside, save_dir / "sub")  # and a directory link
    monkeypatch.setattr(lio, "_HOST", lio.LioConfig(_NoRtslib(), save_dir=str(save_dir)))
    for bad in (save_dir / "saveconfig.json", save_dir / "sub" / "saveconfig.json", outside / "saveconfig.json"):
        for fn, args in _lio_entry_calls(str(bad)):
            _refused(fn, *args)
    assert (outside / "saveconfig.json").read_text() == '{"targets": []}' and os.listdir(outside) == ["saveconfig.json"]
    assert lio.save_path(str(save_dir / "cinder-volumes.json"), str(save_dir)) == str(save_dir / "cinder-volumes.json")


@pytest.mark.parametrize("bad", ["/run/tgtd-evil/socket.0", "/run/tgtd/../sock/socket.0", "/run/tgtd/socket.0/x",
                                 "/run/tgtd/other.sock", "/run/tgtd/socket.", "/var/run/docker.sock", "relative/socket.0",
                                 "/run/tgtd/socket.123456"])
def test_tgt_request_reaches_only_tgtds_own_sockets(bad: str) -> None:
    """As root, the entry point would connect anywhere: it is confined to /run/tgtd/socket.<port>,
    refused before any socket is opened."""
    from blocklink.target import tgtadm

    with pytest.raises(PathRefused):
        tgtadm.tgt_request.func(bad, 1, 1, "")


def test_tgtadmin_speaks_to_a_callers_own_tgtd_without_the_entry_point(tmp_path: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from blocklink.target import tgtadm

    used: List[Tuple[str, str]] = []
    monkeypatch.setattr(tgtadm, "tgt_exchange", lambda path, *a, **k: used.append(("own", path)) or (0, ""))
    monkeypatch.setattr(tgtadm, "tgt_request", lambda path, *a, **k: used.append(("privileged", path)) or (0, ""))
    tgtadm.TgtAdmin(7, socket_dir=str(tmp_path)).request(1, 1)
    tgtadm.TgtAdmin(7).request(1, 1)
    assert used == [("own", str(tmp_path / "socket.7")), ("privileged", "/run/tgtd/socket.7")]


# ------------------------------------------------------------------ the one decision
@pytest.mark.parametrize("mode,euid,expected", [("auto", 0, False), ("auto", 1000, True), ("force", 0, True),
                                                ("off", 1000, False), (None, 0, False), (None, 1000, True)])
def test_separated(mode: Any, euid: int, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if mode is None:
        monkeypatch.delenv("BLOCKLINK_PRIVSEP", raising=False)
    else:
        monkeypatch.setenv("BLOCKLINK_PRIVSEP", mode)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert privileged.separated() is expected


def test_an_unknown_mode_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKLINK_PRIVSEP", "forced")
    with pytest.raises(InvalidOption) as ei:
        privileged.separated()
    assert ei.value.option == "BLOCKLINK_PRIVSEP"


class _Channel:
    """Stands in for the privsep context: records which privileged functions were sent over."""

    def __init__(self) -> None:
        self.sent: List[str] = []
        self.channel = object()

    def _wrap(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.sent.append(func.__name__)
        return {"lio_list": [], "tgt_request": (0, "")}.get(func.__name__)


def _every_privileged_path(tmp_path: Any) -> None:
    """One call down each privileged path: sysfs write, nvmet configfs ops, LIO, tgtd's socket."""
    from blocklink.target.lio import LioTarget
    from blocklink.target.tgtadm import tgt_request

    sub = "/sys/kernel/config/nvmet/subsystems/nqn.2014-08.org.test:x"
    HostPaths().write("/sys/class/scsi_host/host0/scan", "- - -")
    scsi.flush(FakeExecutor(), HostPaths(), "sdq")
    fs = ConfigFS(HostPaths())
    fs.mkdir(sub)
    fs.symlink("/sys/kernel/config/nvmet/hosts/h", sub + "/allowed_hosts/h")
    fs.unlink(sub + "/allowed_hosts/h")
    fs.rmdir(sub)
    fs.restrict("/sys/kernel/config/nvmet/hosts/h/dhchap_key")
    LioTarget(portals=["127.0.0.1:3260"], lock_path=str(tmp_path / "locks")).list_exports()
    tgt_request(str(tmp_path / "tgtd.sock"), 1, 1, "")


ROUTED = ["write_sysfs", "flush_block", "configfs_mkdir", "configfs_symlink", "configfs_unlink", "configfs_rmdir", "restrict_sysfs",
          "lio_list", "tgt_request"]


def test_force_sends_every_privileged_call_to_the_daemon(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root with BLOCKLINK_PRIVSEP=force, nothing privileged runs here: every entry point goes over
    the channel (the real daemon: tests/unit/test_seams.py), and commands get the root helper."""
    ch = _Channel()
    monkeypatch.setattr(privileged, "_context", ch)
    monkeypatch.setenv("BLOCKLINK_PRIVSEP", "force")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    _every_privileged_path(tmp_path)
    assert ch.sent == ROUTED
    r = ProcessExecutor(root_helper="env VIA_HELPER=1").run(["sh", "-c", "echo ${VIA_HELPER:-0}"])
    assert r.argv[:2] == ("env", "VIA_HELPER=1") and r.stdout.strip() == "1"
    assert privileged.privsep_started() is True


def test_every_writer_consults_the_one_decision(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch only privileged.separated: every privileged path follows it (no other geteuid check)."""
    ch = _Channel()
    asked: List[bool] = []
    monkeypatch.setattr(privileged, "_context", ch)
    monkeypatch.setenv("BLOCKLINK_PRIVSEP", "off")  # would keep everything here, were it consulted elsewhere
    monkeypatch.setattr(privileged, "separated", lambda: asked.append(True) or True)
    _every_privileged_path(tmp_path)
    assert ch.sent == ROUTED and len(asked) == len(ROUTED)
    assert ProcessExecutor(root_helper="env X=1").run(["true"]).argv[:2] == ("env", "X=1")
    monkeypatch.setattr(privileged, "separated", lambda: False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root, yet nothing is separated: no helper
    assert ProcessExecutor(root_helper="env X=1").run(["true"]).argv == ("true",)


def test_off_runs_in_process_within_the_roots(fake_roots: Tuple[str, str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs, nvmet, _ = fake_roots
    ch = _Channel()
    monkeypatch.setattr(privileged, "_context", ch)
    monkeypatch.setenv("BLOCKLINK_PRIVSEP", "off")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    paths = HostPaths(sysfs=sysfs)  # the real host's writer (PRIVILEGED), on the roots above
    attr = os.path.join(sysfs, "class", "x", "scan")
    open(attr, "w").close()
    paths.write(attr, "1 2 3")
    ConfigFS(paths).mkdir(os.path.join(nvmet, "hosts", "h"))
    assert open(attr).read() == "1 2 3" and os.listdir(os.path.join(nvmet, "hosts")) == ["h"] and ch.sent == []
    with pytest.raises(PathRefused):  # the writer stays confined in-process too
        PRIVILEGED.write(os.path.join(sysfs, "out", "victim"), "x")


# ------------------------------------------------------------------ the injected writer
def test_host_paths_pick_the_writer_by_their_own_sysfs_root(tmp_path: Any) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: List[Tuple[str, ...]] = []

        def write(self, path: str, data: str) -> None:
            self.calls.append(("write", path, data))

        def mkdir(self, path: str) -> None:
            self.calls.append(("mkdir", path))

        def rmdir(self, path: str) -> None:
            self.calls.append(("rmdir", path))

        def symlink(self, target: str, link: str) -> None:
            self.calls.append(("symlink", target, link))

        def unlink(self, link: str) -> None:
            self.calls.append(("unlink", link))

    rec = Recorder()
    root = str(tmp_path / "host")
    paths = HostPaths(sysfs=root + "/sys", writer=rec)
    paths.write(root + "/sys/block/sda/device/delete", "1")
    ConfigFS(paths).mkdir(root + "/sys/kernel/config/nvmet/hosts/h")
    os.makedirs(root + "/etc")
    open(root + "/etc/f", "w").close()
    paths.write(root + "/etc/f", "plain")  # outside the sysfs root: the caller's own write
    assert rec.calls == [("write", root + "/sys/block/sda/device/delete", "1"),
                         ("mkdir", root + "/sys/kernel/config/nvmet/hosts/h")]
    assert open(root + "/etc/f").read() == "plain"
    assert paths.files("/sys/block/sda/device/delete") is DIRECT  # "/sys/" itself means nothing here
    assert paths.files(root + "/sys-evil/x") is DIRECT and paths.files(root + "/sys/../etc/f") is DIRECT
    assert HostPaths().files("/sys/block/sda/device/delete") is PRIVILEGED
    assert HostPaths.under(root).files(root + "/sys/block/sda/device/delete") is DIRECT


def test_write_fabrics_opens_only_the_fabrics_device(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connect entry point opens exactly FABRICS_DEV read-write (the secret-bearing options go
    there and nowhere else); any other path, even one leading to it, is refused before any open."""
    from blocklink.masking import Secret

    dev = str(tmp_path / "nvme-fabrics")
    with open(dev, "w") as f:
        f.write("")
    monkeypatch.setattr(privileged, "FABRICS_DEV", dev)
    os.symlink(dev, str(tmp_path / "link"))
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    for bad in (str(victim), str(tmp_path / "link"), dev + "/", dev + "x", "/dev/nvme0", "nvme-fabrics"):
        _refused(privileged.write_fabrics.func, bad, "nqn=x")
    assert victim.read_text() == "untouched"
    # a regular file stands in for the device: the write lands, the read-back (at the end) is empty
    assert privileged.write_fabrics.func(dev, Secret("nqn=x,dhchap_secret=DHHC-1:00:abc=:")) == ""
    assert open(dev).read() == "nqn=x,dhchap_secret=DHHC-1:00:abc=:"
