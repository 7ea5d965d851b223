"""NvmetTarget on a fake nvmet configfs (kernel semantics: default groups, busy items, enable checks).

Assertions are on the configfs tree left behind and on the connection info handed out.
"""

import errno
import os
import stat
import uuid

import pytest

from blocklink.connection import NvmeofInfo
from blocklink.errors import ExportNotFound, InvalidConnectionInfo, InvalidConnector, TargetError
from blocklink.target import nvmet as nvmet_mod
from blocklink.target.nvmet import NvmetTarget, volume_uuid
from blocklink.target.nvmet_config import mount_fs_type
from blocklink.testing.hosttree_nvme import FakeNvmeKernel, FakeNvmetConfigFS

MiB = 1 << 20
VOL = "3f2a6b1c-0d4e-4f5a-8b6c-7d8e9f0a1b2c"
HOST_A = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000a1"
HOST_B = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000b2"


@pytest.fixture
def kernel(tmp_path):
    return FakeNvmeKernel(str(tmp_path / "root"))


def make(kernel, tmp_path, portals=("127.0.0.1:4420",), **kw):
    kw.setdefault("buffered_io", True)
    return NvmetTarget(portals=list(portals), paths=kernel.paths, configfs=kernel.configfs,
                       backing_dir=str(tmp_path), lock_path=str(tmp_path / "locks"), **kw)


def tree(kernel):
    """configfs as a sorted list of relative paths (links shown with their targets)."""
    root = kernel.configfs.root
    out = []
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out.append(f"{rel} -> {os.path.relpath(os.readlink(p), root)}")
            elif os.path.isdir(p) and rel.count(os.sep) <= 3:
                out.append(rel + "/")
    return sorted(out)


def attr(kernel, *parts):
    return kernel.paths.read(os.path.join(kernel.configfs.root, *parts))


def test_create_export_builds_subsystem_namespace_and_port(kernel, tmp_path):
    t = make(kernel, tmp_path, portals=("127.0.0.1", "[::1]:4421"))
    e = t.create_export(VOL, size=64 * MiB)
    nqn = f"nqn.2010-10.org.openstack:volume-{VOL}"
    path = str(tmp_path / f"volume-{VOL}")
    assert (e.nqn, e.nsid, e.device_path, e.device_uuid, e.hosts) == (nqn, 1, path, VOL, ())
    assert [p.address for p in e.portals] == ["127.0.0.1:4420", "[::1]:4421"] and e.buffered_io
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and os.path.getsize(path) == 64 * MiB
    assert attr(kernel, "subsystems", nqn, "attr_allow_any_host") == "0"
    ns = ("subsystems", nqn, "namespaces", "1")
    assert [attr(kernel, *ns, a) for a in ("device_path", "device_uuid", "buffered_io", "enable")] == [
        path, VOL, "1", "1"]
    assert [(attr(kernel, "ports", i, "addr_traddr"), attr(kernel, "ports", i, "addr_adrfam"),
             attr(kernel, "ports", i, "addr_trsvcid")) for i in ("1", "2")] == [
        ("127.0.0.1", "ipv4", "4420"), ("::1", "ipv6", "4421")]
    assert f"ports/1/subsystems/{nqn} -> subsystems/{nqn}" in tree(kernel)
    assert t.list_exports() == [VOL] and t.get_export(VOL) == e
    with pytest.raises(TargetError, match="already exported"):
        t.create_export(VOL)


def test_second_volume_shares_the_port(kernel, tmp_path):
    t = make(kernel, tmp_path)
    t.create_export(VOL, size=MiB)
    t.create_export("vol-2", size=MiB)
    assert os.listdir(os.path.join(kernel.configfs.root, "ports")) == ["1"]
    t.remove_export(VOL)
    assert os.listdir(os.path.join(kernel.configfs.root, "ports", "1", "subsystems")) == [
        "nqn.2010-10.org.openstack:volume-vol-2"]
    t.remove_export("vol-2")
    assert tree(kernel) == ["hosts/", "ports/", "subsystems/"]


def test_namespace_uuid_is_the_volume_id_or_a_stable_uuid5(kernel, tmp_path):
    assert volume_uuid(VOL.replace("-", "").upper()) == VOL
    assert volume_uuid("vol-2") == volume_uuid("vol-2") != volume_uuid("vol-3")
    uuid.UUID(volume_uuid("vol-2"))
    e = make(kernel, tmp_path).create_export("vol-2", size=MiB)
    assert e.device_uuid == volume_uuid("vol-2")


def test_initialize_and_terminate_connection(kernel, tmp_path):
    t = make(kernel, tmp_path, portals=("127.0.0.1:4420", "127.0.0.2:4420"))
    t.create_export(VOL, size=MiB)
    t.create_export("vol-2", size=MiB)
    nqn = t.subsystem_nqn(VOL)
    info = t.initialize_connection(VOL, {"host": "compute-1", "nqn": HOST_A, "initiator": "iqn.2004-10.org.x:y"})
    assert isinstance(info, NvmeofInfo) and info.form == "new"
    assert info.to_dict() == {"driver_volume_type": "nvmeof", "data": {
        "target_nqn": nqn, "portals": [["127.0.0.1", 4420, "tcp"], ["127.0.0.2", 4420, "tcp"]], "vol_uuid": VOL,
        "ns_id": 1, "volume_id": VOL, "encrypted": False, "access_mode": "rw"}}
    assert f"subsystems/{nqn}/allowed_hosts/{HOST_A} -> hosts/{HOST_A}" in tree(kernel)
    assert t.initialize_connection(VOL, {"host": "compute-1", "nqn": HOST_A}) == info  # idempotent
    t.initialize_connection("vol-2", {"host": "compute-1", "nqn": HOST_A})
    t.initialize_connection(VOL, {"host": "compute-2", "nqn": HOST_B})
    assert t.get_export(VOL).hosts == (HOST_A, HOST_B)

    t.terminate_connection(VOL, {"host": "compute-1", "nqn": HOST_A})
    assert t.get_export(VOL).hosts == (HOST_B,)
    assert sorted(os.listdir(os.path.join(kernel.configfs.root, "hosts"))) == [HOST_A, HOST_B]  # vol-2 uses A
    t.terminate_connection(VOL, None)  # force-detach: every host
    assert t.get_export(VOL).hosts == () and os.listdir(os.path.join(kernel.configfs.root, "hosts")) == [HOST_A]
    t.terminate_connection(VOL, {"host": "compute-1", "nqn": HOST_A})  # harmless again
    t.remove_export("vol-2")
    assert os.listdir(os.path.join(kernel.configfs.root, "hosts")) == []


def test_connector_is_validated_before_anything_changes(kernel, tmp_path):
    t = make(kernel, tmp_path)
    t.create_export(VOL, size=MiB)
    before = tree(kernel)
    with pytest.raises(InvalidConnector) as e:
        t.initialize_connection(VOL, {"host": "compute-1", "initiator": "iqn.2004-10.org.x:y"})
    assert e.value.field == "nqn" and "hostnqn" in str(e.value)
    with pytest.raises(InvalidConnector) as e:
        t.initialize_connection(VOL, {"host": "compute-1", "nqn": "iqn.2004-10.org.x:y"})
    assert e.value.field == "nqn"
    with pytest.raises(InvalidConnector):
        t.initialize_connection(VOL, {"host": "h", "nqn": "nqn.2014-08.org.x:a/../../b"})
    with pytest.raises(InvalidConnectionInfo):
        t.initialize_connection(VOL, {"host": "h", "nqn": HOST_A}, access_mode="rwx")
    assert tree(kernel) == before
    with pytest.raises(ExportNotFound):
        t.initialize_connection("vol-9", {"host": "h", "nqn": HOST_A})
    with pytest.raises(InvalidConnectionInfo):
        t.create_export("../etc", size=MiB)


def test_remove_export_leaves_nothing_and_spares_foreign_ports(kernel, tmp_path):
    t = make(kernel, tmp_path, portals=("127.0.0.1:4420", "127.0.0.2:4420"))
    foreign = os.path.join(kernel.configfs.root, "ports", "7")
    kernel.configfs.mkdir(foreign)  # someone else's port (another address): not ours to remove
    kernel.configfs.write(os.path.join(foreign, "addr_traddr"), "10.0.0.1")
    t.create_export(VOL, size=MiB)
    t.initialize_connection(VOL, {"host": "h", "nqn": HOST_A})
    t.remove_export(VOL)
    assert tree(kernel) == ["hosts/", "ports/", "ports/7/", "ports/7/ana_groups/", "ports/7/referrals/",
                            "ports/7/subsystems/", "subsystems/"]
    assert os.path.exists(tmp_path / f"volume-{VOL}")  # the data is the caller's
    t.remove_export(VOL)  # a missing export is fine


def test_ensure_export_repairs_what_was_lost(kernel, tmp_path):
    t = make(kernel, tmp_path)
    e = t.create_export(VOL, size=MiB)
    t.initialize_connection(VOL, {"host": "h", "nqn": HOST_A})
    nqn = e.nqn
    assert t.ensure_export(VOL) == t.get_export(VOL)  # nothing to do
    kernel.configfs.unlink(os.path.join(kernel.configfs.root, "ports", "1", "subsystems", nqn))
    kernel.configfs.write(os.path.join(kernel.configfs.root, "subsystems", nqn, "namespaces", "1", "enable"), "0")
    repaired = t.ensure_export(VOL)
    assert repaired.extra == {"enabled": True, "exposed": True} and repaired.hosts == (HOST_A,)
    t.remove_export(VOL)
    assert t.ensure_export(VOL, e.device_path).device_uuid == VOL  # after a reboot: re-created as before


def test_failed_enable_rolls_everything_back(kernel, tmp_path):
    class EnableFails(FakeNvmetConfigFS):
        def write(self, path, data):
            if path.endswith("/enable") and data == "1":
                raise OSError(errno.EINVAL, "Invalid argument", path)
            super().write(path, data)

    fs = EnableFails(kernel.paths)
    t = NvmetTarget(paths=kernel.paths, configfs=fs, backing_dir=str(tmp_path), lock_path=str(tmp_path / "l"),
                    buffered_io=False)
    with pytest.raises(TargetError) as e:
        t.create_export(VOL, size=MiB)
    assert "enabling it on" in str(e.value) and "O_DIRECT" in str(e.value)
    assert tree(kernel) == ["hosts/", "ports/", "subsystems/"]
    assert not os.path.exists(tmp_path / f"volume-{VOL}")  # the file it created is removed too


def test_files_on_overlayfs_are_refused(kernel, tmp_path):
    with open(kernel.paths.procpath("self", "mountinfo"), "w") as f:
        f.write("22 1 0:21 / / rw - ext4 /dev/vda1 rw\n"
                f"40 22 0:40 / {tmp_path} rw,relatime - overlay ovl-tmp rw,lowerdir=/a,upperdir=/b\n")
    t = make(kernel, tmp_path)
    with pytest.raises(InvalidConnectionInfo) as e:
        t.create_export(VOL, size=MiB)
    assert e.value.field == "device_path" and "overlay" in str(e.value) and "loop device" in str(e.value)
    assert tree(kernel) == ["hosts/", "ports/", "subsystems/"] and not os.path.exists(tmp_path / f"volume-{VOL}")


def test_mount_fs_type(kernel, tmp_path):
    with open(kernel.paths.procpath("self", "mountinfo"), "w") as f:
        f.write("22 1 0:21 / / rw - ext4 /dev/vda1 rw\n"
                "30 22 0:30 / /srv/my\\040vols rw - xfs /dev/vdb rw\n"
                "31 22 0:31 / /srv rw - tmpfs tmpfs rw\n")
    assert mount_fs_type(kernel.paths, "/srv/my vols/a.img") == "xfs"
    assert mount_fs_type(kernel.paths, "/srv/other") == "tmpfs"
    assert mount_fs_type(kernel.paths, "/usr/x") == "ext4"


def test_buffered_io_choice(kernel, tmp_path, monkeypatch):
    e = make(kernel, tmp_path, buffered_io=False).create_export(VOL, size=MiB)
    assert not e.buffered_io
    monkeypatch.setattr(nvmet_mod, "_supports_direct_io", lambda path: False)  # tmpfs before Linux 6.6
    assert make(kernel, tmp_path, buffered_io=None).create_export("vol-2", size=MiB).buffered_io
    monkeypatch.setattr(nvmet_mod, "_supports_direct_io", lambda path: True)
    assert not make(kernel, tmp_path, buffered_io=None).create_export("vol-3", size=MiB).buffered_io


def test_revalidate_size(kernel, tmp_path):
    t = make(kernel, tmp_path)
    e = t.create_export(VOL, size=MiB)
    os.truncate(e.device_path, 3 * MiB)
    assert t.revalidate_size(VOL) == 3 * MiB
    assert kernel.configfs.enabled_namespaces(e.nqn)[1][2] == 3 * MiB
    with pytest.raises(ExportNotFound):
        t.revalidate_size("vol-9")


def test_bad_options(kernel, tmp_path):
    with pytest.raises(InvalidConnectionInfo, match="not an IP address"):
        make(kernel, tmp_path, portals=("storage.example.com:4420",))
    with pytest.raises(InvalidConnectionInfo) as e:
        make(kernel, tmp_path, transport="iwarp")
    assert e.value.field == "transport"
    with pytest.raises(InvalidConnectionInfo) as e:
        make(kernel, tmp_path, nqn_prefix="iqn.2010-10.org.openstack:")
    assert e.value.field == "nqn_prefix"
    with pytest.raises(InvalidConnectionInfo):
        make(kernel, tmp_path).create_export(VOL)  # no such file and no size


def test_privileged_configfs_paths_are_confined():
    # more in tests/unit/test_privileged.py
    from blocklink.errors import PathRefused
    from blocklink.privileged import NVMET_ROOT, confine

    assert confine("/sys/kernel/config/nvmet/subsystems/x", NVMET_ROOT, follow=False) == \
        "/sys/kernel/config/nvmet/subsystems/x"
    for bad in ("/sys/kernel/config/nvmet/../target/x", "/etc/passwd", "/sys/kernel/config/nvmetx/a",
                "/sys/kernel/config/nvmet"):
        with pytest.raises(PathRefused):
            confine(bad, NVMET_ROOT, follow=False)


def test_fake_configfs_behaves_like_the_kernel(kernel, tmp_path):
    """The rules the fake enforces (checked against Linux 6.1 in the guest's functional tests)."""
    fs, root = kernel.configfs, kernel.configfs.root
    s = os.path.join(root, "subsystems", "nqn.2014-08.org.x:s")
    fs.mkdir(s)
    fs.mkdir(os.path.join(s, "namespaces", "1"))
    with pytest.raises(OSError) as e:
        fs.write(os.path.join(s, "namespaces", "1", "enable"), "1")  # no device_path
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        fs.rmdir(s)
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(PermissionError):
        fs.mkdir(os.path.join(root, "elsewhere"))
