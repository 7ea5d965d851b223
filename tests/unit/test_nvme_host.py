"""NVMe host layer: sysfs model on fake trees, nvme-cli output parsing on outputs recorded in the guest."""

import errno
import os

import pytest

from blocklink.initiator.properties import read_nvme_native_multipath

from blocklink.errors import AuthenticationFailed, ConnectionFailed, InvalidOption
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host.nvme import (Controller, NvmeHost, NvmePortalSpec, classify_fabrics_error,
                                           normalize_nguid, normalize_uuid, parse_address, parse_id_ns_size,
                                           parse_list_subsys)
from blocklink.testing.fakes import FakeExecutor
from blocklink.testing.hosttree_nvme import FakeNvmeKernel

# recorded from nvme-cli 2.3 on Linux 6.1 in the guest (two namespaces, two paths; trimmed id-ns)
LIST_SUBSYS_TWO_PATHS = """[
  {
    "HostNQN":"nqn.2014-08.org.nvmexpress:uuid:a88c4ebb-c2fe-4cb0-be50-a59a1faf0916",
    "HostID":"1e62d188-1173-46c2-884d-1bd8399603fb",
    "Subsystems":[
      {
        "Name":"nvme-subsys0",
        "NQN":"nqn.2014-08.org.blvm:sub1",
        "Paths":[
          {
            "Name":"nvme0",
            "Transport":"tcp",
            "Address":"traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1",
            "State":"live"
          },
          {
            "Name":"nvme1",
            "Transport":"tcp",
            "Address":"traddr=127.0.0.2,trsvcid=4420,src_addr=127.0.0.1",
            "State":"live"
          }
        ]
      }
    ]
  }
]
"""
LIST_SUBSYS_EMPTY = "[\n]\n"
ID_NS_64MIB = """{
  "nsze":16384,
  "ncap":16384,
  "nuse":16384,
  "nsfeat":0,
  "nlbaf":0,
  "flbas":0,
  "mc":0,
  "dpc":0,
  "dps":0,
  "nmic":1,
  "anagrpid":1,
  "endgid":0,
  "eui64":"0000000000000000",
  "nguid":"00000000000000000000000000000000",
  "lbafs":[
    {
      "ms":0,
      "ds":12,
      "rp":0
    }
  ]
}
"""
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000b1"
NQN = "nqn.2014-08.org.blvm:sub1"
P1 = NvmePortalSpec("127.0.0.1", 4420, "tcp")


def test_parse_list_subsys_recorded():
    subs = parse_list_subsys(LIST_SUBSYS_TWO_PATHS)
    assert subs == [{"name": "nvme-subsys0", "nqn": NQN, "paths": [
        {"name": "nvme0", "transport": "tcp", "address": "traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1",
         "state": "live"},
        {"name": "nvme1", "transport": "tcp", "address": "traddr=127.0.0.2,trsvcid=4420,src_addr=127.0.0.1",
         "state": "live"}]}]
    assert parse_list_subsys(LIST_SUBSYS_EMPTY) == []
    assert parse_list_subsys("not json") == []


def test_parse_id_ns_size():
    assert parse_id_ns_size(ID_NS_64MIB) == 64 << 20
    # the format in use is FLBAS bits 0-3: the second LBA format (512 bytes) here
    assert parse_id_ns_size('{"nsze": 10, "flbas": 1, "lbafs": [{"ds": 12}, {"ds": 9}]}') == 5120
    assert parse_id_ns_size('{"nsze": 10, "flbas": 0, "lbafs": [{"ds": 0}]}') is None  # 1-byte LBA: unusable
    assert parse_id_ns_size('{"nsze": 10}') is None
    assert parse_id_ns_size("") is None


def test_identifiers_and_addresses():
    assert normalize_uuid("11111111222233334444555555555555") == "11111111-2222-3333-4444-555555555555"
    assert normalize_uuid("nope") is None and normalize_uuid(None) is None
    assert normalize_nguid("0123456789ABCDEF-0123456789abcdef".replace("-", "")) == "0123456789abcdef" * 2
    assert normalize_nguid("00000000-0000-0000-0000-000000000000") is None  # nvmet's "unset"
    assert parse_address("traddr=::1,trsvcid=4420,host_traddr=::1,src_addr=::1") == {
        "traddr": "::1", "trsvcid": "4420", "host_traddr": "::1", "src_addr": "::1"}


def _err(code):
    return OSError(code, os.strerror(code))


def test_fabrics_errors_recorded():
    """The errnos /dev/nvme-fabrics answered in the guest (6.1 and 6.12) become typed errors."""
    what = f"{NQN} at {P1}"
    assert classify_fabrics_error(_err(errno.EALREADY), what, HOSTNQN) is None  # a duplicate connect
    e = classify_fabrics_error(_err(errno.EIO), what, HOSTNQN)  # host NQN not allowed
    assert type(e) is AuthenticationFailed and HOSTNQN in str(e) and NQN in str(e) and "allowed hosts" in str(e)
    e = classify_fabrics_error(_err(errno.EIO), what, HOSTNQN, authenticated=True)
    assert type(e) is AuthenticationFailed and "DH-HMAC-CHAP" in str(e)
    assert "DH-HMAC-CHAP" in str(classify_fabrics_error(_err(errno.EKEYREJECTED), what, None))
    e = classify_fabrics_error(_err(errno.ECONNREFUSED), what, HOSTNQN)
    assert type(e) is ConnectionFailed and "unreachable (connection refused)" in str(e)
    assert "nvme-fabrics kernel module" in str(classify_fabrics_error(_err(errno.ENOENT), what, None))
    assert "EINVAL" in str(classify_fabrics_error(_err(errno.EINVAL), what, None))
    e = classify_fabrics_error(_err(errno.ENOMEM), what, None)
    assert type(e) is ConnectionFailed and os.strerror(errno.ENOMEM) in str(e)


@pytest.fixture
def kernel(tmp_path):
    return FakeNvmeKernel(str(tmp_path))


def test_controllers_and_matching(kernel):
    kernel.add_controller(NQN, "127.0.0.1", "4420", "tcp", HOSTNQN)
    kernel.add_controller(NQN, "::1", "4420", "tcp", HOSTNQN)
    kernel.add_controller(NQN, "127.0.0.1", "4421", "tcp", HOSTNQN)
    kernel.add_controller(NQN, "127.0.0.2", "4420", "tcp", "nqn.2014-08.org.example:other-host")
    host = NvmeHost(kernel.paths, FakeExecutor())
    c0 = host.controller("nvme0")
    assert c0 == Controller("nvme0", NQN, "tcp", "127.0.0.1", "4420", "live", HOSTNQN, None)
    assert c0.live and c0.dev == "/dev/nvme0"
    v6 = NvmePortalSpec("0:0:0:0:0:0:0:1", 4420, "tcp")  # same address, other spelling
    other_host = NvmePortalSpec("127.0.0.2", 4420, "tcp")
    found = host.find_controllers(NQN, [P1, v6, other_host], HOSTNQN)
    assert {p: c.name for p, c in found.items()} == {P1: "nvme0", v6: "nvme1"}  # not 4421, not the other host
    assert host.find_controllers("nqn.2014-08.org.blvm:other", [P1], HOSTNQN) == {}
    assert host.controller("nvme9") is None


def _subsystem_with(kernel, tmp_path, sizes, uuids=None, nguids=None):
    """An nvmet subsystem (fake configfs) allowing any host, with one namespace per size."""
    fs, root = kernel.configfs, kernel.configfs.root
    s = os.path.join(root, "subsystems", NQN)
    fs.mkdir(s)
    fs.write(os.path.join(s, "attr_allow_any_host"), "1")
    for i, size in enumerate(sizes, 1):
        img = str(tmp_path / f"ns{i}.img")
        with open(img, "wb") as f:
            f.truncate(size)
        d = os.path.join(s, "namespaces", str(i))
        fs.mkdir(d)
        fs.write(os.path.join(d, "device_path"), img)
        if uuids:
            fs.write(os.path.join(d, "device_uuid"), uuids[i - 1])
        if nguids:
            fs.write(os.path.join(d, "device_nguid"), nguids[i - 1])
        fs.write(os.path.join(d, "enable"), "1")
    for n, addr in enumerate(("127.0.0.1", "127.0.0.2"), 1):
        p = os.path.join(root, "ports", str(n))
        fs.mkdir(p)
        for k, v in (("addr_trtype", "tcp"), ("addr_traddr", addr), ("addr_trsvcid", "4420")):
            fs.write(os.path.join(p, k), v)
        fs.symlink(s, os.path.join(p, "subsystems", NQN))


U1, U2 = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"
G2 = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("multipath", [True, False])
def test_namespaces_named_like_linux(tmp_path, multipath):
    kernel = FakeNvmeKernel(str(tmp_path / "host"), multipath=multipath)
    _subsystem_with(kernel, tmp_path, [1 << 20, 2 << 20], uuids=[U1, U2],
                    nguids=["00000000-0000-0000-0000-000000000000", "01234567-89ab-cdef-0123-456789abcdef"])
    c0 = kernel.add_controller(NQN, "127.0.0.1", "4420", "tcp", HOSTNQN)
    c1 = kernel.add_controller(NQN, "127.0.0.2", "4420", "tcp", HOSTNQN)
    host = NvmeHost(kernel.paths, FakeExecutor())
    assert read_nvme_native_multipath(kernel.paths) is multipath
    ns = host.find_namespace([c0, c1], uuid=U1)
    assert ns.nsid == 1 and ns.size == 1 << 20 and ns.wwid == f"uuid.{U1}"
    if multipath:  # one head device for both paths
        assert ns.name == "nvme0n1" and ns.controllers == ("nvme0", "nvme1")
        assert sorted(os.listdir(kernel.paths.sys("class", "nvme", "nvme1"))).count("nvme0c1n1") == 1
    else:  # one device per controller: nvme<ctrl>n<ns>
        assert ns.name == "nvme0n1" and ns.controllers == ("nvme0",)
        assert host.find_namespace([c1], uuid=U1).name == "nvme1n1"
    by_nguid = host.find_namespace([c0], nguid=G2)
    assert by_nguid.nsid == 2 and by_nguid.nguid == G2 and by_nguid.wwid == f"eui.{G2}"
    assert host.find_namespace([c0], nsid=2).name == by_nguid.name
    assert host.find_namespace([c0], uuid="99999999-2222-3333-4444-555555555555") is None
    assert host.find_namespace([c0]) is None  # no identity: no guessing


def test_namespace_without_capacity_is_not_usable_yet(kernel, tmp_path):
    _subsystem_with(kernel, tmp_path, [1 << 20], uuids=[U1])
    c0 = kernel.add_controller(NQN, "127.0.0.1", "4420", "tcp", HOSTNQN)
    host = NvmeHost(kernel.paths, FakeExecutor())
    with open(kernel.paths.sys("block", "nvme0n1", "size"), "w") as f:
        f.write("0\n")  # the head exists a moment before its first path sets the capacity
    assert host.find_namespace([c0], uuid=U1) is None
    assert host.find_namespace([c0], uuid=U1, need_dev=False).name == "nvme0n1"


def test_device_users(kernel, tmp_path):
    _subsystem_with(kernel, tmp_path, [1 << 20, 1 << 20], uuids=[U1, U2])
    kernel.add_controller(NQN, "127.0.0.1", "4420", "tcp", HOSTNQN)
    host = NvmeHost(kernel.paths, FakeExecutor())
    assert host.device_users("nvme0n1") == []
    kernel.open_by(4242, "/dev/nvme0n1", comm="qemu-system-x86")
    os.makedirs(kernel.paths.sys("block", "nvme0n2", "holders", "dm-3"))
    dev = open(kernel.paths.sys("block", "nvme0n1", "dev")).read().strip()
    with open(kernel.paths.procpath("self", "mountinfo"), "w") as f:
        f.write(f"36 25 {dev} / /mnt/vol rw,relatime shared:1 - ext4 /dev/nvme0n1 rw\n")
    assert host.device_users("nvme0n1") == ["mounted on /mnt/vol", "open by pid 4242 (qemu-system-x86)"]
    assert host.device_users("nvme0n2") == ["held by dm-3"]


def test_subsystem_outlives_its_controllers_while_a_head_is_open(kernel, tmp_path):
    """Linux frees the subsystem at the last reference put: a process holding the head keeps it."""
    _subsystem_with(kernel, tmp_path, [1 << 20], uuids=[U1])
    kernel.add_controller(NQN, "127.0.0.1", "4420", "tcp", HOSTNQN)
    kernel.add_controller(NQN, "127.0.0.2", "4420", "tcp", HOSTNQN)
    host = NvmeHost(kernel.paths, FakeExecutor())
    assert host.subsystems(NQN) == ["nvme-subsys0"] and host.subsystems("nqn.2014-08.org.blvm:other") == []
    assert host.delayed_removal("nvme0n1") == 0 and host.delayed_removal("nvme9n9") == 0
    kernel.open_by(4242, "/dev/nvme0n1", comm="(udev-worker)")
    kernel.open_by(4343, "/dev/nvme0n1", comm="qemu-system-x86")
    kernel.open_by(4343, "/dev/sda", comm="qemu-system-x86")
    kernel.open_by(os.getpid(), "/dev/nvme0n1", comm="pytest")
    mine = f"pid {os.getpid()} (pytest) (this process)"
    assert mine in host.openers(["nvme0n1"]) and len(host.openers(["nvme0n1"])) == 3
    assert sorted(host.openers(["nvme0n1"], skip_self=True)) == ["pid 4242 ((udev-worker))",
                                                                 "pid 4343 (qemu-system-x86)"]
    kernel.close_by(os.getpid())
    for c in ("nvme0", "nvme1"):
        kernel.remove_controller(c)
    assert host.controllers(NQN) == [] and kernel.devices() == []
    assert host.subsystems(NQN) == ["nvme-subsys0"]  # no paths, still there
    assert sorted(host.openers(["nvme0n1"])) == ["pid 4242 ((udev-worker))", "pid 4343 (qemu-system-x86)"]
    assert sorted(host.openers([], deleted_nvme=True)) == [
        "pid 4242 ((udev-worker)) holding /dev/nvme0n1 (deleted)",
        "pid 4343 (qemu-system-x86) holding /dev/nvme0n1 (deleted)"]
    kernel.close_by(4242)
    assert host.subsystems(NQN) == ["nvme-subsys0"]
    kernel.close_by(4343)
    assert host.subsystems(NQN) == []


def test_delayed_head_removal_attribute(kernel, tmp_path):
    _subsystem_with(kernel, tmp_path, [1 << 20], uuids=[U1])
    kernel.add_controller(NQN, "127.0.0.1", "4420", "tcp", HOSTNQN)
    host = NvmeHost(kernel.paths, FakeExecutor())
    with open(kernel.paths.sys("block", "nvme0n1", "delayed_removal_secs"), "w") as f:
        f.write("30\n")
    assert host.delayed_removal("nvme0n1") == 30
    host.remove_without_delay("nvme0n1")
    assert host.delayed_removal("nvme0n1") == 0
    kernel.remove_controller("nvme0")
    assert host.subsystems(NQN) == [] and kernel.devices() == []


def test_connect_and_disconnect_speak_the_fabrics_interface_without_nvme_cli(kernel, tmp_path):
    _subsystem_with(kernel, tmp_path, [1 << 20], uuids=[U1])
    ex = FakeExecutor()  # answers nothing: any child process would fail the test
    host = NvmeHost(kernel.paths, ex)
    assert host.connect(NQN, P1, hostnqn=HOSTNQN, hostid=kernel.hostid, ctrl_loss_tmo=-1, keep_alive_tmo=5,
                        nr_io_queues=2) is True
    assert kernel.fabrics_writes == [{"nqn": NQN, "transport": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420",
                                      "hostnqn": HOSTNQN, "hostid": kernel.hostid, "nr_io_queues": "2",
                                      "ctrl_loss_tmo": "-1", "keep_alive_tmo": "5"}]
    assert kernel.controllers() == ["nvme0"]
    assert host.connect(NQN, P1, hostnqn=HOSTNQN) is False  # EALREADY: the kernel has this connection
    host.disconnect("nvme0")
    assert kernel.deleted == ["nvme0"] and kernel.controllers() == [] and kernel.devices() == []
    host.disconnect("nvme0")  # gone already: not an error
    assert ex.argvs() == []


def test_fabrics_errors_are_typed(kernel, tmp_path):
    host = NvmeHost(kernel.paths, FakeExecutor())
    with pytest.raises(ConnectionFailed, match="portal unreachable .connection refused"):
        host.connect(NQN, P1, hostnqn=HOSTNQN)  # no port yet
    _subsystem_with(kernel, tmp_path, [1 << 20], uuids=[U1])
    kernel.configfs.write(os.path.join(kernel.configfs.root, "subsystems", NQN, "attr_allow_any_host"), "0")
    with pytest.raises(AuthenticationFailed, match="not among the subsystem's allowed hosts"):
        host.connect(NQN, P1, hostnqn="nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000dead")
    with pytest.raises(InvalidOption, match="hostid"):
        host.connect(NQN, P1, hostnqn=HOSTNQN, hostid="a,duplicate_connect")
    os.unlink(kernel.paths.devpath("nvme-fabrics"))
    with pytest.raises(ConnectionFailed, match="nvme-fabrics kernel module is not loaded"):
        host.connect(NQN, P1, hostnqn=HOSTNQN)
    assert kernel.controllers() == [] and len(kernel.fabrics_writes) == 2  # the bad hostid never reached it


def test_auth_support_is_read_from_the_kernels_option_list(tmp_path):
    assert NvmeHost(FakeNvmeKernel(str(tmp_path / "a"), auth=True).paths, FakeExecutor()).supports_auth() is True
    old = FakeNvmeKernel(str(tmp_path / "b"), auth=False)
    assert NvmeHost(old.paths, FakeExecutor()).supports_auth() is False
    os.unlink(old.paths.devpath("nvme-fabrics"))
    assert NvmeHost(old.paths, FakeExecutor()).supports_auth() is False


def test_cli_wrapper_argv(kernel):
    ex = FakeExecutor().on(("nvme",), "")
    host = NvmeHost(HostPaths.under(kernel.root), ex)
    host.rescan("nvme3")
    assert ex.argvs() == [("nvme", "ns-rescan", "/dev/nvme3")]
    ex3 = FakeExecutor().on(("nvme", "id-ns"), ID_NS_64MIB)
    assert NvmeHost(kernel.paths, ex3).id_ns_size("/dev/nvme0n1") == 64 << 20
    ex4 = FakeExecutor().on(("nvme", "id-ns"), (1, "", "Failed to open /dev/nvme0n1\n"))
    assert NvmeHost(kernel.paths, ex4).id_ns_size("/dev/nvme0n1") is None


def test_modules_loaded_only_when_missing(tmp_path):
    kernel = FakeNvmeKernel(str(tmp_path), fabrics_loaded=False)
    ex = kernel.install()
    host = NvmeHost(kernel.paths, ex)
    assert not host.fabrics_ready()
    host.load_modules("tcp")
    assert ex.argvs() == [("modprobe", "-a", "nvme-fabrics", "nvme-tcp")] and host.fabrics_ready()
    host.load_modules("tcp")
    assert len(ex.calls) == 1


def test_61_lists_dhchap_tokens_but_is_not_taken_for_an_auth_kernel(tmp_path):
    from blocklink.testing.hosttree_nvme import FABRICS_TOKENS_61

    assert "dhchap_secret=%s" in FABRICS_TOKENS_61  # as read from Debian's 6.1 in the guest
    old = FakeNvmeKernel(str(tmp_path), auth=False)
    assert NvmeHost(old.paths, FakeExecutor()).fabrics_tokens() >= {"dhchap_secret", "nqn", "traddr"}
    assert NvmeHost(old.paths, FakeExecutor()).supports_auth() is False
