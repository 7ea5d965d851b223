"""The guest's tiny initramfs: busybox-static, the modules to mount the host root, and ``/init``.

``/init`` loads virtio/9p/overlay modules, mounts the host's ``/`` (9p tag ``rootfs``) read-only,
puts a tmpfs on ``/run`` and RAM overlays on the writable places, mounts the per-boot exchange
share (tag ``xfer``) at ``/run/blguest``, prepares what the tests expect (see
:mod:`tests.harness.guest.stage2`) and hands over to ``/run/blguest/stage2.sh``. Everything
about one boot (settings, stage 2) lives in that share, so the image depends only on the kernel
version and this file: it is built once into a cache directory and reused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

# modules /init loads (with their dependencies, from modprobe's resolver); virtio_net for FCoE NICs
BOOT_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay", "configfs", "virtio_net")
# writable-in-RAM copies of these host folders in the guest (when they exist on the host)
OVERLAY_DIRS = ("etc", "var", "tmp", "root", "home", "srv", "opt", "mnt", "media")
XFER_MOUNT = "/run/blguest"
STAGE2 = f"{XFER_MOUNT}/stage2.sh"
NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=512000"

INIT_SCRIPT = f"""#!/bin/sh
# /init of the blocklink test guest (busybox, in RAM: fast under TCG, where every exec from 9p is slow).
# Host / over 9p read-only, RAM overlays, the environment the tests expect, then stage 2.
export PATH=/bin
bb=/bin/busybox
R=/newroot
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
say() {{ echo "blguest-init: $* (uptime $($bb cut -d' ' -f1 /proc/uptime $R/proc/uptime 2>/dev/null))" > /dev/console; }}
die() {{ say "FATAL: $*"; $bb sync; $bb reboot -f; }}
for m in $($bb cat /mods/order); do
  $bb insmod /mods/$m || say "insmod $m failed"
done
i=0
until $bb mount -t 9p -o {NINEP_OPTS},ro,cache=loose rootfs $R 2>/dev/null; do
  i=$((i+1)); [ $i -gt 200 ] && die "cannot mount the host root (9p tag rootfs)"
  $bb usleep 50000
done
$bb mount -t tmpfs -o mode=755 run $R/run || die "tmpfs on /run"
for d in {' '.join(OVERLAY_DIRS)}; do
  [ -d $R/$d ] || continue
  o=$R/run/.blguest-ovl/$d
  $bb mkdir -p $o/upper $o/work
  $bb mount -t overlay -o lowerdir=$R/$d,upperdir=$o/upper,workdir=$o/work ovl-$d $R/$d || die "overlay on /$d"
done
$bb chmod 1777 $R/tmp
$bb mkdir -p $R{XFER_MOUNT}
$bb mount -t 9p -o {NINEP_OPTS} xfer $R{XFER_MOUNT} || die "cannot mount the exchange share (9p tag xfer)"
[ -r $R{STAGE2} ] && [ -r $R{XFER_MOUNT}/config.sh ] || die "no stage 2 in the exchange share"
. $R{XFER_MOUNT}/config.sh
# a kernel the host does not boot (scripts/guest-kernels): its modules over the host's /lib/modules, read-only
if [ -n "$GUEST_MODULES" ]; then
  $bb mount -t overlay -o "lowerdir=$R$GUEST_MODULES:$R/lib/modules" ovl-modules $R/lib/modules || die "modules overlay"
fi
while read -r tag dir; do
  [ -n "$tag" ] || continue
  $bb mkdir -p "$R$dir" && $bb mount -t 9p -o {NINEP_OPTS} "$tag" "$R$dir" || die "cannot mount shared folder $dir"
done < $R{XFER_MOUNT}/rwdirs
$bb mount --move /dev $R/dev
$bb mount --move /sys $R/sys
$bb mount --move /proc $R/proc
$bb mkdir -p $R/dev/pts $R/dev/shm $R/run/lock $R/run/blocklink
$bb mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
$bb mount -t tmpfs -o mode=1777 shm $R/dev/shm
$bb ln -sf /proc/self/fd $R/dev/fd
for n in 0:stdin 1:stdout 2:stderr; do $bb ln -sf fd/${{n%%:*}} $R/dev/${{n#*:}}; done
$bb mount -t configfs configfs $R/sys/kernel/config || die "cannot mount configfs"
$bb hostname "$GUEST_HOSTNAME"
$bb rm -f $R/etc/mtab; $bb ln -s /proc/self/mounts $R/etc/mtab
$bb ip link set lo up
for a in $LOOPBACK_ADDRS; do $bb ip addr add $a/8 dev lo || die "cannot add $a to lo"; done
$bb mkdir -p $R/etc/iscsi $R/etc/multipath $R/var/lib/iscsi $R/run/lock/iscsi
echo "InitiatorName=$INITIATOR_IQN" > $R/etc/iscsi/initiatorname.iscsi
$bb rm -f $R/etc/multipath/wwids $R/etc/multipath/bindings
say "root ready, switching to stage 2"
exec $bb switch_root $R /bin/bash {STAGE2}
"""


class InitramfsError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- cpio (newc)
@dataclass(frozen=True)
class Entry:
    name: str          # path inside the archive, no leading slash
    mode: int          # full st_mode (type + permissions)
    data: bytes = b""  # file content, or the target of a symlink


def cpio_newc(entries: Iterable[Entry]) -> bytes:
    """An uncompressed cpio archive in the ``newc`` format the kernel unpacks."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out.write(b"070701" + b"".join(b"%08x" % f for f in fields))
        out.write(raw)
        out.write(b"\0" * (-(110 + len(raw)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    ino = 1
    for e in entries:
        put(e.name, e.mode, e.data, ino)
        ino += 1
    put("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


# ---------------------------------------------------------------------------- modules
def parse_show_depends(text: str) -> List[str]:
    """Module files to insmod, in order and de-duplicated, from ``modprobe --show-depends`` output.

    Built-in modules (``builtin NAME``) need nothing and are left out.
    """
    seen: List[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod" and parts[1] not in seen:
            seen.append(parts[1])
    return seen


def module_files(kver: str, modules: Sequence[str] = BOOT_MODULES, root: str = "/") -> List[str]:
    """The files of ``modules`` and their dependencies for kernel ``kver`` (modules under ``root``/lib/modules)."""
    where = [] if root == "/" else ["-d", root]
    res = subprocess.run(["modprobe", *where, "-S", kver, "--show-depends", "-a", *modules],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise InitramfsError(f"modprobe -S {kver} --show-depends failed: {res.stderr.strip()}")
    files = parse_show_depends(res.stdout)
    if not files:
        raise InitramfsError(f"no module files found for {kver} ({', '.join(modules)})")
    return files


def read_module(path: str) -> Tuple[str, bytes]:
    """(file name as .ko, uncompressed content) of a possibly compressed kernel module."""
    base = os.path.basename(path)
    if base.endswith(".xz"):
        with lzma.open(path) as f:
            return base[:-3], f.read()
    if base.endswith(".gz"):
        with gzip.open(path) as f:
            return base[:-3], f.read()
    if base.endswith(".zst"):
        res = subprocess.run(["zstd", "-qdc", path], capture_output=True, check=False)
        if res.returncode != 0:
            raise InitramfsError(f"cannot decompress {path}: {res.stderr.decode(errors='replace').strip()}")
        return base[:-4], res.stdout
    with open(path, "rb") as f:
        return base, f.read()


# ---------------------------------------------------------------------------- image
def find_busybox() -> str:
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.isfile(cand):
            return cand
    found = shutil.which("busybox")
    if not found:
        raise InitramfsError("busybox is not installed (Debian package busybox-static)")
    return found


def _is_static(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return b"ld-linux" not in head  # a dynamic ELF names its interpreter near the start


def archive_entries(busybox: bytes, modules: Sequence[Tuple[str, bytes]], init: str = INIT_SCRIPT) -> List[Entry]:
    d, f, lnk = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFLNK | 0o777
    entries = [Entry(n, d) for n in ("bin", "dev", "proc", "sys", "newroot", "mods")]
    entries += [Entry("bin/busybox", f, busybox), Entry("bin/sh", lnk, b"busybox"),
                Entry("init", f, init.encode())]
    entries += [Entry(f"mods/{name}", stat.S_IFREG | 0o644, data) for name, data in modules]
    entries.append(Entry("mods/order", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n, _ in modules).encode()))
    return entries


def cache_key(kver: str, files: Sequence[str], busybox: str) -> str:
    h = hashlib.sha256(INIT_SCRIPT.encode())
    for p in [busybox, *files]:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return f"{kver}-{h.hexdigest()[:16]}"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "blocklink", "guest")


def build_initramfs(kver: str, cache_dir: Optional[str] = None, modules_root: str = "/") -> str:
    """Path of the cached initramfs for kernel ``kver``; built (about a second) when missing or stale."""
    cache_dir = cache_dir or default_cache_dir()
    busybox = find_busybox()
    if not _is_static(busybox):
        raise InitramfsError(f"{busybox} is dynamically linked; install Debian's busybox-static")
    files = module_files(kver, root=modules_root)
    out = os.path.join(cache_dir, f"initramfs-{cache_key(kver, files, busybox)}.cpio.gz")
    if os.path.isfile(out) and os.path.getsize(out) > 0:
        return out
    os.makedirs(cache_dir, exist_ok=True)
    with open(busybox, "rb") as fb:
        bb = fb.read()
    archive = cpio_newc(archive_entries(bb, [read_module(p) for p in files]))
    fd, tmp = tempfile.mkstemp(prefix=".initramfs-", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(gzip.compress(archive, compresslevel=1))
        os.replace(tmp, out)  # atomic: concurrent builders race harmlessly
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # drop stale images of this kernel (not fresh ones: a concurrent session may be about to boot one)
    for name in os.listdir(cache_dir):
        p = os.path.join(cache_dir, name)
        try:
            if name.startswith(f"initramfs-{kver}-") and p != out and time.time() - os.path.getmtime(p) > 600:
                os.unlink(p)
        except OSError:
            pass
    return out
