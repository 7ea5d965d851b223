"""The guest initramfs: cpio newc encoding, module resolution and decompression, caching."""

from __future__ import annotations

import gzip
import lzma
import os
import stat

import pytest

from tests.harness.guest import initramfs as ir


def parse_newc(data: bytes) -> dict:
    """A minimal newc reader (what the kernel's unpacker does) for checking our writer."""
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos: pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out[name] = (mode, body)


def test_cpio_round_trip_with_odd_lengths() -> None:
    entries = [ir.Entry("bin", stat.S_IFDIR | 0o755), ir.Entry("bin/a", stat.S_IFREG | 0o755, b"x" * 5),
               ir.Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"), ir.Entry("e", stat.S_IFREG | 0o644, b"")]
    got = parse_newc(ir.cpio_newc(entries))
    assert got == {"bin": (stat.S_IFDIR | 0o755, b""), "bin/a": (stat.S_IFREG | 0o755, b"xxxxx"),
                   "bin/sh": (stat.S_IFLNK | 0o777, b"busybox"), "e": (stat.S_IFREG | 0o644, b"")}


def test_show_depends_order_dedup_and_builtins() -> None:
    text = ("insmod /m/virtio_ring.ko \ninsmod /m/virtio.ko \nbuiltin crc32c\ninsmod /m/virtio_ring.ko \n"
            "insmod /m/9p.ko.xz  \n")
    assert ir.parse_show_depends(text) == ["/m/virtio_ring.ko", "/m/virtio.ko", "/m/9p.ko.xz"]


def test_read_module_decompresses(tmp_path) -> None:
    (tmp_path / "a.ko").write_bytes(b"plain")
    with lzma.open(tmp_path / "b.ko.xz", "wb") as f:
        f.write(b"xz-data")
    with gzip.open(tmp_path / "c.ko.gz", "wb") as f:
        f.write(b"gz-data")
    assert ir.read_module(str(tmp_path / "a.ko")) == ("a.ko", b"plain")
    assert ir.read_module(str(tmp_path / "b.ko.xz")) == ("b.ko", b"xz-data")
    assert ir.read_module(str(tmp_path / "c.ko.gz")) == ("c.ko", b"gz-data")


def test_archive_has_init_busybox_and_module_order() -> None:
    got = parse_newc(ir.cpio_newc(ir.archive_entries(b"BB", [("x.ko", b"1"), ("y.ko", b"2")])))
    assert got["init"][1].startswith(b"#!/bin/sh") and got["init"][0] & 0o111
    assert got["bin/busybox"][1] == b"BB" and got["bin/sh"][1] == b"busybox"
    assert got["mods/order"][1] == b"x.ko\ny.ko\n"
    assert got["mods/y.ko"][1] == b"2"
    assert ir.STAGE2.encode() in got["init"][1]


def _kver() -> str:
    from tests.harness.guest import find_kernel

    try:
        return find_kernel()[1]
    except RuntimeError as e:
        pytest.fail(f"no guest kernel on this host (scripts/bootstrap installs linux-image-amd64): {e}")


def test_build_is_cached_and_holds_the_boot_modules(tmp_path) -> None:
    kver = _kver()
    first = ir.build_initramfs(kver, str(tmp_path))
    mtime = os.stat(first).st_mtime_ns
    assert ir.build_initramfs(kver, str(tmp_path)) == first
    assert os.stat(first).st_mtime_ns == mtime  # reused, not rebuilt
    with gzip.open(first) as f:
        files = parse_newc(f.read())
    order = files["mods/order"][1].decode().split()
    for mod in ("virtio_pci.ko", "9pnet_virtio.ko", "9p.ko", "overlay.ko", "virtio_console.ko", "configfs.ko"):
        assert mod in order
    assert order.index("9pnet.ko") < order.index("9pnet_virtio.ko")  # dependencies first
    assert all(f"mods/{m}" in files for m in order)
    assert os.listdir(tmp_path) == [os.path.basename(first)]  # no temp files left


def test_stale_image_of_the_same_kernel_is_replaced(tmp_path) -> None:
    kver = _kver()
    stale = tmp_path / f"initramfs-{kver}-0000000000000000.cpio.gz"
    stale.write_bytes(b"old")
    recent = tmp_path / f"initramfs-{kver}-1111111111111111.cpio.gz"
    recent.write_bytes(b"another session's")
    os.utime(stale, (0, 0))
    fresh = ir.build_initramfs(kver, str(tmp_path))
    assert not stale.exists() and os.path.exists(fresh)
    assert recent.exists()  # young: maybe about to be booted by a concurrent session


def test_unknown_kernel_release_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ir.InitramfsError, match="0.0.0-none"):
        ir.build_initramfs("0.0.0-none", str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_unpacked_kernel_modules_come_from_its_own_root(tmp_path) -> None:
    from tests.harness.guest import select_kernel

    try:
        k = select_kernel("6.12")
    except RuntimeError as e:
        pytest.fail(f"no 6.12 kernel unpacked (scripts/bootstrap runs scripts/guest-kernels): {e}")
    files = ir.module_files(k.release, root=k.modules_root)
    assert files and all(f.startswith(k.modules_dir + "/") for f in files)
    assert "GUEST_MODULES" in ir.INIT_SCRIPT and "lowerdir=$R$GUEST_MODULES:$R/lib/modules" in ir.INIT_SCRIPT
