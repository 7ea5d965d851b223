"""RBD connector: a librbd file-like handle, or a local block device via kernel ``rbd map`` / rbd-nbd.

Where the cephx key comes from, in order: the connection info's ``keyring`` (Cinder's
``rbd_keyring_conf`` / cinderlib), then the host's Ceph configuration
(``/etc/ceph/<cluster>.client.<user>.keyring`` and friends). In-process, the key is handed to
librados in memory; for the ``rbd``/``rbd-nbd`` tools it goes through a 0600 file in a private
directory that is removed right after the command.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from typing import Any, Dict, Iterator, List, Optional

from blocklink.ceph_client import (CephFiles, ClusterSpec, connect, import_rados, iter_keyring_candidates,
                                   key_from_keyring, open_image, open_ioctx)
from blocklink.connection import AttachedDevice, DeviceKind, RbdInfo
from blocklink.errors import (CommandFailed, ConnectionFailed, DetachIncomplete, DeviceBusy, DeviceMismatch, MissingCredentials,
                              DeviceNotFound, InvalidConnectionInfo, InvalidOption, RbdIOError, VolumeNotFound)
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.base import Connector, DeviceLike, InfoLike
from blocklink.initiator.options import choice, flag, fold_renamed, seconds
from blocklink.initiator.properties import protocol_properties
from blocklink.locks import LockFactory
from blocklink.masking import Secret, get_logger
from blocklink.trace import span

LOG = get_logger(__name__)
# librbd options of a handle's own cluster connection: no librbd cache, RbdHandle pipelines writes
# itself and sees every write's completion (see RbdHandle)
HANDLE_CONF = {"rbd_cache": "false"}


def _typed(e: Exception, name: str, op: str) -> Exception:
    """A librbd/librados error as an RbdIOError; any other exception as it is."""
    if type(e).__module__ in ("rbd", "rados"):
        errno = getattr(e, "errno", None)
        return RbdIOError(name, f"{op} failed: {type(e).__name__}: {e}",
                          errno=abs(errno) if isinstance(errno, int) and errno else None)
    return e


@contextlib.contextmanager
def _librbd(name: str, op: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        typed = _typed(e, name, op)  # librbd/librados errors become typed ones
        if typed is e:
            raise
        raise typed from None


class RbdHandle(io.RawIOBase):
    """A seekable file-like object over an open librbd image (os-brick's RBDVolumeIOWrapper, typed).

    Owns the image, its I/O context and the cluster connection: ``close()`` releases all three, so
    no watcher remains on the image. ``truncate`` is not supported (resize the volume instead).

    Writes are pipelined: ``write()`` returns once librbd has the data, up to ``max_in_flight`` bytes
    are on their way to the OSDs, and each one's completion is checked. librbd's own write-around
    cache acknowledges at once and drops the error of a write that fails when no flush is waiting
    (measured: an OSD that stops answering lost a write, ``close()`` reported success), so handles
    are opened with ``rbd_cache=false`` and this class does the pipelining itself. The first failed
    write is raised by every later ``write``/``flush``, and by ``close()`` if nothing raised it yet.
    Reads wait for the writes in flight, so a handle reads what it wrote.
    """

    def __init__(self, cluster: Any, ioctx: Any, image: Any, name: str, read_only: bool = False,
                 max_in_flight: int = 32 << 20) -> None:
        super().__init__()
        self._cluster, self._ioctx, self._image = cluster, ioctx, image
        self.name = name
        self._read_only = read_only
        self._pos = 0
        self._lock = threading.Lock()  # one caller at a time; never taken by librbd's callbacks
        self._max_in_flight = max(1, max_in_flight)
        self._in_flight = threading.Condition()  # guards the counters below; librbd's threads signal it
        self._in_flight_bytes = 0
        self._in_flight_ops = 0
        self._write_error: Optional[RbdIOError] = None
        self._error_raised = False

    # io.RawIOBase protocol ----------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self._read_only

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        self._check_open()
        with _librbd(self.name, "size"):
            return int(self._image.size())

    # The read path is the hot one (a 4 KiB random read is ~100-300 us in librbd): one lock, the drain
    # check inline (no writes in flight is the common case), librbd's size and read called directly,
    # errors typed only when one happens (a context manager per call cost more than the rest together).
    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        data = self._read_at_pos(len(view))
        view[:len(data)] = data
        return len(data)

    def read(self, size: Optional[int] = -1) -> bytes:
        return self._read_at_pos(-1 if size is None else size)

    def _read_at_pos(self, size: int) -> bytes:
        """Up to ``size`` bytes (all to the end if negative) from the position, which moves past them."""
        if self.closed:
            self._check_open()
        with self._lock:
            if self._in_flight_ops:
                self._drain()
            image, pos = self._image, self._pos
            try:
                remaining = int(image.size()) - pos
                n = remaining if size < 0 else min(size, remaining)
                if n <= 0:
                    return b""
                data: bytes = image.read(pos, n)
            except Exception as e:
                typed = _typed(e, self.name, "read")
                if typed is e:
                    raise
                raise typed from None
            self._pos = pos + len(data)
            return data

    def write(self, b: Any) -> int:
        self._check_open()
        if self._read_only:
            raise io.UnsupportedOperation(f"{self.name} is attached read-only")
        data = bytes(b)
        n = len(data)
        with self._lock:
            offset = self._pos
            self._raise_write_error()
            if offset + n > self.size():
                raise OSError(28, f"write beyond the end of {self.name} ({self.size()} bytes)")
            if n == 0:
                return 0
            with self._in_flight:  # bounded: every op completes or times out (rados_osd_op_timeout)
                self._in_flight.wait_for(lambda: self._in_flight_ops == 0
                                         or self._in_flight_bytes + n <= self._max_in_flight)
                self._in_flight_bytes += n
                self._in_flight_ops += 1
            try:
                with _librbd(self.name, "write"):
                    self._image.aio_write(data, offset, self._on_written(n, offset))
            except BaseException:
                self._written(n, offset, 0)  # never queued
                raise
            self._pos = offset + n
            return n

    def _on_written(self, n: int, offset: int) -> Any:
        def done(completion: Any) -> None:  # on a librbd thread: count, record, wake; nothing that blocks
            self._written(n, offset, int(completion.get_return_value()))
        return done

    def _written(self, n: int, offset: int, rc: int) -> None:
        with self._in_flight:
            self._in_flight_bytes -= n
            self._in_flight_ops -= 1
            if rc < 0 and self._write_error is None:
                errno = -rc
                self._write_error = RbdIOError(
                    self.name, f"write of {n} bytes at offset {offset} failed: {os.strerror(errno)} "
                    f"(errno {errno}); the data may or may not be on the volume", errno=errno)
            self._in_flight.notify_all()

    def _drain(self) -> None:
        """Wait for every write in flight (each completes or fails within the OSD op timeout)."""
        if not self._in_flight_ops:  # the read path's common case: no lock round trip
            return
        with self._in_flight:
            self._in_flight.wait_for(lambda: self._in_flight_ops == 0)

    def _raise_write_error(self) -> None:
        with self._in_flight:
            err = self._write_error
        if err is not None:
            self._error_raised = True
            raise err

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            self._check_open()
        with self._lock:
            if whence == io.SEEK_SET:
                pos = offset
            elif whence == io.SEEK_CUR:
                pos = self._pos + offset
            elif whence == io.SEEK_END:
                pos = self.size() + offset
            else:
                raise ValueError(f"invalid whence {whence}")
            if pos < 0:
                raise ValueError("negative seek position")
            self._pos = pos
            return pos

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def flush(self) -> None:
        if not self.closed and self._image is not None:
            with self._lock:
                self._drain()
                self._raise_write_error()
                with _librbd(self.name, "flush"):
                    self._image.flush()

    def truncate(self, size: Optional[int] = None) -> int:
        raise io.UnsupportedOperation("truncate is not supported on an RBD volume; extend the volume instead")

    def fileno(self) -> int:
        raise io.UnsupportedOperation("an RBD handle has no file descriptor")

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._image is not None:
                try:
                    if not self._read_only:
                        self._drain()
                        with _librbd(self.name, "flush at close"):
                            self._image.flush()
                        if not self._error_raised:  # a loss nobody was told of yet
                            self._raise_write_error()
                finally:
                    with _librbd(self.name, "close"):
                        self._image.close()
        finally:
            self._image = None
            try:
                if self._ioctx is not None:
                    self._ioctx.close()
            finally:
                self._ioctx = None
                if self._cluster is not None:
                    self._cluster.shutdown()
                self._cluster = None
                super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed RBD handle {self.name}")

    def __repr__(self) -> str:
        return f"<RbdHandle {self.name} pos={self._pos if not self.closed else '-'}{' closed' if self.closed else ''}>"


class RBDConnector(Connector):
    """``connector_for("rbd", do_local_attach=False, device_type="krbd")``.

    Options: ``do_local_attach`` (map to a /dev device instead of returning a handle; the info's own
    ``do_local_attach`` key wins), ``device_type`` ``"krbd"`` or ``"nbd"``, ``conffile`` (host Ceph
    config used when the info has no monitors), ``etc`` root for keyring lookup, ``timeout``,
    ``lock_path`` for the per-image inter-process locks, ``run_dir`` for the transient key files.
    """

    protocol = "rbd"
    info_type = RbdInfo

    def __init__(self, *, do_local_attach: bool = False, device_type: str = "krbd",
                 conffile: Optional[str] = None, timeout: float = 30.0, lock_path: Optional[str] = None,
                 run_dir: str = "/run/blocklink", executor: Optional[Executor] = None,
                 paths: Optional[HostPaths] = None, **legacy: Any) -> None:
        super().__init__(executor=executor, paths=paths)
        timeout = fold_renamed("RBDConnector", legacy, {"timeout": timeout})["timeout"]
        self.do_local_attach = flag("do_local_attach", do_local_attach)
        self.device_type = choice("device_type", device_type, ("krbd", "nbd"))
        if conffile is not None and not isinstance(conffile, str):
            raise InvalidOption("conffile", f"expected a path, got {type(conffile).__name__}")
        self.conffile = conffile
        self.timeout = seconds("timeout", timeout)
        self.run_dir = run_dir
        self.locks = LockFactory(lock_path or os.path.join(run_dir, "locks"))

    def get_connector_properties(self, **kwargs: Any) -> Dict[str, Any]:
        return protocol_properties("rbd", self.paths,
                                   do_local_attach=kwargs.get("do_local_attach", self.do_local_attach))

    # ------------------------------------------------------------------ cluster access
    def cluster_spec(self, info: RbdInfo) -> ClusterSpec:
        user = info.auth_username or "admin"
        cluster = info.cluster_name or "ceph"
        key = None
        if info.keyring is not None:
            key = key_from_keyring(info.keyring.reveal(), user)
            if key is None:  # os-brick also accepts a bare key string here
                bare = info.keyring.reveal().strip()
                if bare and "\n" not in bare and "[" not in bare:
                    key = Secret(bare)
            if key is None:
                raise InvalidConnectionInfo("data.keyring", f"holds no key for client.{user}")
        keyring_file = None
        if key is None and info.auth_enabled is not False:
            looked = list(iter_keyring_candidates(cluster, user, self.paths.etc))
            for cand in looked:
                text = self.paths.read(cand)
                if text and key_from_keyring(text, user) is not None:
                    keyring_file = cand
                    break
            if keyring_file is None and info.monitors:  # (a ceph.conf may name a keyring of its own)
                # cephx is on and librados would only say "error connecting to the cluster"
                raise MissingCredentials(f"ceph cluster {cluster} as client.{user}",
                                         f"no key for client.{user}: the connection info has no keyring and "
                                         "no keyring on this host holds one", looked)
        conffile = self.conffile
        if not info.monitors and conffile is None:
            default = self.paths.etcpath("ceph", f"{cluster}.conf")
            conffile = default if os.path.exists(default) else None
            if conffile is None:
                raise InvalidConnectionInfo("data.hosts", "no monitors in the connection info and no "
                                            f"/etc/ceph/{cluster}.conf on this host")
        return ClusterSpec(user=user, monitors=info.monitors, conffile=conffile if not info.monitors else None,
                           key=key, keyring_file=keyring_file, cluster_name=cluster, timeout=self.timeout)

    def _local(self, info: RbdInfo) -> bool:
        v = info.extra.get("do_local_attach")
        return bool(v) if isinstance(v, bool) else self.do_local_attach

    # ------------------------------------------------------------------ connector API
    def connect_volume(self, info: InfoLike) -> AttachedDevice:
        rinfo: RbdInfo = self._info(info)
        if self._local(rinfo):
            with span("rbd_map", image=rinfo.name):
                return self._map(rinfo)
        with span("rbd_open", image=rinfo.name):
            handle = self.open_handle(rinfo)
        return AttachedDevice(protocol="rbd", handle=handle, type=DeviceKind.HANDLE,
                              volume=rinfo.name, read_only=rinfo.read_only)

    def open_handle(self, info: InfoLike) -> RbdHandle:
        rinfo: RbdInfo = self._info(info)
        spec = self.cluster_spec(rinfo)
        cluster = connect(spec, HANDLE_CONF)
        ioctx = image = None
        try:
            ioctx = open_ioctx(cluster, spec, rinfo.pool, rinfo.namespace)
            image = open_image(ioctx, spec, rinfo.pool, rinfo.image, read_only=rinfo.read_only)
        except BaseException:
            if ioctx is not None:
                ioctx.close()
            cluster.shutdown()
            raise
        LOG.info("opened rbd image %s as client.%s", rinfo.name, spec.user)
        return RbdHandle(cluster, ioctx, image, rinfo.name, read_only=rinfo.read_only)

    def disconnect_volume(self, info: InfoLike, device: DeviceLike = None, force: bool = False) -> None:
        rinfo: RbdInfo = self._info(info)
        dev = self._device(device)
        if dev is not None and dev.handle is not None:
            dev.handle.close()
            return
        if dev is None and not self._local(rinfo):
            return  # a handle nobody gave back cannot be found; nothing is mapped for it
        with span("rbd_unmap", image=rinfo.name):
            self._unmap(rinfo, dev.path if dev else None, force)

    def extend_volume(self, info: InfoLike) -> int:
        rinfo: RbdInfo = self._info(info)
        with self.open_handle(rinfo) as h:
            size = h.size()
        dev = self._find_mapping(rinfo)
        if dev is None:
            return size
        # krbd follows header changes by itself; wait for the block device to show the new size
        from blocklink.initiator.host.wait import wait_for

        sysfs = self.paths.sys("block", os.path.basename(dev), "size")
        mapped: str = dev

        def current() -> Optional[int]:
            v = self.paths.read(sysfs)
            return int(v) * 512 if v and v.isdigit() and int(v) * 512 >= size else None

        got = wait_for(current, timeout=self.timeout, watch=[os.path.dirname(sysfs)], what=f"{mapped} size {size}")
        return got

    def get_volume_paths(self, info: InfoLike) -> List[str]:
        rinfo: RbdInfo = self._info(info)
        dev = self._find_mapping(rinfo)
        return [dev] if dev else []

    # ------------------------------------------------------------------ local mapping
    def _mappings(self) -> Dict[str, str]:
        """device path -> image spec ("pool/[namespace/]image[@snap]") of every mapping of our device type."""
        out: Dict[str, str] = {}
        if self.device_type == "krbd":
            base = self.paths.sys("bus", "rbd", "devices")
            for dev_id in self.paths.listdir(base):
                d = os.path.join(base, dev_id)
                pool, image = self.paths.read(os.path.join(d, "pool")), self.paths.read(os.path.join(d, "name"))
                if pool and image:
                    out[f"/dev/rbd{dev_id}"] = _spec(pool, self.paths.read(os.path.join(d, "pool_ns"), "") or "",
                                                     image, self.paths.read(os.path.join(d, "current_snap"), "-"))
            return out
        res = self.executor.run(["rbd-nbd", "list-mapped", "--format", "json"], check=False)
        if res.exit_code != 0:
            return out
        try:
            entries = json.loads(res.stdout or "[]")
        except ValueError:
            return out
        for e in entries if isinstance(entries, list) else []:
            if not isinstance(e, dict) or not str(e.get("device", "")).startswith("/dev/") or \
                    not all(isinstance(e.get(k), str) and e[k] for k in ("pool", "image")):
                continue  # not an entry rbd-nbd writes: never hand out its "device"
            ns, snap = e.get("namespace") or "", e.get("snap", "-")
            if isinstance(ns, str) and isinstance(snap, str):
                out[str(e["device"])] = _spec(e["pool"], ns, e["image"], snap)
        return out

    def _find_mapping(self, info: RbdInfo) -> Optional[str]:
        want = _spec(info.pool, info.namespace, info.image, "-")
        return next((dev for dev, spec in self._mappings().items() if spec == want), None)

    def _map(self, info: RbdInfo) -> AttachedDevice:
        with self.locks.lock(f"rbd-{info.pool}-{info.namespace}-{info.image}"):
            existing = self._find_mapping(info)
            if existing:
                LOG.info("rbd image %s already mapped at %s", info.name, existing)
                return self._device_of(info, existing)
            spec = self.cluster_spec(info)
            spec_name = f"{info.pool}/{info.namespace + '/' if info.namespace else ''}{info.image}"
            with CephFiles(spec, base_dir=self.run_dir) as files:
                if self.device_type == "krbd":
                    argv = ["rbd", "device", "map", *files.args(spec.user)]
                else:
                    argv = ["rbd-nbd", "map", *files.args(spec.user)]
                if info.read_only:
                    argv.append("--read-only")
                argv.append(spec_name)
                try:
                    res = self.executor.run(argv, timeout=self.timeout + 30)
                except CommandFailed as e:
                    raise _map_error(info.name, e) from None
            path = res.stdout.strip().splitlines()[-1].strip() if res.stdout.strip() else ""
            if not path.startswith("/dev/"):
                path = self._find_mapping(info) or ""
            if not path:
                raise DeviceNotFound(f"rbd image {info.name}")
            LOG.info("mapped rbd image %s at %s (%s)", info.name, path, self.device_type)
            return self._device_of(info, path)

    def _device_of(self, info: RbdInfo, path: str) -> AttachedDevice:
        return AttachedDevice(protocol="rbd", path=path, type=DeviceKind.BLOCK, volume=info.name,
                              read_only=info.read_only)

    def _unmap(self, info: RbdInfo, path: Optional[str], force: bool) -> None:
        with self.locks.lock(f"rbd-{info.pool}-{info.namespace}-{info.image}"):
            found = self._find_mapping(info)
            if path and found and path != found:
                # the caller's device is another image's mapping now: never unmap it
                raise DeviceMismatch(path, expected=_spec(info.pool, info.namespace, info.image, "-"),
                                     found=self._mappings().get(path, "no image"), what="image")
            target = found or None
            if target is None:
                return  # already unmapped: disconnecting twice is harmless
            tool = ["rbd", "device", "unmap"] if self.device_type == "krbd" else ["rbd-nbd", "unmap"]
            argv = tool + (["-o", "force"] if force and self.device_type == "krbd" else []) + [target]
            try:
                self.executor.run(argv, timeout=self.timeout + 30)
            except CommandFailed as e:
                if force:
                    raise DetachIncomplete(info.name, [f"unmap {target}: {e}"]) from None
                raise DeviceBusy(target, e.stderr.strip().splitlines()[-1] if e.stderr.strip() else str(e)) from None
            LOG.info("unmapped rbd image %s from %s", info.name, target)


def _spec(pool: str, namespace: str, image: str, snap: Optional[str]) -> str:
    return f"{pool}/{namespace + '/' if namespace else ''}{image}{'' if snap in ('-', '', None) else '@' + str(snap)}"


def _map_error(name: str, e: CommandFailed) -> Exception:
    err = (e.stderr or "").lower()
    if "permission denied" in err or "operation not permitted" in err and "auth" in err:
        from blocklink.errors import AuthenticationFailed

        return AuthenticationFailed(name, "cephx authentication refused")
    if "no such file" in err or "image not found" in err or "(2)" in err:
        return VolumeNotFound(name, "image does not exist")
    return ConnectionFailed(name, (e.stderr or str(e)).strip().splitlines()[-1] if (e.stderr or "").strip() else str(e))


__all__ = ["RBDConnector", "RbdHandle", "RbdIOError", "import_rados"]
