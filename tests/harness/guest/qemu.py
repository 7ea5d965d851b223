"""Choosing the guest kernel and building the qemu command line (pure functions, unit-tested)."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from tests.harness.guest.agent import PORT_NAME


# the kernel a guest boots: "6.1", "6.12", a full release, or a vmlinuz path (default: the host's newest)
KERNEL_ENV = "BLOCKLINK_GUEST_KERNEL"
# where scripts/guest-kernels unpacks kernels the host does not boot: <dir>/<release>/{boot,lib/modules}
KERNELS_DIR_ENV = "BLOCKLINK_GUEST_KERNELS_DIR"
DEFAULT_KERNELS_DIR = "/var/cache/blocklink/kernels"
# the guest NICs' qemu device. Under virtio-net a NIC's net device sits below a virtio bus device
# (.../0000:00:04.0/virtio3/net/eth0); "e1000" makes each NIC a PCI function of its own
# (.../0000:00:04.0/net/eth0), as a physical FCoE adapter is
DEFAULT_NIC_MODEL = "virtio-net-pci"


class KernelNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class KernelChoice:
    """A bootable kernel: its image, release, and the root under which ``lib/modules/<release>`` lives
    (``/`` for the host's own kernels, the unpack directory for the others)."""

    image: str
    release: str
    modules_root: str = "/"

    @property
    def modules_dir(self) -> str:
        return os.path.join(self.modules_root, "lib", "modules", self.release)


def _version_key(kver: str) -> List[Tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~]", kver)]


def find_kernel(kernel: Optional[str] = None, boot: str = "/boot", modules: str = "/lib/modules") -> Tuple[str, str]:
    """``(vmlinuz path, kernel release)``: ``kernel`` if given, else the newest /boot/vmlinuz-* whose
    modules are installed (Debian's linux-image-amd64)."""
    if kernel:
        kver = os.path.basename(kernel).split("vmlinuz-", 1)[-1]
        if not os.path.isfile(kernel):
            raise KernelNotFound(f"{kernel}: no such kernel image")
        if not os.path.isfile(os.path.join(modules, kver, "modules.dep")):
            raise KernelNotFound(f"{kernel}: no modules in {modules}/{kver}")
        return kernel, kver
    found = _with_modules(boot, modules)
    if not found:
        raise KernelNotFound(f"no {boot}/vmlinuz-* with modules in {modules} (install linux-image-amd64)")
    return max(found, key=lambda pk: _version_key(pk[1]))


def kernels_dir(environ: Optional[Dict[str, str]] = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(KERNELS_DIR_ENV) or DEFAULT_KERNELS_DIR


def matches_series(release: str, wanted: str) -> bool:
    """``6.1`` matches 6.1.0-57-amd64 but not 6.12.118+deb12-amd64; a full release matches itself."""
    return release == wanted or any(release.startswith(wanted + sep) for sep in ".-+")


def select_kernel(wanted: Optional[str] = None, boot: str = "/boot", modules: str = "/lib/modules",
                  unpacked: Optional[str] = None) -> KernelChoice:
    """The kernel to boot for ``wanted`` (see ``KERNEL_ENV``): empty means the host's newest (Debian's 6.1);
    a path is that image, its modules in ``<image>/../../lib/modules`` (the host's for /boot); a version
    is the newest matching release among the host's and the unpacked kernels."""
    if not wanted:
        image, release = find_kernel(None, boot, modules)
        return KernelChoice(image, release, os.path.dirname(os.path.dirname(modules.rstrip("/"))) or "/")
    if "/" in wanted:
        root = os.path.dirname(os.path.dirname(os.path.abspath(wanted)))
        image, release = find_kernel(wanted, boot, os.path.join(root, "lib", "modules"))
        return KernelChoice(image, release, root)
    unpacked = unpacked or kernels_dir()
    found = [KernelChoice(img, rel, os.path.dirname(os.path.dirname(modules.rstrip("/"))) or "/")
             for img, rel in _with_modules(boot, modules)]
    for root in sorted(glob.glob(os.path.join(unpacked, "*"))):
        found += [KernelChoice(img, rel, root)
                  for img, rel in _with_modules(os.path.join(root, "boot"), os.path.join(root, "lib", "modules"))]
    fits = [k for k in found if matches_series(k.release, wanted)]
    if not fits:
        have = ", ".join(sorted(k.release for k in found)) or "none"
        raise KernelNotFound(f"no kernel {wanted} for the guest (have: {have}); scripts/guest-kernels {wanted} "
                             f"unpacks Debian's into {unpacked} (scripts/bootstrap runs it)")
    return max(fits, key=lambda k: _version_key(k.release))


def _with_modules(boot: str, modules: str) -> List[Tuple[str, str]]:
    found = []
    for path in glob.glob(os.path.join(boot, "vmlinuz-*")):
        kver = os.path.basename(path)[len("vmlinuz-"):]
        if os.path.isfile(os.path.join(modules, kver, "modules.dep")):
            found.append((path, kver))
    return found


def qemu_value(path: str) -> str:
    """A path as a qemu option value (commas are doubled)."""
    return path.replace(",", ",,")


@dataclass(frozen=True)
class QemuSpec:
    """Everything that varies in the qemu command line of one guest."""

    kernel: str
    initrd: str
    console_log: str
    agent_socket: str
    xfer_dir: str
    rw_dirs: Sequence[str] = ()
    mem_mb: int = 2048
    smp: int = 2
    tb_mb: int = 128
    machine: str = "q35"
    nics: int = 0
    nic_model: str = DEFAULT_NIC_MODEL    # their qemu device (any Ethernet NIC carries FCoE)
    debug: bool = False
    append: str = ""
    qemu: str = "qemu-system-x86_64"
    extra_args: Sequence[str] = field(default_factory=tuple)


def nic_mac(i: int) -> str:
    """Fixed MACs (so FCoE WWNs derived from them are fixed too): 02:00:00:00:0f:01, ..."""
    return f"02:00:00:00:0f:{i + 1:02x}"


def kernel_cmdline(spec: QemuSpec) -> str:
    log = "ignore_loglevel" if spec.debug else "quiet loglevel=4"
    # no "tsc=reliable clocksource=tsc": faster clock_gettime than HPET, but on this loaded host one guest's
    # clock ran ~9x fast (tsc=reliable also turns off the watchdog that would have caught it)
    # no_timer_check: under TCG on a loaded host the IO-APIC timer check can miss its window and panic
    # the boot ("IO-APIC + timer doesn't work"; seen with the host at load 15)
    parts = ["console=ttyS0", log, "panic=-1", "rdinit=/init", "no_timer_check"]
    if spec.append:
        parts.append(spec.append)
    return " ".join(parts)


def rw_tags(spec: QemuSpec) -> List[Tuple[str, str]]:
    return [(f"rw{i}", d) for i, d in enumerate(spec.rw_dirs)]


def qemu_argv(spec: QemuSpec) -> List[str]:
    v = qemu_value
    argv = [
        spec.qemu, "-name", "blocklink-guest", "-M", spec.machine,
        "-accel", f"tcg,tb-size={int(spec.tb_mb)}", "-cpu", "max",
        "-m", f"{int(spec.mem_mb)}M", "-smp", str(int(spec.smp)),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", spec.kernel, "-initrd", spec.initrd, "-append", kernel_cmdline(spec),
        "-fsdev", "local,id=rootfs,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=rootfs,mount_tag=rootfs",
        "-fsdev", f"local,id=xfer,path={v(spec.xfer_dir)},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=xfer,mount_tag=xfer",
    ]
    for tag, d in rw_tags(spec):
        argv += ["-fsdev", f"local,id={tag},path={v(d)},security_model=none,multidevs=remap",
                 "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
    argv += [
        "-serial", f"file:{v(spec.console_log)}",
        "-chardev", f"socket,id=agent,path={v(spec.agent_socket)},server=on,wait=off",
        "-device", "virtio-serial-pci",
        "-device", f"virtserialport,chardev=agent,name={PORT_NAME}",
    ]
    for i in range(spec.nics):
        argv += ["-netdev", f"hubport,id=nic{i},hubid=0",
                 "-device", f"{spec.nic_model},netdev=nic{i},mac={nic_mac(i)}"]
    argv += list(spec.extra_args)
    return argv
