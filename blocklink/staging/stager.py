"""Stage, publish, grow and undo a volume's filesystem on a node (what a CSI node plugin does).

All commands go through the executor seam, all host files through :class:`HostPaths`. Operations on
one staging or target path are serialised by an inter-process lock on that path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from blocklink.errors import CommandFailed, DeviceMismatch, InvalidOption
from blocklink.executor import Executor, default_executor
from blocklink.hostpaths import HostPaths
from blocklink.locks import LockFactory
from blocklink.masking import get_logger
from blocklink.models.host import AttachedDevice
from blocklink.staging import filesystems, identity
from blocklink.staging.errors import (DeviceInUse, FilesystemCheckFailed, MountBusy, MountConflict, NotStaged,
                                      ProbeFailed, StagingCommandFailed, StillPublished)
from blocklink.staging.health import Condition, Facts, assess
from blocklink.staging.holders import holders
from blocklink.staging.idempotency import already_published, already_staged
from blocklink.staging.mountinfo import MountEntry, MountTable
from blocklink.staging.records import RecordStore, StagingRecord
from blocklink.staging.signatures import Action, Probe, decide, parse_blkid_export, parse_wipefs_json
from blocklink.staging.usage import Usage, usage

LOG = get_logger(__name__)

DeviceLike = Union[AttachedDevice, str]


@dataclass(frozen=True)
class StagedVolume:
    device: str
    staging_path: str
    fs_type: str
    fs_uuid: Optional[str]
    mount_options: Tuple[str, ...]
    formatted: bool  # this call ran mkfs
    changed: bool  # False: it was already staged so (a no-op)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["mount_options"] = list(self.mount_options)
        return d


@dataclass(frozen=True)
class Published:
    target_path: str
    source: str  # the staging path, or the device node for a block publish
    readonly: bool
    changed: bool

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Unmounted:
    path: str
    device: Optional[str]
    changed: bool  # False: nothing was mounted there
    lazy: bool = False  # force: detached while still in use by ``holders``
    holders: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["holders"] = list(self.holders)
        return d


def _abspath(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise InvalidOption(name, f"expected an absolute path, got {value!r}")
    p = os.path.normpath(value)
    if p == "/":
        raise InvalidOption(name, "the root directory cannot be used")
    return p


def _device_path(device: Any) -> str:
    if isinstance(device, AttachedDevice):
        if device.type != "block" or not device.path:
            raise InvalidOption("device", f"staging needs a block device, got a {device.type} ({device.path!r})")
        return device.path
    if isinstance(device, str) and device.startswith("/dev/"):
        return device
    raise InvalidOption("device", f"expected an AttachedDevice or a /dev path, got {device!r}")


class Stager:
    def __init__(self, *, executor: Optional[Executor] = None, paths: Optional[HostPaths] = None,
                 state_dir: str = "/run/blocklink/staging", lock_path: str = "/run/blocklink/locks",
                 timeout: float = 600.0) -> None:
        self.executor = executor or default_executor()
        self.paths = paths or HostPaths()
        self.records = RecordStore(state_dir)
        self.locks = LockFactory(lock_path)
        self.timeout = timeout  # mkfs of a large volume and resize2fs can take minutes

    # ------------------------------------------------------------------ helpers
    def _mounts(self) -> MountTable:
        return MountTable.read(self.paths)

    def _block(self, dev_path: str, for_path: str) -> Tuple[int, int, str]:
        """``(major, minor, name)`` of a block device node."""
        try:
            st = os.stat(self.paths.from_host(dev_path))
        except OSError as e:
            raise DeviceInUse(dev_path, for_path, f"cannot stat the device: {e.strerror}") from None
        if not stat.S_ISBLK(st.st_mode):
            raise InvalidOption("device", f"{dev_path} is not a block device")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        return major, minor, self._name(major, minor) or os.path.basename(dev_path)

    def _name(self, major: int, minor: int) -> Optional[str]:
        link = self.paths.sys("dev", "block", f"{major}:{minor}")
        return os.path.basename(self.paths.realpath(link)) if self.paths.exists(link) else None

    def _run(self, action: str, argv: Sequence[str], device: Optional[str], path: str, **kw: Any) -> Any:
        try:
            return self.executor.run(argv, timeout=self.timeout, **kw)
        except CommandFailed as e:
            # the first line: mkfs and mount put the reason there and a usage text after it
            detail = [x for x in (e.stderr or e.stdout or "").splitlines() if x.strip()]
            raise StagingCommandFailed(action, device, path, f"exit {e.exit_code}: "
                                       + (detail[0].strip() if detail else "no message")) from None

    @contextlib.contextmanager
    def _locked(self, kind: str, path: str) -> Iterator[None]:
        with self.locks.lock(f"staging-{kind}-{path}"):
            yield

    def probe(self, dev_path: str, name: str, path: str = "") -> Probe:
        """Both low-level probes plus the kernel's partitions and holders of the device."""
        res = self.executor.run(["blkid", "-p", "-o", "export", dev_path], check=False, timeout=self.timeout)
        blkid = parse_blkid_export(res.exit_code, res.stdout, res.stderr)
        wres = self.executor.run(["wipefs", "-n", "-J", dev_path], check=False, timeout=self.timeout)
        if wres.exit_code != 0:
            raise ProbeFailed(dev_path, path, f"wipefs exit {wres.exit_code}: {wres.stderr.strip()}")
        try:
            sigs = parse_wipefs_json(wres.stdout)
        except ValueError as e:
            raise ProbeFailed(dev_path, path, f"unreadable wipefs output: {e}") from None
        blk = self.paths.sys("block", name)
        parts = tuple(p for p in self.paths.listdir(blk)
                      if p.startswith(name) and self.paths.exists(os.path.join(blk, p, "partition")))
        return Probe(blkid, sigs, parts, tuple(self.paths.listdir(os.path.join(blk, "holders"))))

    # ------------------------------------------------------------------ stage
    def stage(self, device: DeviceLike, staging_path: str, fs_type: str = "ext4",
              mount_options: Sequence[str] = (), mkfs_options: Sequence[str] = ()) -> StagedVolume:
        """Mount ``device``'s ``fs_type`` filesystem on ``staging_path``, formatting it only when blank."""
        dev_path = _device_path(device)
        path = _abspath("staging_path", staging_path)
        fs = filesystems.filesystem(fs_type)
        opts = filesystems.mount_options(mount_options)
        mkfs_opts = filesystems.mkfs_options(fs, mkfs_options)
        with self._locked("stage", path):
            major, minor, name = self._block(dev_path, path)
            want = identity.expected(device) if isinstance(device, AttachedDevice) else identity.VolumeIdentity()
            have = identity.current(self.paths, name)
            diffs = identity.differences(want, have)
            if diffs:
                raise DeviceMismatch(dev_path, str(want.to_dict()), "; ".join(diffs))
            table = self._mounts()
            record = self.records.load(path)
            if already_staged(table.at(path), dev_path, major, minor, fs.name, opts, record):
                LOG.info("staging: %s already staged on %s", dev_path, path)
                return StagedVolume(dev_path, path, fs.name, record.fs_uuid if record else None, opts, False, False)
            elsewhere = [e.mount_point for e in table.of_device(major, minor)]
            if elsewhere:
                raise DeviceInUse(dev_path, path, "its filesystem is mounted on " + ", ".join(elsewhere))
            created = self._make_dir(path, "staging_path")
            try:
                return self._stage_new(dev_path, name, major, minor, path, fs, opts, mkfs_opts,
                                       identity.merged(want, have), created)
            except BaseException:
                if created:
                    self._remove_mount_point(path)
                raise

    def _stage_new(self, dev_path: str, name: str, major: int, minor: int, path: str, fs: filesystems.Filesystem,
                   opts: Tuple[str, ...], mkfs_opts: Tuple[str, ...], ident: identity.VolumeIdentity,
                   created: bool) -> StagedVolume:
        probe = self.probe(dev_path, name, path)
        action = decide(dev_path, path, fs.name, probe)
        formatted = False
        if action is Action.FORMAT:
            LOG.info("staging: %s is blank, making %s", dev_path, fs.name)
            self._run("mkfs", fs.mkfs_argv(dev_path, mkfs_opts), dev_path, path, input="")
            formatted = True
            probe = self.probe(dev_path, name, path)
            if decide(dev_path, path, fs.name, probe) is not Action.MOUNT:
                raise ProbeFailed(dev_path, path, f"no {fs.name} filesystem found after mkfs")
        else:
            self._fsck(fs, dev_path, path)
        argv = ["mount", "-t", fs.name] + (["-o", ",".join(opts)] if opts else []) + [dev_path, path]
        self._run("mount", argv, dev_path, path)
        entry = self._mounts().at(path)
        if entry is None or (entry.major, entry.minor) != (major, minor):
            raise StagingCommandFailed("mount", dev_path, path, "mount succeeded but the mount is not there")
        self.records.save(StagingRecord(path, dev_path, major, minor, fs.name, opts, probe.blkid.uuid, ident,
                                        created))
        LOG.info("staging: %s (%s %s) mounted on %s", dev_path, fs.name, probe.blkid.uuid, path)
        return StagedVolume(dev_path, path, fs.name, probe.blkid.uuid, opts, formatted, True)

    def _fsck(self, fs: filesystems.Filesystem, dev_path: str, path: str) -> None:
        argv = fs.fsck_argv(dev_path)
        if argv is None:
            return
        res = self.executor.run(argv, check=False, timeout=self.timeout, input="")
        if res.exit_code not in fs.fsck_ok:
            out = (res.stderr.strip() or res.stdout.strip()).splitlines()
            raise FilesystemCheckFailed(dev_path, path, f"{argv[0]} exit {res.exit_code}"
                                        + (f": {out[-1]}" if out else ""))

    def _make_dir(self, path: str, what: str) -> bool:
        if os.path.isdir(path):
            return False
        if os.path.lexists(path):
            raise InvalidOption(what, f"{path} exists and is not a directory")
        os.makedirs(path, mode=0o750)
        return True

    # ------------------------------------------------------------------ unstage
    def unstage(self, staging_path: str, force: bool = False) -> Unmounted:
        """Unmount the staging mount. Refused while published or busy, unless ``force`` (then publications
        are unmounted too and a busy mount is detached lazily)."""
        path = _abspath("staging_path", staging_path)
        with self._locked("stage", path):
            table = self._mounts()
            entry = table.at(path)
            record = self.records.load(path)
            if entry is None:
                self._forget(path, record)
                return Unmounted(path, record.device if record else None, False)
            device = self._device_of(entry, record)
            others = sorted({e.mount_point for e in table.of_device(entry.major, entry.minor)} - {path})
            if others and not force:
                raise StillPublished(device, path, others)
            lazy_holders: List[str] = []
            for target in others:
                lazy_holders += self._umount(target, device, force=True)[1]
            lazy, held = self._umount(path, device, force=force)
            self._forget(path, record)
            return Unmounted(path, device, True, lazy or bool(lazy_holders), tuple(held + lazy_holders))

    def _forget(self, path: str, record: Optional[StagingRecord]) -> None:
        self.records.drop(path)
        if record and record.created_dir:
            self._remove_mount_point(path)

    def _device_of(self, entry: MountEntry, record: Optional[StagingRecord]) -> str:
        name = self._name(entry.major, entry.minor)
        if name:
            return f"/dev/{name}"
        return record.device if record else entry.source

    def _umount(self, path: str, device: Optional[str], *, force: bool) -> Tuple[bool, List[str]]:
        """Unmount ``path``; ``(lazy, holders)``. Busy: :class:`MountBusy` naming holders, or with ``force``
        a lazy unmount (the filesystem goes once its last user lets go)."""
        res = self.executor.run(["umount", path], check=False, timeout=self.timeout)
        if res.exit_code == 0:
            return False, []
        entry = self._mounts().at(path)
        if entry is None:  # gone meanwhile (a concurrent unmount): that is what we wanted
            return False, []
        if "busy" not in res.stderr:
            if not force:
                raise StagingCommandFailed("umount", device, path, f"exit {res.exit_code}: {res.stderr.strip()}")
            held: List[str] = []
        else:
            held = holders(self.paths, entry.major, entry.minor)
            if not force:
                raise MountBusy(device, path, held, "unmount with force=True to detach it lazily")
        LOG.warning("staging: lazily unmounting %s (%s)", path, ", ".join(held) or res.stderr.strip())
        self._run("umount", ["umount", "-l", path], device, path)
        return True, held

    def _remove_mount_point(self, path: str) -> None:
        """Remove an empty directory or empty file left as a mount point (never anything with content)."""
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(path)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(path)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EBUSY):
                raise

    # ------------------------------------------------------------------ publish
    def publish(self, staging_path: str, target_path: str, readonly: bool = False) -> Published:
        """Bind-mount the staged filesystem on ``target_path``; read-only as bind then ``remount,bind,ro``
        (a single ``-o bind,ro`` is silently read-write on old util-linux)."""
        src = _abspath("staging_path", staging_path)
        target = _abspath("target_path", target_path)
        if not isinstance(readonly, bool):
            raise InvalidOption("readonly", f"expected True or False, got {readonly!r}")
        with self._locked("publish", target):
            table = self._mounts()
            source = table.at(src)
            if source is None:
                raise NotStaged(src, "nothing is mounted there")
            if already_published(table.at(target), source, target, readonly):
                return Published(target, src, readonly, False)
            created = self._make_dir(target, "target_path")
            try:
                self._run("bind mount", ["mount", "--bind", src, target], source.source, target)
                if readonly:
                    self._run("read-only remount", ["mount", "-o", "remount,bind,ro", target], source.source, target)
                    now = self._mounts().at(target)
                    if now is None or "ro" not in now.mount_options:
                        raise StagingCommandFailed("read-only remount", source.source, target,
                                                   "the bind mount is still writable")
            except BaseException:
                self._undo_mount(target, created)
                raise
            return Published(target, src, readonly, True)

    def publish_block(self, device: DeviceLike, target_path: str) -> Published:
        """Bind-mount the device node onto the file ``target_path`` (created empty if missing)."""
        dev_path = _device_path(device)
        target = _abspath("target_path", target_path)
        with self._locked("publish", target):
            major, minor, _ = self._block(dev_path, target)
            if self._mounts().at(target) is not None:
                st = os.stat(target)
                if stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(major, minor):
                    return Published(target, dev_path, False, False)
                raise MountConflict(dev_path, target, "another mount" + (
                    f" (device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)})" if stat.S_ISBLK(st.st_mode) else ""))
            created = False
            if not os.path.lexists(target):
                os.makedirs(os.path.dirname(target), mode=0o750, exist_ok=True)
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
                created = True
            elif not stat.S_ISREG(os.lstat(target).st_mode):
                raise InvalidOption("target_path", f"{target} exists and is not a regular file")
            try:
                self._run("bind mount", ["mount", "--bind", dev_path, target], dev_path, target)
                st = os.stat(target)
                if not stat.S_ISBLK(st.st_mode) or st.st_rdev != os.makedev(major, minor):
                    raise StagingCommandFailed("bind mount", dev_path, target, "the target is not the device")
            except BaseException:
                self._undo_mount(target, created)
                raise
            return Published(target, dev_path, False, True)

    def _undo_mount(self, target: str, created: bool) -> None:
        if self._mounts().at(target) is not None:
            self.executor.run(["umount", target], check=False, timeout=self.timeout)
        if created:
            self._remove_mount_point(target)

    def unpublish(self, target_path: str, force: bool = False) -> Unmounted:
        """Unmount a publication (filesystem or block) and remove its now-empty mount point."""
        target = _abspath("target_path", target_path)
        with self._locked("publish", target):
            entry = self._mounts().at(target)
            if entry is None:
                self._remove_mount_point(target)
                return Unmounted(target, None, False)
            device = self._published_device(target, entry)
            lazy, held = self._umount(target, device, force=force)
            while self._mounts().at(target) is not None:  # stacked publications: all of them go
                lazy2, held2 = self._umount(target, device, force=force)
                lazy, held = lazy or lazy2, held + held2
            self._remove_mount_point(target)
            return Unmounted(target, device, True, lazy, tuple(held))

    def _published_device(self, target: str, entry: MountEntry) -> Optional[str]:
        try:
            st = os.stat(target)
        except OSError:
            st = None
        if st is not None and stat.S_ISBLK(st.st_mode):
            return f"/dev/{self._name(os.major(st.st_rdev), os.minor(st.st_rdev)) or entry.root.lstrip('/')}"
        return self._device_of(entry, None)

    # ------------------------------------------------------------------ grow, usage, health
    def expand(self, staging_path: str) -> int:
        """Grow the staged filesystem online to fill its (already extended) device; the new size in bytes."""
        path = _abspath("staging_path", staging_path)
        with self._locked("stage", path):
            entry = self._mounts().at(path)
            if entry is None or entry.root != "/":
                raise NotStaged(path, "nothing is mounted there" if entry is None else f"a subtree ({entry.root})")
            fs = filesystems.FILESYSTEMS.get(entry.fs_type)
            name = self._name(entry.major, entry.minor)
            if fs is None or name is None:
                raise NotStaged(path, f"{entry.source}: {entry.fs_type} on "
                                + ("a device that is gone" if name is None else "an unsupported filesystem"))
            device = f"/dev/{name}"
            self._run("grow", fs.grow_argv(device, path), device, path)
            size = usage(path).bytes_total
            LOG.info("staging: grew %s (%s) to %d bytes", path, device, size)
            return size

    def stats(self, path: str) -> Usage:
        return usage(_abspath("path", path))

    def condition(self, path: str, device: Optional[AttachedDevice] = None) -> Condition:
        """Whether the volume mounted or published at ``path`` is healthy (see :mod:`.health`)."""
        p = _abspath("path", path)
        table = self._mounts()
        entry = table.at(p)
        if entry is None:
            return assess(Facts(p, mounted=False))
        major, minor = entry.major, entry.minor
        try:
            st = os.stat(p)
            if stat.S_ISBLK(st.st_mode):  # a block publish: the node's device, not devtmpfs
                major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        except OSError:
            pass
        record = self._record_for(table, p, major, minor)
        want = identity.expected(device) if device else identity.VolumeIdentity()
        if record:  # the device passed in wins over what was recorded at stage time
            want = identity.merged(want, record.identity)
        name = self._name(major, minor)
        facts = Facts(p, True, f"{major}:{minor}", f"/dev/{name}" if name else (record.device if record else None),
                      device_present=name is not None, expected=want,
                      current=identity.current(self.paths, name) if name else identity.VolumeIdentity(),
                      super_readonly=entry.super_readonly,
                      asked_readonly=bool(record and record.readonly), fs_errors=self._fs_errors(entry, name),
                      io_error=self._io_error(p) if entry.fs_type != "devtmpfs" else None,
                      scsi_state=self.paths.read(self.paths.sys("block", name, "device", "state")) if name else None)
        return assess(facts)

    def _record_for(self, table: MountTable, path: str, major: int, minor: int) -> Optional[StagingRecord]:
        rec = self.records.load(path)
        if rec:
            return rec
        for e in table.of_device(major, minor):  # a publication: the staging mount's record
            rec = self.records.load(e.mount_point)
            if rec and (rec.major, rec.minor) == (major, minor):
                return rec
        return None

    def _fs_errors(self, entry: MountEntry, name: Optional[str]) -> int:
        if entry.fs_type != "ext4" or not name:
            return 0
        v = self.paths.read(self.paths.sys("fs", "ext4", name, "errors_count"))
        return int(v) if v and v.isdigit() else 0

    @staticmethod
    def _io_error(path: str) -> Optional[str]:
        try:
            os.statvfs(path)
            with os.scandir(path) as it:  # a shut-down xfs fails reads of its directories
                next(it, None)
        except NotADirectoryError:
            return None
        except OSError as e:
            return f"{e.strerror} ({errno.errorcode.get(e.errno or 0, e.errno)})"
        return None


__all__ = ["Published", "StagedVolume", "Stager", "Unmounted"]
