"""A private libvirtd with the QEMU driver, for tests: its own sockets, state and config; nothing left after.

Starts in about a second::

    with LibvirtDaemon.start() as lv:             # or lv = LibvirtDaemon.start(); ...; lv.stop()
        conn = libvirt.open(lv.uri)               # qemu:///system?socket=<private socket>
        dom = conn.createXML(tiny_domain_xml("t1"))

How it stays private: the daemon runs in its own mount namespace where overlays put its paths
(``/etc/libvirt``, ``/run``, ``/var/lib``, ``/var/log``, ``/var/cache``) on top of the host's, with
every write landing in this fixture's directory; its sockets live in that directory too. So it
never touches a system libvirtd, and the host's files stay as they were. The QEMU driver runs
guests as root with no cgroups, no security driver and no ownership changes (``qemu.conf``), and
writes guest stdio to files (no virtlogd). ``stop()`` destroys and undefines every domain and
secret, stops libvirtd and any QEMU by PID, and removes the directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from blocklink.testing.procs import alive, read_pidfile, stop_pids

__all__ = ["LibvirtDaemon", "LibvirtStartError", "tiny_domain_xml", "tiny_initramfs", "EMULATOR"]

LIBVIRTD = "/usr/sbin/libvirtd"
EMULATOR = "/usr/bin/qemu-system-x86_64"
_OVERLAYS = (("/etc/libvirt", "etc-libvirt"), ("/run", "run"), ("/var/lib", "var-lib"), ("/var/log", "var-log"),
             ("/var/cache", "var-cache"))

_QEMU_CONF = """# private test daemon: guests run as root, nothing on the host is chowned, labelled or cgrouped
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
"""


class LibvirtStartError(RuntimeError):
    pass


def _libvirtd_conf(d: str) -> str:
    return "\n".join([
        f'unix_sock_dir = "{d}/sock"',
        'unix_sock_ro_perms = "0700"',
        'unix_sock_rw_perms = "0700"',
        'unix_sock_admin_perms = "0700"',
        'auth_unix_ro = "none"',
        'auth_unix_rw = "none"',
        f'log_outputs = "3:file:{d}/libvirtd.log"',
        "",
    ])


@dataclass
class LibvirtDaemon:
    directory: str
    pid: int
    _proc: Optional["subprocess.Popen[bytes]"] = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, directory: Optional[str] = None, timeout: float = 60.0) -> "LibvirtDaemon":
        for exe in (LIBVIRTD, EMULATOR):
            if not os.access(exe, os.X_OK):
                raise LibvirtStartError(f"{exe} is not installed")
        d = os.path.realpath(directory or tempfile.mkdtemp(prefix="blocklink-libvirtd."))
        for sub in ("sock",) + tuple(f"ovl/{n}/{w}" for _, n in _OVERLAYS for w in ("upper", "work")):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "libvirtd.conf"), "w") as f:
            f.write(_libvirtd_conf(d))
        with open(os.path.join(d, "ovl/etc-libvirt/upper/qemu.conf"), "w") as f:
            f.write(_QEMU_CONF)
        out = open(os.path.join(d, "libvirtd.out"), "wb")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "blocklink.testing.libvirtd", "--ns-exec", d],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        finally:
            out.close()
        daemon = cls(directory=d, pid=proc.pid, _proc=proc)
        try:
            daemon._wait_ready(timeout)
        except BaseException:
            daemon.stop(keep_files=True)
            raise
        return daemon

    @property
    def socket(self) -> str:
        return os.path.join(self.directory, "sock", "libvirt-sock")

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    def _wait_ready(self, timeout: float) -> None:
        from blocklink.errors import DeviceNotFound
        from blocklink.initiator.host.wait import wait_for

        def ready() -> Optional[bool]:
            if self._proc is not None and self._proc.poll() is not None:
                raise LibvirtStartError(f"libvirtd exited with {self._proc.returncode}: {self._log_tail()}")
            return True if os.path.exists(self.socket) else None

        deadline = time.monotonic() + timeout
        try:
            wait_for(ready, timeout=timeout, watch=[os.path.dirname(self.socket)], uevents=False,
                     what="libvirtd socket")
        except DeviceNotFound:
            raise LibvirtStartError(f"libvirtd did not listen within {timeout:.0f}s: {self._log_tail()} "
                                    f"(logs in {self.directory})") from None
        # the socket is bound before libvirtd listens on it, and nothing observable happens when it
        # starts to: try to connect until it accepts (a connection then waits for the drivers' init)
        while True:
            ready()
            try:
                conn = self.open()
                break
            except Exception as e:  # noqa: BLE001 - libvirtError: connection refused until listen()
                if time.monotonic() > deadline:
                    raise LibvirtStartError(f"libvirtd refused connections for {timeout:.0f}s: {e} "
                                            f"(logs in {self.directory})") from None
                time.sleep(0.05)  # bounded: until the deadline above
        try:
            conn.getVersion()
        finally:
            conn.close()

    def _log_tail(self) -> str:
        text = ""
        for name in ("libvirtd.out", "libvirtd.log"):
            try:
                with open(os.path.join(self.directory, name), errors="replace") as f:
                    text += f.read()[-1500:]
            except OSError:
                pass
        return text.strip() or "(no output)"

    def open(self) -> Any:
        """A new connection (libvirt's event loop is started first, so events work on it)."""
        import libvirt

        from blocklink.hypervisor.events import ensure_event_loop, quiet_libvirt_errors

        ensure_event_loop()
        quiet_libvirt_errors()  # errors are raised as exceptions; don't also print them
        return libvirt.open(self.uri)

    def qemu_pids(self) -> List[int]:
        run = os.path.join(self.directory, "ovl/run/upper/libvirt/qemu")
        pids = []
        for name in sorted(os.listdir(run)) if os.path.isdir(run) else []:
            if name.endswith(".pid"):
                pid = read_pidfile(os.path.join(run, name))
                if pid and alive(pid):
                    pids.append(pid)
        return pids

    def leftovers(self) -> Dict[str, List[str]]:
        """Domains (running or defined) and secrets currently known to the daemon."""
        conn = self.open()
        try:
            return {"domains": sorted(d.name() for d in conn.listAllDomains()),
                    "secrets": sorted(conn.listSecrets())}
        finally:
            conn.close()

    def clean(self) -> Dict[str, List[str]]:
        """Destroy and undefine every domain, undefine every secret; returns what was there."""
        import libvirt

        found = self.leftovers()
        conn = self.open()
        try:
            for dom in conn.listAllDomains():
                try:
                    persistent = dom.isPersistent()  # (a transient domain is gone once destroyed)
                    if dom.isActive():
                        dom.destroy()
                    if persistent:
                        dom.undefine()
                except libvirt.libvirtError:
                    pass
            for uuid in conn.listSecrets():
                try:
                    conn.secretLookupByUUIDString(uuid).undefine()
                except libvirt.libvirtError:
                    pass
        finally:
            conn.close()
        return found

    def stop(self, keep_files: bool = False) -> None:
        if self._stopped:
            return
        if self._proc is not None and self._proc.poll() is None and os.path.exists(self.socket):
            try:
                self.clean()
            except Exception:  # noqa: BLE001 - stopping by PID below still happens
                pass
        qemu = self.qemu_pids()
        stop_pids([self.pid], must_contain="libvirtd")
        stop_pids(qemu, must_contain="qemu-system")
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass
        self._stopped = True
        if not keep_files:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "LibvirtDaemon":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# a tiny guest
# ---------------------------------------------------------------------------------------------

def tiny_domain_xml(name: str, *, memory_mib: int = 64, scsi_controller: bool = True,
                    kernel: Optional[str] = None, initrd: Optional[str] = None, cmdline: Optional[str] = None,
                    console_log: Optional[str] = None) -> str:
    """A TCG guest with nothing but what disk hot-plug needs (ACPI, a virtio-scsi controller).

    Without ``kernel`` there is no OS at all (SeaBIOS finds nothing to boot): enough for SCSI
    hot-plug, which needs no guest cooperation. A virtio-blk detach needs a guest that answers
    ACPI unplug: boot a kernel (``kernel``/``initrd``) for that.
    """
    dom = ET.Element("domain", {"type": "qemu"})
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", {"unit": "MiB"}).text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", {"arch": "x86_64", "machine": "pc"}).text = "hvm"
    if kernel:
        ET.SubElement(os_el, "kernel").text = kernel
        if initrd:
            ET.SubElement(os_el, "initrd").text = initrd
        if cmdline:
            ET.SubElement(os_el, "cmdline").text = cmdline
    feats = ET.SubElement(dom, "features")
    ET.SubElement(feats, "acpi")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "destroy"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devs = ET.SubElement(dom, "devices")
    ET.SubElement(devs, "emulator").text = EMULATOR
    ET.SubElement(devs, "controller", {"type": "usb", "model": "none"})
    if scsi_controller:
        ET.SubElement(devs, "controller", {"type": "scsi", "index": "0", "model": "virtio-scsi"})
    if console_log:
        ser = ET.SubElement(devs, "serial", {"type": "file"})
        ET.SubElement(ser, "source", {"path": console_log})
    ET.SubElement(devs, "memballoon", {"model": "none"})
    return ET.tostring(dom, encoding="unicode")


def tiny_initramfs(path: str, busybox: str = "/bin/busybox", marker: str = "BLOCKLINK-GUEST-READY") -> str:
    """Write a gzip'd initramfs whose ``/init`` prints ``marker`` on ttyS0 and then idles (busybox-static).

    Enough for a guest kernel to come up and answer ACPI PCI hot-unplug (acpiphp is built into
    Debian's kernel), which a virtio-blk detach needs; a few MiB, boots in seconds under TCG.
    """
    import gzip
    import stat

    init = ("#!/bin/sh\n"
            "/bin/busybox mount -t devtmpfs dev /dev\n"
            "/bin/busybox mount -t proc proc /proc\n"
            f"echo {marker} > /dev/ttyS0\n"
            "while :; do /bin/busybox sleep 3600; done\n").encode()
    with open(busybox, "rb") as f:
        bb = f.read()
    entries = [(".", stat.S_IFDIR | 0o755, b""), ("bin", stat.S_IFDIR | 0o755, b""),
               ("dev", stat.S_IFDIR | 0o755, b""), ("proc", stat.S_IFDIR | 0o755, b""),
               ("bin/busybox", stat.S_IFREG | 0o755, bb), ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
               ("init", stat.S_IFREG | 0o755, init)]
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % v for v in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data + b"\0" * (-len(data) % 4)
    with gzip.open(path, "wb") as g:
        g.write(bytes(out))
    return path


# ---------------------------------------------------------------------------------------------
# the namespace side: runs as ``python -m blocklink.testing.libvirtd --ns-exec DIR``, then execs libvirtd
# ---------------------------------------------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18


def _ns_exec(d: str) -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    for lower, name in _OVERLAYS:
        base = os.path.join(d, "ovl", name)
        opts = f"lowerdir={lower},upperdir={base}/upper,workdir={base}/work"
        check(libc.mount(b"overlay", lower.encode(), b"overlay", 0, opts.encode()), f"overlay on {lower}")
    os.execv(LIBVIRTD, [LIBVIRTD, "--config", os.path.join(d, "libvirtd.conf"),
                        "--pid-file", os.path.join(d, "libvirtd.pid")])


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 3 and sys.argv[1] == "--ns-exec":
        _ns_exec(sys.argv[2])
    print(json.dumps({"usage": "python -m blocklink.testing.libvirtd --ns-exec DIR"}))
    sys.exit(2)
