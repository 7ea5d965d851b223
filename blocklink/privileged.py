"""The privilege model: what runs as root, how it gets there, and which paths it may touch.

One decision, :func:`separated`, says whether privileged work leaves this process: commands get the
executor's root helper, privileged functions go to an oslo.privsep daemon (started through the root
helper at the first call). Otherwise (running as root) they run in-process and oslo.privsep (with
the eventlet it pulls in) is never imported. ``BLOCKLINK_PRIVSEP=force`` separates even as root
(tests), ``off`` never does; ``import blocklink`` never imports oslo.privsep.

Functions are made privileged with :func:`entrypoint`; they must live in a ``blocklink`` module and
be importable by name, since the privsep daemon looks them up that way. Every entry point that takes
a path confines it with :func:`confine` to one fixed tree (sysfs, the nvmet configfs tree, LIO's
save directory) and refuses anything else with :class:`~blocklink.errors.PathRefused`, so reaching
the daemon does not give a root file-write primitive.

Host files are written through a :class:`HostWriter`: :data:`PRIVILEGED` for the real host (sysfs
attributes, nvmet configfs directories, the NVMe-oF connect device, each op an entry point), :data:`DIRECT` for trees the caller
owns (fake hosts in tests). :class:`blocklink.hostpaths.HostPaths` is given one.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import stat
import threading
from typing import Any, Callable, Optional, Protocol, TypeVar

from blocklink.errors import InvalidOption, PathRefused

F = TypeVar("F", bound=Callable[..., Any])

MODE_ENV = "BLOCKLINK_PRIVSEP"  # auto (default) | force | off
SYSFS_ROOT = "/sys"
NVMET_ROOT = "/sys/kernel/config/nvmet"
FABRICS_DEV = "/dev/nvme-fabrics"  # the NVMe-oF connect interface: the one /dev path an entry point opens
DEV_ROOT = "/dev"  # block devices whose buffers flush_block writes out (nothing else is done to them)
BLKFLSBUF = 0x1261  # <linux/fs.h> _IO(0x12, 97): write the device's dirty buffers, drop its clean cache

_lock = threading.Lock()
_context: Any = None
_ENTRYPOINT_ATTR = "privsep_entrypoint"  # oslo.privsep's marker attribute


def separated() -> bool:
    """The one decision: True when privileged work leaves this process (root helper for commands,
    privsep daemon for privileged functions), False when it runs here."""
    mode = os.environ.get(MODE_ENV, "auto")
    if mode not in ("auto", "force", "off"):
        raise InvalidOption(MODE_ENV, f"expected auto, force or off, not {mode!r}")
    return mode == "force" or (mode == "auto" and os.geteuid() != 0)


def _build_context() -> Any:
    from oslo_privsep import capabilities as caps
    from oslo_privsep import priv_context

    return priv_context.PrivContext(
        "blocklink",
        cfg_section="blocklink_privileged",
        pypath=__name__ + ".context",
        capabilities=[caps.CAP_SYS_ADMIN, caps.CAP_DAC_OVERRIDE, caps.CAP_DAC_READ_SEARCH,
                      caps.CAP_SYS_MODULE, caps.CAP_NET_ADMIN],
    )


def __getattr__(name: str) -> Any:  # PEP 562: the daemon resolves "blocklink.privileged.context"
    global _context
    if name == "context":
        with _lock:
            if _context is None:
                _context = _build_context()
        return _context
    raise AttributeError(name)


class _Entrypoint:
    """Callable wrapper: a direct call unless :func:`separated`, else over the privsep channel
    (inside the daemon, oslo.privsep's client mode is off and ``_wrap`` calls the function)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not separated():
            return self.func(*args, **kwargs)
        ctx = __getattr__("context")
        return ctx._wrap(self.func, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == _ENTRYPOINT_ATTR:  # asked by the privsep daemon before it runs us
            return __getattr__("context")
        raise AttributeError(name)


def entrypoint(func: F) -> F:
    if not func.__module__.startswith("blocklink"):
        raise AssertionError("privileged entrypoints must live in blocklink modules")
    return _Entrypoint(func)  # type: ignore[return-value]


def privsep_started() -> Optional[bool]:
    """Whether a privsep daemon channel exists (None if oslo.privsep was never loaded)."""
    if _context is None:
        return None
    return _context.channel is not None


# ---------------------------------------------------------------------------------------------
# confinement
# ---------------------------------------------------------------------------------------------

def confine(path: Any, root: str, *, follow: bool = True) -> str:
    """``path`` resolved, if it lies strictly inside ``root``; else :class:`PathRefused`.

    The path must be absolute and already normal (no ``..``, ``.``, ``//`` or trailing slash).
    ``follow``: resolve every symlink (an attribute reached through sysfs links); otherwise only the
    parent is resolved and the last component is kept (a link or directory to create or remove)."""
    if not isinstance(path, str) or "\x00" in path or not path.startswith("/") or os.path.normpath(path) != path:
        raise PathRefused(str(path), root)
    if follow:
        real = os.path.realpath(path)
    else:
        parent, name = os.path.split(path)
        real = os.path.join(os.path.realpath(parent), name)
    top = os.path.realpath(root)
    if not real.startswith(top.rstrip("/") + "/"):
        raise PathRefused(path, root)
    return real


# ---------------------------------------------------------------------------------------------
# host files
# ---------------------------------------------------------------------------------------------

def write_attr(path: str, data: str) -> None:
    """Write a sysfs/configfs attribute with the caller's own rights (one write, no truncation)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    except OSError as e:
        if e.errno == errno.ENXIO:  # a gone device: sysfs delete on a vanished disk
            raise FileNotFoundError(errno.ENOENT, "device is gone", path) from None
        raise
    finally:
        os.close(fd)


@entrypoint
def write_sysfs(path: str, data: str) -> None:
    write_attr(confine(path, SYSFS_ROOT), data)


@entrypoint
def restrict_sysfs(path: str) -> None:
    """Make a sysfs/configfs attribute readable by root only (mode 0600; kernfs and configfs keep the mode
    for the attribute's lifetime): the kernel shows DH-HMAC-CHAP secrets in attributes of mode 0644."""
    os.chmod(confine(path, SYSFS_ROOT), 0o600)


@entrypoint
def configfs_mkdir(path: str) -> None:
    os.mkdir(confine(path, NVMET_ROOT, follow=False))


@entrypoint
def configfs_rmdir(path: str) -> None:
    os.rmdir(confine(path, NVMET_ROOT, follow=False))


@entrypoint
def configfs_symlink(target: str, link: str) -> None:
    os.symlink(confine(target, NVMET_ROOT), confine(link, NVMET_ROOT, follow=False))


@entrypoint
def configfs_unlink(link: str) -> None:
    os.unlink(confine(link, NVMET_ROOT, follow=False))


def fabrics_io(path: str, options: Any) -> str:
    """What nvme-cli does with /dev/nvme-fabrics, with the caller's own rights: write ``options`` (a str
    or a :class:`~blocklink.masking.Secret` when it carries a DH-HMAC-CHAP secret) and read the kernel's
    answer (``instance=N,cntlid=M``); with empty ``options`` only read (the option tokens it knows)."""
    from blocklink.masking import reveal

    text = reveal(options) or ""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if text:
            os.write(fd, text.encode())
        return os.read(fd, 4096).decode(errors="replace").strip()
    finally:
        os.close(fd)


def flush_buffers(path: str) -> None:
    """What ``blockdev --flushbufs`` does, with the caller's own rights: open the block device read-only
    (a read-only close raises no udev "change" event) and ask the kernel to write its dirty buffers;
    returns once they are on the device. Anything but a block device is refused (ENOTBLK)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            raise OSError(errno.ENOTBLK, os.strerror(errno.ENOTBLK), path)
        fcntl.ioctl(fd, BLKFLSBUF)
    finally:
        os.close(fd)


@entrypoint
def flush_block(path: str) -> None:
    """Flush a block device's buffers: only block devices under /dev."""
    flush_buffers(confine(path, DEV_ROOT))


@entrypoint
def write_fabrics(path: str, options: Any) -> str:
    if path != FABRICS_DEV:  # exactly that node: no other device is opened read-write as root
        raise PathRefused(str(path), FABRICS_DEV)
    return fabrics_io(path, options)


@entrypoint
def probe() -> tuple:
    """(pid, euid) of whoever runs privileged calls: this process, else the privsep daemon."""
    return os.getpid(), os.geteuid()


class HostWriter(Protocol):
    """Changes to host files: sysfs/configfs attributes and configfs directories and links."""

    def write(self, path: str, data: str) -> None: ...

    def mkdir(self, path: str) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def symlink(self, target: str, link: str) -> None: ...

    def unlink(self, link: str) -> None: ...

    def fabrics(self, path: str, options: Any) -> str: ...

    def restrict(self, path: str) -> None: ...


class DirectWriter:
    """With the caller's own rights: for trees the caller owns (a fake host)."""

    def write(self, path: str, data: str) -> None:
        write_attr(path, data)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def symlink(self, target: str, link: str) -> None:
        os.symlink(target, link)

    def unlink(self, link: str) -> None:
        os.unlink(link)

    def fabrics(self, path: str, options: Any) -> str:
        return fabrics_io(path, options)

    def restrict(self, path: str) -> None:
        os.chmod(path, 0o600)


class PrivilegedWriter:
    """As root, through the entry points: attributes under /sys, directories and links only in the
    nvmet configfs tree."""

    def write(self, path: str, data: str) -> None:
        write_sysfs(path, data)

    def mkdir(self, path: str) -> None:
        configfs_mkdir(path)

    def rmdir(self, path: str) -> None:
        configfs_rmdir(path)

    def symlink(self, target: str, link: str) -> None:
        configfs_symlink(target, link)

    def unlink(self, link: str) -> None:
        configfs_unlink(link)

    def fabrics(self, path: str, options: Any) -> str:
        return write_fabrics(path, options)

    def restrict(self, path: str) -> None:
        restrict_sysfs(path)


DIRECT: HostWriter = DirectWriter()
PRIVILEGED: HostWriter = PrivilegedWriter()
