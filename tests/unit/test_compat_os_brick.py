"""The os-brick facade (blocklink.compat.os_brick) on a fake host: os-brick's call shapes and results.

Each test drives the facade the way Nova or Cinder do (bare ``data`` dicts, ``device_info=None``,
``force``/``ignore_errors``) and asserts what it returns and what the fake host is left with.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Dict

import pytest

from blocklink import errors
from blocklink.compat.os_brick import exception
from blocklink.compat.os_brick.hostprops import NQN_PREFIX, connector_properties
from blocklink.compat.os_brick.initiator import connector as brick_connector
from blocklink.compat.os_brick.initiator.connectors.iscsi import ISCSIConnector
from blocklink.compat.os_brick.initiator.utils import guard_connection
from blocklink.testing.fakeiscsi import FakeIscsiKernel
from blocklink.testing.hosttree import FakeHostTree, FakeLun, naa_wwid

IQN = "iqn.2010-10.org.openstack:volume-facade"
SECRET = "facade-chap-secret"


@pytest.fixture
def kernel(tmp_path: Any) -> FakeIscsiKernel:
    """A fake host with one CHAP target of three LUNs (WWNs naa_wwid(200..202)) at 10.0.0.1."""
    k = FakeIscsiKernel(FakeHostTree(str(tmp_path / "host")))
    k.add_target(IQN, ["10.0.0.1:3260"], {n: FakeLun(n, naa_wwid(200 + n)) for n in range(3)}, chap=("user", SECRET))
    return k


@pytest.fixture
def tree(kernel: FakeIscsiKernel) -> FakeHostTree:
    return kernel.tree


def factory(kernel: FakeIscsiKernel, tmp_path: Any, **kw: Any) -> Any:
    """Nova's call: ``InitiatorConnector.factory(ISCSI, root_helper, use_multipath=, device_scan_attempts=,
    transport=, enforce_multipath=)``, plus blocklink's seams for the fake host."""
    return brick_connector.InitiatorConnector.factory(
        "ISCSI", "sudo nova-rootwrap /etc/nova/rootwrap.conf", use_multipath=False, device_scan_attempts=5,
        transport="default", enforce_multipath=False, executor=kernel.executor, paths=kernel.tree.paths,
        lock_path=str(tmp_path / "locks"), **kw)


def data(lun: int = 1, **extra: Any) -> Dict[str, Any]:
    d = {"target_portal": "10.0.0.1:3260", "target_iqn": IQN, "target_lun": lun, "auth_method": "CHAP",
         "auth_username": "user", "auth_password": SECRET, "volume_id": f"vol-{lun}", "qos_specs": None,
         "access_mode": "rw", "encrypted": False}
    d.update(extra)
    return d


def disks(tree: FakeHostTree) -> list:
    return sorted(n for n in os.listdir(tree.p("sys", "block")) if n.startswith("sd"))


def test_factory_refuses_protocols_blocklink_does_not_implement() -> None:
    for name in ("LIGHTOS", "SCALEIO", "STORPOOL", "VZSTORAGE", "NFS", "ISER", "nonsense"):
        with pytest.raises(exception.InvalidConnectorProtocol) as ei:
            brick_connector.InitiatorConnector.factory(name, None)
        e = ei.value
        assert isinstance(e, ValueError) and isinstance(e, errors.UnknownProtocol)  # os-brick's and blocklink's
        assert e.protocol == name and set(e.known) == {"FIBRE_CHANNEL", "ISCSI", "NVME", "NVMEOF", "RBD"}
        assert "ISCSI" in str(e)


def test_factory_maps_nova_options_and_any_case(kernel: FakeIscsiKernel, tmp_path: Any) -> None:
    conn = factory(kernel, tmp_path)
    assert isinstance(conn, ISCSIConnector) and conn.blocklink.protocol == "iscsi"
    assert conn.blocklink.use_multipath is False and conn.blocklink.enforce_multipath is False
    lower = brick_connector.InitiatorConnector.factory("iscsi", None, use_multipath=True, enforce_multipath=True,
                                                       conn={"driver_volume_type": "iscsi"}, expect_raw_disk=True)
    assert lower.blocklink.use_multipath is True and lower.blocklink.enforce_multipath is True
    assert conn.get_search_path() == "/dev/disk/by-path"


def test_connect_gives_os_brick_shape_and_nova_detach_by_device_path(tree: FakeHostTree, kernel: FakeIscsiKernel,
                                                                     tmp_path: Any) -> None:
    conn = factory(kernel, tmp_path)
    info = conn.connect_volume(data(1))
    assert info == {"type": "block", "path": "/dev/sda", "scsi_wwn": naa_wwid(201)}
    assert conn.check_valid_device(info["path"]) is True
    assert conn.get_volume_paths(data(1)) == ["/dev/sda"]
    assert conn.get_all_available_volumes() == [
        os.path.join("/dev/disk/by-path", n) for n in sorted(os.listdir(tree.p("dev", "disk", "by-path")))]
    assert len(conn.get_all_available_volumes()) == 1
    props = data(1, device_path=info["path"])  # what Nova keeps in connection_info['data']
    conn.disconnect_volume(props, None, force=False)
    assert disks(tree) == [] and kernel.session_ids() == []
    assert conn.check_valid_device(info["path"]) is False and conn.get_volume_paths(data(1)) == []


def test_connection_data_as_device_info_detaches_by_its_device_path(tree: FakeHostTree, kernel: FakeIscsiKernel,
                                                                    tmp_path: Any) -> None:
    """Nova's FC driver passes ``connection_info['data']`` as both arguments (no ``path`` key in it)."""
    conn = factory(kernel, tmp_path)
    first = conn.connect_volume(data(1))
    props = data(1, device_path=first["path"])
    conn.disconnect_volume(props, props)
    assert disks(tree) == [] and kernel.session_ids() == []
    second = conn.connect_volume(data(2))  # a stale device_path naming another volume's device now
    assert second["path"] == first["path"]
    conn.disconnect_volume(props, props)
    assert disks(tree) == ["sda"] and len(kernel.session_ids()) == 1  # vol-2 untouched
    conn.disconnect_volume(data(2, device_path="/dev/sda"), data(2, device_path="/dev/sda"))
    assert disks(tree) == [] and kernel.session_ids() == []


def test_nova_detach_never_touches_a_reused_device_name(tree: FakeHostTree, kernel: FakeIscsiKernel,
                                                        tmp_path: Any) -> None:
    """vol-1's path was lost and its name reused by vol-2: Nova's stale device_path must not detach vol-2."""
    conn = factory(kernel, tmp_path)
    first = conn.connect_volume(data(1))
    conn.disconnect_volume(data(1), first)  # (Cinder-style: the device dict)
    second = conn.connect_volume(data(2))
    assert second["path"] == first["path"] == "/dev/sda" and second["scsi_wwn"] == naa_wwid(202)
    conn.disconnect_volume(data(1, device_path=first["path"]), None)
    assert disks(tree) == ["sda"] and len(kernel.session_ids()) == 1  # vol-2 untouched
    assert conn.get_volume_paths(data(2)) == ["/dev/sda"]
    conn.disconnect_volume(data(2, device_path="/dev/sda"), None)
    assert disks(tree) == [] and kernel.session_ids() == []


def test_cinder_device_dict_with_another_wwn_is_refused_in_both_styles(tree: FakeHostTree, kernel: FakeIscsiKernel,
                                                                       tmp_path: Any) -> None:
    conn = factory(kernel, tmp_path)
    dev = conn.connect_volume(data(1))
    forged = dict(dev, scsi_wwn=naa_wwid(999))
    with pytest.raises(exception.BrickException) as ei:
        conn.disconnect_volume(data(1), forged)
    assert isinstance(ei.value, errors.DeviceMismatch) and ei.value.device == "/dev/sda"
    assert isinstance(ei.value.cause, errors.DeviceMismatch)
    assert disks(tree) == ["sda"]
    conn.disconnect_volume(data(1), dev)
    assert disks(tree) == []


def test_force_and_ignore_errors_follow_os_brick(tree: FakeHostTree, kernel: FakeIscsiKernel, tmp_path: Any) -> None:
    conn = factory(kernel, tmp_path)
    dev = conn.connect_volume(data(1))
    kernel.fail_flush.add("sda")
    with pytest.raises(exception.CommandExecutionFailed) as ei:  # no force: the first failure stops it
        conn.disconnect_volume(data(1), dev, ignore_errors=True)
    assert isinstance(ei.value, errors.CommandFailed) and disks(tree) == ["sda"]
    with pytest.raises(exception.ExceptionChainer) as chained:  # force: carries on, then raises all
        conn.disconnect_volume(data(1), dev, force=True)
    assert isinstance(chained.value, errors.DetachIncomplete) and bool(chained.value)
    assert "flush /dev/sda" in chained.value.failures[0]
    assert disks(tree) == [] and kernel.session_ids() == []
    dev = conn.connect_volume(data(1))
    conn.disconnect_volume(data(1), dev, force=True, ignore_errors=True)  # Cinder's backup detach: logged only
    assert disks(tree) == [] and kernel.session_ids() == []


def test_missing_lun_and_bad_chap_raise_os_brick_classes(tree: FakeHostTree, kernel: FakeIscsiKernel,
                                                        tmp_path: Any) -> None:
    conn = factory(kernel, tmp_path)
    with pytest.raises(exception.VolumeDeviceNotFound) as ei:
        conn.connect_volume(data(7))
    assert isinstance(ei.value, errors.VolumeNotFound)
    with pytest.raises(exception.FailedISCSITargetPortalLogin) as bad:
        conn.connect_volume(data(1, auth_password="wrong-secret"))
    assert isinstance(bad.value, errors.AuthenticationFailed)
    assert "wrong-secret" not in str(bad.value) and SECRET not in str(bad.value)
    with pytest.raises(exception.InvalidParameterValue) as inv:
        conn.connect_volume({"target_portal": "10.0.0.1:3260"})
    assert isinstance(inv.value, errors.InvalidConnectionInfo)
    assert disks(tree) == [] and kernel.session_ids() == []


def test_extend_returns_bytes(tree: FakeHostTree, kernel: FakeIscsiKernel, tmp_path: Any) -> None:
    conn = factory(kernel, tmp_path)
    dev = conn.connect_volume(data(2))
    kernel.targets[IQN].luns[2].size = 2 << 30
    assert conn.extend_volume(data(2)) == 2 << 30
    conn.disconnect_volume(data(2), dev)


def test_check_valid_device_on_handles_keeps_the_position(tmp_path: Any) -> None:
    f = tmp_path / "blob"
    f.write_bytes(b"x" * 10000)
    conn = brick_connector.InitiatorConnector.factory("ISCSI", None)
    with open(f, "rb") as h:
        h.seek(123)
        assert conn.check_valid_device(h) is True and h.tell() == 123
    assert conn.check_valid_device(str(f)) is True
    assert conn.check_valid_device(str(tmp_path / "missing")) is False and conn.check_valid_device(None) is False


def _host_files(tree: FakeHostTree, root_majmin: str = "8:2") -> None:
    os.makedirs(tree.p("proc", "self"), exist_ok=True)
    with open(tree.p("proc", "self", "mountinfo"), "w") as f:
        f.write(f"22 1 {root_majmin} / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n")
    os.makedirs(tree.p("sys", "dev", "block"), exist_ok=True)
    os.makedirs(tree.p("sys", "devices", "sda2"), exist_ok=True)
    os.symlink(tree.p("sys", "devices", "sda2"), tree.p("sys", "dev", "block", "8:2"))
    os.makedirs(tree.p("dev", "disk", "by-uuid"), exist_ok=True)
    open(tree.p("dev", "sda2"), "w").close()
    open(tree.p("dev", "sda1"), "w").close()
    os.symlink("../../sda1", tree.p("dev", "disk", "by-uuid", "1111-aaaa"))
    os.symlink("../../sda2", tree.p("dev", "disk", "by-uuid", "6f1c2e0a-root"))
    os.makedirs(tree.p("sys", "class", "dmi", "id"), exist_ok=True)
    with open(tree.p("sys", "class", "dmi", "id", "product_uuid"), "w") as f:
        f.write("4C4C4544-0000-1111-2222-333344445555\n")


def test_connector_properties_have_os_brick_meanings(tree: FakeHostTree, kernel: FakeIscsiKernel) -> None:
    _host_files(tree)
    props = connector_properties("192.0.2.7", False, False, "compute-1", paths=tree.paths, nvme_cli=True)
    sys_uuid = "4c4c4544-0000-1111-2222-333344445555"
    assert props["uuid"] == "6f1c2e0a-root"  # the root file system's, not the DMI one
    assert props["system uuid"] == sys_uuid
    assert props["nqn"] == NQN_PREFIX + sys_uuid and props["nvme_hostid"] == sys_uuid
    assert open(tree.p("etc", "nvme", "hostnqn")).read() == NQN_PREFIX + sys_uuid + "\n"
    assert oct(os.stat(tree.p("etc", "nvme", "hostid")).st_mode & 0o777) == "0o644"
    assert (props["ip"], props["host"], props["initiator"]) == ("192.0.2.7", "compute-1", kernel.initiator)
    assert props["multipath"] is False and props["nvme_native_multipath"] is False
    # existing files are read, never rewritten
    with open(tree.p("etc", "nvme", "hostnqn"), "w") as f:
        f.write("nqn.2014-08.org.nvmexpress:uuid:operator-chosen\n")
    assert connector_properties(None, False, False, paths=tree.paths, nvme_cli=True)["nqn"].endswith("operator-chosen")


def test_connector_properties_without_block_root_or_nvme_cli(tree: FakeHostTree) -> None:
    _host_files(tree, root_majmin="0:31")  # overlay / 9p root
    props = connector_properties(None, False, False, paths=tree.paths, nvme_cli=False)
    assert "uuid" not in props and "nqn" not in props and "nvme_hostid" not in props
    assert props["system uuid"] == "4c4c4544-0000-1111-2222-333344445555"
    assert not os.path.exists(tree.p("etc", "nvme"))


def test_enforce_multipath_without_multipathd_raises_brick_exception(tree: FakeHostTree) -> None:
    with pytest.raises(exception.BrickException) as ei:
        connector_properties(None, True, True, paths=tree.paths, nvme_cli=False)
    assert isinstance(ei.value, errors.BlocklinkError) and "multipathd" in str(ei.value)
    assert connector_properties(None, True, False, paths=tree.paths, nvme_cli=False)["multipath"] is False


def test_guard_connection_locks_only_for_unknown_sharing(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("BLOCKLINK_OS_BRICK_LOCK_PATH", str(tmp_path / "locks"))
    with guard_connection({"shared_targets": True, "service_uuid": "svc"}):
        assert not os.path.exists(tmp_path / "locks")
    with guard_connection({"shared_targets": None, "service_uuid": "svc-1"}):
        assert [n for n in os.listdir(tmp_path / "locks") if "svc-1" in n]


def test_exception_chainer_collects_and_swallows() -> None:
    chain = exception.ExceptionChainer()
    assert not chain
    with chain.context(True, "step %s failed", "one"):
        raise OSError("first")
    with pytest.raises(KeyError):
        with chain.context(False):
            raise KeyError("second")
    assert bool(chain) and "first" in repr(chain) and "second" in repr(chain)
    e = exception.VolumeDeviceNotFound(device="/dev/sdz")
    assert e.msg == "Volume device not found at /dev/sdz." and isinstance(e, errors.DeviceNotFound)


def test_import_blocklink_loads_no_os_brick_nova_or_cinder() -> None:
    code = ("import sys, blocklink; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('os_brick', 'nova', 'cinder') or m.startswith('blocklink.compat')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _Image:
    """The part of rbd.Image a file wrapper uses, over a bytearray."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.name = "volume-x"
        self.closed = 0
        self.flushed = 0

    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    def write(self, data: bytes, offset: int) -> int:
        self.data[offset:offset + len(data)] = data
        return len(data)

    def aio_write(self, data: bytes, offset: int, oncomplete: Any) -> None:
        self.write(data, offset)
        oncomplete(_Completed())

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed += 1


class _Completed:
    def get_return_value(self) -> int:
        return 0


class _Owned:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_linuxrbd_wrapper_is_a_file_with_cinders_attributes() -> None:
    from blocklink.compat.os_brick.initiator.linuxrbd import RBDImageMetadata, RBDVolumeIOWrapper

    img, owned = _Image(8192), _Owned()
    f = RBDVolumeIOWrapper(RBDImageMetadata(img, "volumes", "cinder", "/run/x/ceph.conf"), owned=owned)
    assert (f.rbd_image, f.rbd_pool, f.rbd_user, f.rbd_conf) == (img, "volumes", "cinder", "/run/x/ceph.conf")
    f.seek(4096)
    assert f.write(b"abc") == 3 and f.tell() == 4099
    f.seek(0)
    assert f.read(3) == b"\0\0\0" and len(f.read()) == 8189 and f.read(10) == b""  # no read past the end
    assert img.data[4096:4099] == b"abc"
    f.close()
    assert img.closed == 1 and img.flushed >= 1 and owned.closed  # the facade's handle releases its conf files
    plain_file = RBDVolumeIOWrapper(RBDImageMetadata(_Image(512), None, None, None))  # Cinder's own wrapping
    assert (plain_file.rbd_pool, plain_file.rbd_user, plain_file.rbd_conf) == ("", "", "")
    plain_file.close()
