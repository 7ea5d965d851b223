"""Choosing the guest kernel and the qemu command line."""

from __future__ import annotations

import pytest

from tests.harness.guest.qemu import (KernelNotFound, QemuSpec, find_kernel, kernel_cmdline, nic_mac, qemu_argv,
                                     select_kernel)


def fake_boot(tmp_path, kernels, with_modules):
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    mods.mkdir()
    for k in kernels:
        (boot / f"vmlinuz-{k}").write_bytes(b"k")
    for k in with_modules:
        (mods / k).mkdir()
        (mods / k / "modules.dep").write_text("")
    return str(boot), str(mods)


def test_newest_kernel_with_modules_wins(tmp_path) -> None:
    boot, mods = fake_boot(tmp_path, ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64"],
                           ["6.1.0-9-amd64", "6.1.0-56-amd64"])
    path, kver = find_kernel(boot=boot, modules=mods)
    assert kver == "6.1.0-56-amd64"  # 56 > 9 numerically; 6.10 has no modules
    assert path.endswith("/vmlinuz-6.1.0-56-amd64")


def test_explicit_kernel_needs_its_modules(tmp_path) -> None:
    boot, mods = fake_boot(tmp_path, ["6.1.0-1-amd64"], [])
    with pytest.raises(KernelNotFound, match="no modules"):
        find_kernel(f"{boot}/vmlinuz-6.1.0-1-amd64", boot=boot, modules=mods)
    with pytest.raises(KernelNotFound, match="no such kernel"):
        find_kernel(f"{boot}/vmlinuz-9", boot=boot, modules=mods)
    with pytest.raises(KernelNotFound, match="linux-image-amd64"):
        find_kernel(boot=boot, modules=mods)


def spec(**kw) -> QemuSpec:
    base = dict(kernel="/boot/vmlinuz-x", initrd="/c/i.gz", console_log="/r/console.log",
                agent_socket="/r/agent.sock", xfer_dir="/r/xfer")
    base.update(kw)
    return QemuSpec(**base)


def option(argv, name):
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def test_argv_tcg_q35_no_defaults_and_shares() -> None:
    argv = qemu_argv(spec(rw_dirs=["/tmp/res,ults"], tb_mb=128, mem_mb=1024, smp=2))
    assert option(argv, "-accel") == ["tcg,tb-size=128"]
    assert option(argv, "-M") == ["q35"] and option(argv, "-m") == ["1024M"]
    assert "-nodefaults" in argv and "-no-reboot" in argv and "-enable-kvm" not in argv
    fsdevs = option(argv, "-fsdev")
    assert fsdevs[0] == "local,id=rootfs,path=/,security_model=none,readonly=on,multidevs=remap"
    assert "local,id=xfer,path=/r/xfer,security_model=none,multidevs=remap" in fsdevs
    assert "local,id=rw0,path=/tmp/res,,ults,security_model=none,multidevs=remap" in fsdevs  # comma doubled
    assert "readonly" not in fsdevs[2]
    devices = option(argv, "-device")
    assert "virtio-9p-pci,fsdev=rw0,mount_tag=rw0" in devices
    assert "virtserialport,chardev=agent,name=org.blocklink.agent" in devices
    assert option(argv, "-serial") == ["file:/r/console.log"]
    assert option(argv, "-chardev") == ["socket,id=agent,path=/r/agent.sock,server=on,wait=off"]


def test_nics_have_fixed_macs_on_one_hub() -> None:
    argv = qemu_argv(spec(nics=2))
    assert option(argv, "-netdev") == ["hubport,id=nic0,hubid=0", "hubport,id=nic1,hubid=0"]
    assert "virtio-net-pci,netdev=nic1,mac=02:00:00:00:0f:02" in option(argv, "-device")
    assert nic_mac(0) == "02:00:00:00:0f:01"
    assert not option(qemu_argv(spec()), "-netdev")
    e1000 = option(qemu_argv(spec(nics=2, nic_model="e1000")), "-device")
    assert "e1000,netdev=nic0,mac=02:00:00:00:0f:01" in e1000 and not [d for d in e1000 if d.startswith("virtio-net")]


def test_kernel_cmdline() -> None:
    assert "quiet" in kernel_cmdline(spec()) and "panic=-1" in kernel_cmdline(spec())
    assert "tsc=reliable" not in kernel_cmdline(spec())  # a guest clock ran ~9x fast with it
    assert "no_timer_check" in kernel_cmdline(spec())  # a loaded host made the IO-APIC timer check panic
    debug = kernel_cmdline(spec(debug=True, append="foo=1"))
    assert "ignore_loglevel" in debug and "quiet" not in debug and debug.endswith("foo=1")
    assert option(qemu_argv(spec(extra_args=("-s",))), "-append")[0] == kernel_cmdline(spec())
    assert qemu_argv(spec(extra_args=("-s",)))[-1] == "-s"


def fake_unpacked(tmp_path, release, with_modules=True):
    root = tmp_path / "kernels" / release
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(b"k")
    if with_modules:
        (root / "lib" / "modules" / release).mkdir(parents=True)
        (root / "lib" / "modules" / release / "modules.dep").write_text("")
    return root


def test_select_kernel_by_series_among_host_and_unpacked(tmp_path) -> None:
    boot, mods = fake_boot(tmp_path, ["6.1.0-57-amd64"], ["6.1.0-57-amd64"])
    root = fake_unpacked(tmp_path, "6.12.118+deb12-amd64")
    fake_unpacked(tmp_path, "6.12.200+deb12-amd64", with_modules=False)  # half unpacked: not bootable
    unpacked = str(tmp_path / "kernels")
    k = select_kernel("6.12", boot=boot, modules=mods, unpacked=unpacked)
    assert (k.release, k.modules_root) == ("6.12.118+deb12-amd64", str(root))
    assert k.image == str(root / "boot" / "vmlinuz-6.12.118+deb12-amd64")
    assert k.modules_dir == str(root / "lib" / "modules" / "6.12.118+deb12-amd64")
    one = select_kernel("6.1", boot=boot, modules=mods, unpacked=unpacked)  # 6.1 is not a prefix of 6.12
    assert one.release == "6.1.0-57-amd64" and one.image == f"{boot}/vmlinuz-6.1.0-57-amd64"
    assert select_kernel("6.12.118+deb12-amd64", boot=boot, modules=mods, unpacked=unpacked).release \
        == "6.12.118+deb12-amd64"
    by_path = select_kernel(k.image, boot=boot, modules=mods, unpacked=unpacked)
    assert by_path == k


def test_select_kernel_default_is_the_hosts_newest_and_missing_series_says_how(tmp_path) -> None:
    boot, mods = fake_boot(tmp_path, ["6.1.0-57-amd64"], ["6.1.0-57-amd64"])
    fake_unpacked(tmp_path, "6.12.118+deb12-amd64")
    unpacked = str(tmp_path / "kernels")
    assert select_kernel(None, boot=boot, modules=mods, unpacked=unpacked).release == "6.1.0-57-amd64"
    with pytest.raises(KernelNotFound, match=r"no kernel 6\.6 .*have: 6\.1\.0-57-amd64, 6\.12\.118.*scripts/guest-kernels"):
        select_kernel("6.6", boot=boot, modules=mods, unpacked=unpacked)


def test_config_sh_carries_a_safe_modules_overlay_path() -> None:
    from tests.harness.guest.stage2 import config_sh

    text = config_sh(agent_python="/p", agent="/a", agent_port="x", guest_modules="/var/k/6.12/lib/modules")
    assert "GUEST_MODULES=/var/k/6.12/lib/modules\n" in text
    assert "GUEST_MODULES=''\n" in config_sh(agent_python="/p", agent="/a", agent_port="x")
    for bad in ("rel/lib/modules", "/a:b", "/a,b"):
        with pytest.raises(ValueError, match="guest_modules"):
            config_sh(agent_python="/p", agent="/a", agent_port="x", guest_modules=bad)
