"""``os_brick.encryptors.luks``: host-side LUKS (dm-crypt) for Nova and Cinder, on :mod:`blocklink.encryption`.

What the services see is os-brick's behaviour:

* ``LuksEncryptor`` (LUKS1) / ``Luks2Encryptor`` (LUKS2) are built from ``connection_info`` whose
  ``data.device_path`` is the connected volume (no device path: ``VolumeEncryptionNotSupported``);
  the mapping is named ``crypt-<basename of device_path>`` (or the pre-``crypt-`` name, or the
  multipath WWN, when a mapping of that name is already open), so a volume opened by the real
  os-brick is closed by the facade and the other way round.
* ``attach_volume(context, **encryption)`` opens the volume with the key manager's key and replaces
  ``device_path`` by a symlink to ``/dev/mapper/<name>``: Nova then hands ``device_path`` to the guest,
  which sees the plaintext. ``detach_volume`` closes the mapping (nothing open: nothing to do).
  ``extend_volume(context, **encryption)`` grows an open mapping to its grown device and returns the
  new size in bytes. ``_format_volume(passphrase, **encryption)`` (Nova's native-LUKSv1 path) writes a
  header on a volume that has none.
* ``is_luks(root_helper, device)``: whether ``device`` carries a LUKS header.

Deliberate differences (blocklink's guarantees):

* os-brick formats any volume whose ``luksOpen`` fails and that is not LUKS, whatever it carries. The
  facade formats only a **blank** volume (no signature at all, libblkid probe); a filesystem,
  partition table or other header raises :class:`~blocklink.encryption.FormatRefused` and nothing is
  written.
* ``detach_volume`` puts ``device_path`` back (the kernel's device node, kept aside while the mapping
  was open, or a symlink to the lower device) instead of leaving a symlink to the removed mapping, and a mapping still in use is reported
  (:class:`~blocklink.encryption.EncryptionBusy` naming its users) after ``detach_timeout`` instead of
  failing three ``luksClose`` attempts.
* New headers use blocklink's bounded PBKDF cost (:class:`~blocklink.encryption.EncryptionSpec`:
  pbkdf2 with 1 s for LUKS1, argon2id 1 s / 128 MiB for LUKS2) instead of cryptsetup's compiled-in
  defaults; the volumes open with either library. ``plain`` dm-crypt is not provided.
* ``root_helper`` and ``execute`` are accepted and not used: blocklink runs cryptsetup itself, with
  the passphrase on stdin only.
"""

from __future__ import annotations

import grp
import os
import stat
from typing import Any, Dict, Mapping, Optional

from blocklink.compat.os_brick import exception
from blocklink.compat.os_brick.encryptors.base import VolumeEncryptor
from blocklink.connection import AttachedDevice
from blocklink.encryption.luks import LuksEncryptor as _BlocklinkLuks
from blocklink.encryption.probe import luks_version, probe
from blocklink.encryption.spec import EncryptionSpec, spec_from_dict
from blocklink.executor import default_executor
from blocklink.hostpaths import HostPaths
from blocklink.masking import Secret, get_logger

LOG = get_logger(__name__)

# the keys of an encryption dict that say how to encrypt (Cinder's record carries bookkeeping too)
_SPEC_KEYS = ("provider", "cipher", "key_size", "control_location", "encryption_key_id")
# blocklink's own options of the LUKS engine (``executor``, ``paths``, ``lock_path``, ``timeout``,
# ``detach_timeout``): os-brick's call shape has no place for them; tests and operators set them here
ENGINE_OPTIONS: Dict[str, Any] = {}


def is_luks(root_helper: Any, device: str, execute: Any = None) -> bool:
    """True when ``device`` carries a LUKS header (and nothing else); False otherwise or when it cannot
    be read (logged), as os-brick answers."""
    try:
        executor = ENGINE_OPTIONS.get("executor") or default_executor()
        return luks_version(probe(executor, device)) is not None
    except Exception as e:  # os-brick answers False on any failure of its check
        LOG.warning("is_luks: cannot probe %s: %s", device, e)
        return False


class _Mappings(_BlocklinkLuks):
    """blocklink's LUKS engine with os-brick's mapping names (the name is given, not derived)."""

    def _mapping_name(self, volume_id: str) -> str:
        return volume_id


class LuksEncryptor(VolumeEncryptor):
    """Host-side LUKS1 (os-brick's ``LuksEncryptor``)."""

    luks_format = "luks1"

    def __init__(self, root_helper: Optional[str], connection_info: Mapping[str, Any], keymgr: Any,
                 execute: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(root_helper, connection_info, keymgr, execute, *args, **kwargs)
        data = connection_info.get("data") or {}
        if not data.get("device_path"):
            raise exception.VolumeEncryptionNotSupported(
                volume_id=data.get("volume_id") or connection_info.get("serial"),
                volume_type=connection_info.get("driver_volume_type"))
        self._encryption = {k: kwargs[k] for k in _SPEC_KEYS if kwargs.get(k) is not None}
        self._engine = _Mappings(EncryptionSpec(format=self.luks_format), **ENGINE_OPTIONS)
        self._paths: HostPaths = self._engine.paths
        self.symlink_path: str = data["device_path"]
        base = os.path.basename(self.symlink_path)
        self.dev_name = "crypt-" + base
        wwn = data.get("multipath_id")
        if self._is_open(base):  # a mapping opened by an os-brick from before the crypt- prefix
            self.dev_name = base
        elif wwn and wwn != base and self._is_open(wwn):
            self.dev_name = wwn
        self.dev_path = self._paths.to_host(os.path.realpath(self._local))

    @property
    def _local(self) -> str:
        return self._paths.from_host(self.symlink_path)

    def _is_open(self, name: str) -> bool:
        return os.path.exists(self._paths.devpath("mapper", name)) and self._engine.mapping(name) is not None

    def _spec(self) -> EncryptionSpec:
        enc = dict(self._encryption, provider=self.luks_format)
        return spec_from_dict(enc).with_options(format=self.luks_format)

    def _engine_for(self, spec: EncryptionSpec) -> _Mappings:
        return _Mappings(spec, **dict(ENGINE_OPTIONS, executor=self._engine.executor))

    # ------------------------------------------------------------------ os-brick's calls
    def attach_volume(self, context: Any, **kwargs: Any) -> None:
        """Open the volume (formatting it only if blank) and point ``device_path`` at the mapping."""
        target = f"/dev/mapper/{self.dev_name}"
        m = self._engine.mapping(self.dev_name)
        if m is not None and os.path.islink(self._local) and os.readlink(self._local) == target:
            return  # attached already (device_path is the link to the mapping)
        key = self._passphrase(context)
        device = AttachedDevice(protocol=str(self.connection_info.get("driver_volume_type") or "block"),
                                path=self.dev_path, type="block")
        self._engine_for(self._spec()).attach(device, key, volume_id=self.dev_name, new_volume=True)
        local = self._local
        if not os.path.islink(local) and not os.path.lexists(self._aside):
            # the kernel's own node (devtmpfs removes it with the disk only if it is still its inode at
            # its name): kept aside, whole, and put back by detach_volume
            os.rename(local, self._aside)
        self._replace(local, lambda tmp: os.symlink(target, tmp))
        LOG.info("encryption: %s now points at %s", self.symlink_path, target)

    @property
    def _aside(self) -> str:
        """Where attach_volume keeps the device node ``device_path`` was (same directory, hidden)."""
        local = self._local
        return os.path.join(os.path.dirname(local), f".{os.path.basename(local)}.blocklink-lower")

    def detach_volume(self, **kwargs: Any) -> None:
        """Close the mapping and give ``device_path`` back to the lower device; idempotent."""
        m = self._engine.mapping(self.dev_name)
        if m is None:
            return
        self._engine.detach(self.dev_name)
        target = f"/dev/mapper/{self.dev_name}"
        if len(m.lower) == 1 and os.path.islink(self._local) and os.readlink(self._local) == target:
            self._restore(m.lower[0])

    def extend_volume(self, context: Any, **kwargs: Any) -> Optional[int]:
        """Grow the open mapping to its grown device; the new size of the decrypted device in bytes.

        cryptsetup finds the device under the mapping by its kernel name (``/dev/sdb``); while that name
        is the link to the mapping it would measure the mapping itself and refuse to grow. So for the
        resize only, ``device_path`` is the disk's own node again (a second name of the node kept
        aside; processes that opened the mapping keep it), then the link to the mapping once more.
        """
        key = self._passphrase(context)
        local, target = self._local, f"/dev/mapper/{self.dev_name}"
        if not (os.path.lexists(self._aside) and os.path.islink(local) and os.readlink(local) == target):
            return self._engine.extend(self.dev_name, key)
        self._replace(local, lambda tmp: os.link(self._aside, tmp))
        try:
            return self._engine.extend(self.dev_name, key)
        finally:
            self._replace(local, lambda tmp: os.symlink(target, tmp))

    def _format_volume(self, passphrase: str, **kwargs: Any) -> None:
        """Write a LUKS header on a blank volume (Nova's native-LUKSv1 preparation); a LUKS volume is
        left as it is, anything else refused."""
        key = Secret(passphrase)
        engine = self._engine_for(self._spec())
        engine._format_if_new(self.dev_path, key.reveal().encode(), True)

    # ------------------------------------------------------------------ device_path
    @staticmethod
    def _replace(path: str, make: Any) -> None:
        """Make a new ``path`` beside it and rename it over the old one (never a moment without one)."""
        tmp = f"{path}.blocklink-{os.getpid()}"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        make(tmp)
        os.replace(tmp, path)

    def _restore(self, lower: str) -> None:
        """``device_path`` back to the lower device: the node attach_volume kept aside; else (opened by
        the real os-brick, which replaced the node) a new node when ``device_path`` was the node
        (``/dev/sdb``), or a symlink to the lower device (``/dev/disk/by-...``)."""
        if os.path.lexists(self._aside):
            os.replace(self._aside, self._local)
            return
        node = f"/dev/{lower}"
        if os.path.normpath(self.symlink_path) != node:
            self._replace(self._local, lambda tmp: os.symlink(node, tmp))
            return
        dev = self._paths.read(self._paths.sys("class", "block", lower, "dev"))
        try:
            major, minor = (int(x) for x in (dev or "").split(":"))
        except ValueError:
            os.unlink(self._local)  # the device is gone already: no stale link either
            return
        self._replace(self._local, lambda tmp: self._make_node(tmp, major, minor))

    @staticmethod
    def _make_node(path: str, major: int, minor: int) -> None:
        """A block device node as udev makes it (root:disk, 0660)."""
        try:
            gid = grp.getgrnam("disk").gr_gid
        except KeyError:
            gid = 0
        os.mknod(path, stat.S_IFBLK | 0o660, os.makedev(major, minor))
        os.chown(path, 0, gid)


class Luks2Encryptor(LuksEncryptor):
    """Host-side LUKS2 (os-brick's ``Luks2Encryptor``)."""

    luks_format = "luks2"


__all__ = ["LuksEncryptor", "Luks2Encryptor", "is_luks"]
