"""LUKS1/LUKS2 over dm-crypt on the host: open (formatting a new blank volume), close, grow, re-key.

:class:`LuksEncryptor` works on a connected volume's host device (an ``AttachedDevice`` from any kernel
connector) and returns the dm-crypt device ``/dev/mapper/crypt-<volume id>``. Passphrases reach
cryptsetup only on stdin (``--key-file=-``; two keys in one stdin, each with its byte length, when
adding a keyslot), never on argv, in the environment or in a named file.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from blocklink.connection import AttachedDevice
from blocklink.encryption.errors import (EncryptionBusy, EncryptionError, FormatRefused, InvalidEncryption,
                                         MappingConflict, NotLuks, WrongKey)
from blocklink.encryption.probe import Signature, luks_version, probe
from blocklink.encryption.spec import EncryptionSpec
from blocklink.errors import CommandFailed, DetachIncomplete, DeviceNotFound
from blocklink.executor import Executor, default_executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host.nvme import NvmeHost
from blocklink.initiator.host.wait import wait_for
from blocklink.locks import LockFactory
from blocklink.masking import Secret, get_logger

LOG = get_logger(__name__)

# cryptsetup exit codes (cryptsetup(8), RETURN CODES)
_EXIT_BAD_KEY = 2
_EXIT_NOT_ACTIVE = 4
_EXIT_BUSY = 5
_SLOT_RE = re.compile(r"Key slot (\d+) unlocked")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}")
MAPPING_PREFIX = "crypt-"

Step = Callable[[str], None]


def mapping_name(volume_id: str) -> str:
    """The dm-crypt name of a volume: ``crypt-<volume id>``, or a hash of an id unfit for a dm name."""
    if not isinstance(volume_id, str) or not volume_id:
        raise InvalidEncryption("volume_id", "must be a non-empty string")
    if _NAME_RE.fullmatch(volume_id):
        return MAPPING_PREFIX + volume_id
    return MAPPING_PREFIX + hashlib.sha256(volume_id.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Mapping:
    """An open dm-crypt mapping: its name, kernel node (``dm-3``) and the devices below it."""

    name: str
    node: str
    lower: tuple

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.name}"


def _key_bytes(key: Secret, what: str = "key") -> bytes:
    if not isinstance(key, Secret):
        raise InvalidEncryption(what, "must be a blocklink.masking.Secret")
    if not key:
        raise InvalidEncryption(what, "is empty")
    return key.reveal().encode()


class LuksEncryptor:
    """Host-side LUKS for connected volumes. ``spec`` decides the format and cost of new headers and
    keyslots; an existing header is opened as whatever version it is."""

    def __init__(self, spec: Optional[EncryptionSpec] = None, *, executor: Optional[Executor] = None,
                 paths: HostPaths = HostPaths(), timeout: float = 120.0, detach_timeout: float = 10.0,
                 lock_path: str = "/run/blocklink/locks") -> None:
        self.spec = spec or EncryptionSpec()
        if not self.spec.host_side:
            raise InvalidEncryption("encryption.provider", "this spec does not encrypt on the host")
        self.executor = executor or default_executor()
        self.paths = paths
        self.timeout = timeout
        self.detach_timeout = detach_timeout
        self.locks = LockFactory(lock_path)

    # ------------------------------------------------------------------ state
    def _mapping_name(self, volume_id: str) -> str:
        """The dm-crypt name of ``volume_id`` (:func:`mapping_name`; the os-brick facade names its
        mappings as os-brick does)."""
        return mapping_name(volume_id)

    def mapping(self, volume_id: str) -> Optional[Mapping]:
        """The open mapping of ``volume_id`` (read from sysfs), or None."""
        name = self._mapping_name(volume_id)
        block = self.paths.sys("block")
        for node in self.paths.listdir(block):
            if node.startswith("dm-") and self.paths.read(os.path.join(block, node, "dm", "name")) == name:
                lower = tuple(sorted(self.paths.listdir(os.path.join(block, node, "slaves"))))
                return Mapping(name, node, lower)
        return None

    def size(self, volume_id: str) -> Optional[int]:
        """Bytes of the open mapping, or None."""
        m = self.mapping(volume_id)
        sectors = self.paths.read(self.paths.sys("block", m.node, "size")) if m else None
        return int(sectors) * 512 if sectors and sectors.isdigit() else None

    def users(self, volume_id: str) -> List[str]:
        """Why the mapping is in use: holders above it, mounts, ``pid N (comm)`` of processes holding it."""
        m = self.mapping(volume_id)
        return NvmeHost(self.paths, self.executor).device_users(m.node) if m else []

    def _lower_name(self, device: AttachedDevice) -> str:
        if device.type != "block" or not device.path:
            raise InvalidEncryption("device", "host-side encryption needs a block device path")
        return os.path.basename(self.paths.realpath(self.paths.from_host(device.path)))

    # ------------------------------------------------------------------ commands
    def _cryptsetup(self, args: Sequence[str], device: str, *, key: Optional[bytes] = None,
                    ok_codes: Sequence[int] = (0,)) -> "tuple[int, str]":
        """Run cryptsetup; the key (if any) goes on stdin. Returns (exit code, stdout+stderr)."""
        argv = ["cryptsetup", *args]
        if key is not None and "--key-file=-" not in argv:
            raise AssertionError("a key is only ever passed with --key-file=-")  # guard for future edits
        try:
            res = self.executor.run(argv, input=key, ok_codes=ok_codes, timeout=self.timeout)
        except CommandFailed as e:
            if e.exit_code == _EXIT_BAD_KEY and key is not None:
                raise WrongKey(device) from None
            if e.exit_code == _EXIT_BUSY:
                raise EncryptionBusy(device, (e.stderr.strip() or "in use").splitlines()[-1]) from None
            raise EncryptionError(device, str(e)) from None
        return res.exit_code, res.stdout + res.stderr

    def test_key(self, path: str, key: Secret, *, luks_type: Optional[str] = None) -> int:
        """The keyslot ``key`` opens on the LUKS device ``path`` (:class:`WrongKey` if none)."""
        args = ["open", "--test-passphrase", "--verbose", "--key-file=-"]
        if luks_type:
            args += ["--type", luks_type]
        _, out = self._cryptsetup(args + [path], path, key=_key_bytes(key))
        m = _SLOT_RE.search(out)
        if not m:
            raise EncryptionError(path, "cryptsetup accepted the key but named no keyslot")
        return int(m.group(1))

    def _header(self, path: str) -> "tuple[str, tuple[Signature, ...]]":
        sigs = probe(self.executor, path, timeout=self.timeout)
        version = luks_version(sigs)
        if version is None:
            raise NotLuks(path, "; ".join(s.describe() for s in sigs) or "no signature (blank)")
        return version, sigs

    # ------------------------------------------------------------------ attach / detach
    def attach(self, device: AttachedDevice, key: Secret, *, volume_id: str,
               new_volume: bool = False) -> AttachedDevice:
        """Open the volume on ``device`` and return its dm-crypt device; idempotent.

        A device with no signature at all is formatted only when ``new_volume`` says it is a new blank
        volume; anything else that is not a LUKS header is refused (:class:`FormatRefused`).
        """
        lower = self._lower_name(device)
        path = device.path or ""
        secret = _key_bytes(key)
        name = self._mapping_name(volume_id)
        with self.locks.lock(name):
            m = self.mapping(volume_id)
            if m is None:
                luks_type = self._format_if_new(path, secret, new_volume)
                self._cryptsetup(["open", "--type", luks_type, "--key-file=-", path, name], path, key=secret)
                m = self._wait_mapping(volume_id)
                LOG.info("encryption: opened %s (%s) on %s", m.path, luks_type, path)
            elif m.lower != (lower,):
                raise MappingConflict(name, lower, ",".join(m.lower) or "nothing")
        extra = dict(device.extra, encryption={"mapping": name, "lower_path": path})
        return AttachedDevice(protocol=device.protocol, path=m.path, type="block", wwn=device.wwn,
                              multipath_id=device.multipath_id, paths=device.paths, extra=extra)

    def _format_if_new(self, path: str, key: bytes, new_volume: bool) -> str:
        sigs = probe(self.executor, path, timeout=self.timeout)
        version = luks_version(sigs)
        if version:
            return version
        if sigs:
            raise FormatRefused(path, "it carries " + "; ".join(s.describe() for s in sigs))
        if not new_volume:
            raise FormatRefused(path, "it carries no LUKS header and the caller did not say it is a new volume")
        self._cryptsetup(["luksFormat", "--batch-mode", *self.spec.format_args(), "--key-file=-", path],
                         path, key=key)
        LOG.info("encryption: formatted new volume %s as %s (%s, %d bits)", path, self.spec.format,
                 self.spec.cipher, self.spec.key_size)
        return str(self.spec.format)

    def _wait_mapping(self, volume_id: str) -> Mapping:
        def ready() -> Optional[Mapping]:
            m = self.mapping(volume_id)
            return m if m and self.paths.exists(self.paths.devpath("mapper", m.name)) else None

        try:
            return wait_for(ready, timeout=self.timeout, watch=[self.paths.devpath("mapper")],
                            what=f"/dev/mapper/{self._mapping_name(volume_id)}")
        except DeviceNotFound:
            self._close(self._mapping_name(volume_id))
            raise

    def _close(self, name: str, *args: str) -> None:
        self._cryptsetup(["close", *args, name], f"/dev/mapper/{name}", ok_codes=(0, _EXIT_NOT_ACTIVE))

    def detach(self, volume_id: str, *, force: bool = False, timeout: Optional[float] = None) -> None:
        """Close the volume's mapping; nothing to do if it is not open.

        A mapping still in use is waited for (``timeout``, default ``detach_timeout``) and then reported
        as :class:`EncryptionBusy` naming its users. ``force`` does not wait: the kernel is told to remove
        the mapping when its last user closes it, and :class:`DetachIncomplete` names who holds it now.
        """
        name = self._mapping_name(volume_id)
        with self.locks.lock(name):
            if self.mapping(volume_id) is None:
                return
            users = self.users(volume_id)
            if users and force:
                self._close(name, "--deferred")
                raise DetachIncomplete(f"/dev/mapper/{name}",
                                       [f"{u}; removal deferred until it closes" for u in users])
            if users:
                tmo = self.detach_timeout if timeout is None else timeout
                try:
                    wait_for(lambda: True if not self.users(volume_id) else None, timeout=tmo,
                             watch=[self.paths.devpath()], what=f"/dev/mapper/{name} to be closed")
                except DeviceNotFound:
                    raise EncryptionBusy(f"/dev/mapper/{name}", "; ".join(self.users(volume_id))) from None
            self._close(name)
            LOG.info("encryption: closed /dev/mapper/%s", name)

    # ------------------------------------------------------------------ extend / re-key
    def extend(self, volume_id: str, key: Optional[Secret] = None) -> int:
        """Grow the open mapping to its (already grown) device; returns the new size in bytes.

        LUKS2 keeps the volume key in the kernel keyring, so resizing needs the passphrase (``key``).
        """
        name = self._mapping_name(volume_id)
        with self.locks.lock(name):
            m = self.mapping(volume_id)
            if m is None:
                raise DeviceNotFound(f"/dev/mapper/{name}")
            args = ["resize", name]
            secret = None
            if self._active_type(name) == "luks2":
                if key is None:
                    raise InvalidEncryption("key", "resizing a LUKS2 mapping needs its key")
                secret = _key_bytes(key)
                args.insert(1, "--key-file=-")
            self._cryptsetup(args, m.path, key=secret)
        size = self.size(volume_id)
        if size is None:
            raise DeviceNotFound(f"/dev/mapper/{name}")
        LOG.info("encryption: /dev/mapper/%s is now %d bytes", name, size)
        return size

    def _active_type(self, name: str) -> str:
        _, out = self._cryptsetup(["status", name], f"/dev/mapper/{name}")
        for line in out.splitlines():
            k, _, v = line.strip().partition(":")
            if k == "type":
                return v.strip().lower()
        return ""

    def rotate_key(self, device: AttachedDevice, old: Secret, new: Secret, *,
                   on_step: Optional[Step] = None) -> int:
        """Replace the keyslot ``old`` opens by one for ``new``; returns the new keyslot.

        Order: add a slot for ``new`` (authorised by ``old``), check ``new`` opens it, then kill the old
        slot authorised by ``new`` (cryptsetup refuses a key that opens only the slot being killed).
        At every moment one of the two keys opens the volume. Rerunning after an interruption finishes
        the job: a present new slot is not added twice; a finished rotation returns the new slot.
        ``on_step`` is called with ``"added"``, ``"verified"``, ``"removed"`` as each step completes.
        """
        path = device.path or ""
        self._lower_name(device)
        old_b, new_b = _key_bytes(old, "old"), _key_bytes(new, "new")
        if old_b == new_b:
            raise InvalidEncryption("new", "the new key is the old key")
        step = on_step or (lambda _s: None)
        luks_type, _ = self._header(path)
        try:
            old_slot = self.test_key(path, old, luks_type=luks_type)
        except WrongKey:
            slot = self.test_key(path, new, luks_type=luks_type)  # WrongKey again: neither key opens it
            LOG.info("encryption: %s already rotated (keyslot %d)", path, slot)
            return slot
        try:
            new_slot = self.test_key(path, new, luks_type=luks_type)
            LOG.info("encryption: %s already has keyslot %d for the new key", path, new_slot)
        except WrongKey:
            self._cryptsetup(["luksAddKey", *self.spec.pbkdf_args(luks_type=luks_type),
                              "--key-file=-", f"--keyfile-size={len(old_b)}",
                              "--new-keyfile=-", f"--new-keyfile-size={len(new_b)}", path],
                             path, key=old_b + new_b)
            step("added")
            new_slot = self.test_key(path, new, luks_type=luks_type)
        step("verified")
        self._cryptsetup(["luksKillSlot", "--key-file=-", path, str(old_slot)], path, key=new_b)
        step("removed")
        LOG.info("encryption: %s rekeyed: keyslot %d removed, keyslot %d holds the new key", path, old_slot,
                 new_slot)
        return new_slot


__all__ = ["LuksEncryptor", "Mapping", "mapping_name"]
