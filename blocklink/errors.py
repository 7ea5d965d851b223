"""One exception hierarchy, rooted at :class:`BlocklinkError`.

Every error names what failed (a field, a device, a target, a command) so a caller can act on it
without parsing prose. Messages never contain secrets: values that could be secret are masked by
the code raising the error (see :mod:`blocklink.masking`).
"""

from __future__ import annotations

from typing import Optional, Sequence

from blocklink.masking import mask_text


class BlocklinkError(Exception):
    """Base of every error blocklink raises on purpose."""


class InvalidConnectionInfo(BlocklinkError, ValueError):
    """A connection-info or connector dict is malformed; ``field`` names the offending key path."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid {field}: {reason}")


class InvalidOption(BlocklinkError, ValueError):
    """A connector or helper was constructed with an unknown option or a bad value; ``option`` names it."""

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        super().__init__(f"invalid option {option}: {reason}")


class InvalidConnector(InvalidConnectionInfo):
    """A host-connector dict (``get_connector_properties`` output) is malformed or lacks a key."""


class UnknownProtocol(BlocklinkError, LookupError):
    def __init__(self, protocol: str, known: Sequence[str]) -> None:
        self.protocol = protocol
        self.known = tuple(sorted(known))
        super().__init__(f"unknown protocol {protocol!r}; known: {', '.join(self.known)}")


class CommandFailed(BlocklinkError):
    """A child process failed. ``argv`` is already masked; stdout/stderr are kept for parsing."""

    def __init__(self, argv: Sequence[str], exit_code: Optional[int], stdout: str, stderr: str,
                 reason: str = "") -> None:
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        detail = reason or (stderr.strip().splitlines()[-1] if stderr.strip() else "")
        super().__init__(f"command {' '.join(self.argv[:3])} failed (exit {exit_code})"
                         + (f": {detail}" if detail else ""))


class CommandTimeout(CommandFailed):
    pass


class ConnectionFailed(BlocklinkError):
    """Attaching a volume failed; ``target`` says to what (portal/IQN, pool/image, WWPN)."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"cannot connect to {target}: {reason}")


class AuthenticationFailed(ConnectionFailed):
    """The target refused our credentials (CHAP, cephx)."""


class MissingCredentials(ConnectionFailed):
    """No credentials for the target were given or found on this host (``looked`` lists where)."""

    def __init__(self, target: str, reason: str, looked: Sequence[str] = ()) -> None:
        self.looked = tuple(looked)
        super().__init__(target, reason + (f" (looked in {', '.join(self.looked)})" if self.looked else ""))


class AuthenticationUnsupported(ConnectionFailed):
    """The connection info requires an authentication this kernel cannot do (NVMe DH-HMAC-CHAP on a
    kernel without NVME_HOST_AUTH, e.g. Debian's 6.1); nothing was attempted."""


class VolumeNotFound(ConnectionFailed):
    """The target answered but has no such volume/image/LUN (or not for this initiator)."""


class DeviceNotFound(BlocklinkError):
    def __init__(self, what: str, waited: float = 0.0) -> None:
        self.what = what
        self.waited = waited
        super().__init__(f"device for {what} did not appear" + (f" within {waited:.1f}s" if waited else ""))


class DeviceMismatch(BlocklinkError):
    """A device exists but belongs to a different volume: never hand it out (nor detach it).

    ``expected`` and ``found`` identify the volumes by ``what`` (a WWN for SCSI, the image or volume
    name for RBD and userspace attachments)."""

    def __init__(self, device: str, expected: str, found: str, what: str = "WWN") -> None:
        self.device = device
        self.expected = expected
        self.found = found
        self.what = what
        super().__init__(f"device {device} has {what} {found!r}, expected {expected!r}")


class DeviceBusy(BlocklinkError):
    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        self.reason = reason
        super().__init__(f"device {device} is busy: {reason}")


class DetachIncomplete(BlocklinkError):
    """A forced disconnect continued past failures; ``failures`` lists what was left undone."""

    def __init__(self, what: str, failures: Sequence[str]) -> None:
        self.what = what
        self.failures = tuple(failures)
        super().__init__(f"disconnect of {what} left {len(self.failures)} problem(s): "
                         + "; ".join(self.failures))


class TargetError(BlocklinkError):
    """A target helper could not change the target's configuration; ``target`` names it."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"target {target}: {reason}")


class ExportNotFound(TargetError):
    pass


class HypervisorError(BlocklinkError):
    def __init__(self, domain: str, reason: str) -> None:
        self.domain = domain
        self.reason = reason
        super().__init__(f"domain {domain}: {reason}")


class MissingDependency(BlocklinkError, ImportError):
    """An optional binding (rados, rbd, libvirt, rtslib_fb) is needed for this call but not installed."""

    def __init__(self, module: str, hint: str) -> None:
        self.module = module
        super().__init__(f"{module} is required for this operation: {hint}")


# ---------------------------------------------------------------------------------------------
# protocol- and layer-specific errors (defined here so ``from blocklink import X`` finds them all;
# the modules that raise them re-export them under their old import paths)
# ---------------------------------------------------------------------------------------------

class MultipathdNotRunning(BlocklinkError):
    def __init__(self) -> None:
        super().__init__("enforce_multipath is set but multipathd is not running")


class RbdIOError(ConnectionFailed, OSError):
    """librbd failed an I/O on an open handle (OSD unreachable, op timeout, client blocklisted).

    A :class:`ConnectionFailed` naming the image, and an :class:`OSError` for file-object callers;
    ``errno`` is librbd's (e.g. ``ETIMEDOUT``) when it gave one."""

    def __init__(self, target: str, reason: str, errno: Optional[int] = None) -> None:
        super().__init__(target, reason)
        self.errno = errno  # OSError's own slot: callers test e.errno as for any file I/O error
        self.args = (f"I/O on {target} failed: {reason}",)

    def __str__(self) -> str:
        return str(self.args[0])


class QmpError(BlocklinkError):
    """A QMP command failed or the monitor could not be reached; ``command`` names it."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        self.command = command
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"QMP {command}: {error_class}: {desc}")


class DaemonDied(ConnectionFailed):
    """The qemu-storage-daemon serving a volume is gone (or no longer answers its monitor)."""

    def __init__(self, target: str, reason: str, pid: Optional[int] = None) -> None:
        self.pid = pid
        super().__init__(target, reason)


class LioError(Exception):
    """Raised inside the privileged LIO functions; plain string args so oslo.privsep can carry it back
    (deliberately not a :class:`BlocklinkError`: callers see the typed error it is translated to)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message


class TgtAdmError(TargetError):
    """tgtd refused a request; ``code`` is tgtd's error name (``NO_TARGET``, ``USER_EXIST``, ...)."""

    def __init__(self, target: str, code: str, message: str) -> None:
        self.code = code
        super().__init__(target, message)


class SecretError(HypervisorError):
    """libvirt refused to define, set or remove a secret; ``secret`` names it (UUID or usage)."""

    def __init__(self, secret: str, reason: str) -> None:
        self.secret = secret
        self.domain = ""
        self.reason = reason
        Exception.__init__(self, f"libvirt secret {secret}: {reason}")


class InvalidDiskConfig(InvalidConnectionInfo):
    """A disk option or a value bound for the ``<disk>`` XML is invalid; ``field`` names it."""


class TooManyDevices(InvalidDiskConfig):
    """No free device name (or SCSI unit) is left on the bus."""


class SchemaError(InvalidDiskConfig):
    """The XML does not match libvirt's grammar; ``field`` is the element path, ``reason`` lxml's message."""


class VolumeBusy(BlocklinkError):
    def __init__(self, volume_id: str, holder: str) -> None:
        self.volume_id = volume_id
        self.holder = holder
        super().__init__(f"volume {volume_id} is already attached or being attached ({holder}) and is not multiattach")


class StaleRecord(BlocklinkError):
    def __init__(self, attachment_id: str, expected: Sequence[str], found: str) -> None:
        super().__init__(f"attachment {attachment_id} is {found!r}, expected {'/'.join(expected)}")


class AttachFailed(BlocklinkError):
    """Attach failed at ``step``; every earlier step was undone (``undo_failures`` lists what was not)."""

    def __init__(self, step: str, cause: BaseException, undo_failures: Sequence[str] = ()) -> None:
        self.step = step
        self.cause = cause
        self.undo_failures = tuple(undo_failures)
        msg = f"attach failed at step {step!r}: {type(cause).__name__}: {mask_text(str(cause))}"
        if self.undo_failures:
            msg += f"; rollback left: {'; '.join(self.undo_failures)}"
        super().__init__(msg)


class DetachFailed(BlocklinkError):
    def __init__(self, step: str, cause: BaseException) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"detach failed at step {step!r}: {type(cause).__name__}: {mask_text(str(cause))}")


class PathRefused(BlocklinkError, ValueError):
    """A privileged operation was asked for ``path``, which is not inside ``root``, the one tree that
    operation may touch (checked after resolving symlinks); nothing was done."""

    def __init__(self, path: str, root: str) -> None:
        self.path = path
        self.root = root
        super().__init__(path, root)  # args as given: oslo.privsep re-raises it as PathRefused(*args)

    def __str__(self) -> str:
        return f"refusing a privileged operation on {self.path!r}: only paths inside {self.root} are allowed"


# ---------------------------------------------------------------------------------------------
# staging (blocklink.staging): each names the device, the path and what was found
# ---------------------------------------------------------------------------------------------

class StagingError(BlocklinkError):
    """Base: ``device`` (a /dev path or None), ``path`` (staging or target path), ``found`` (what we saw)."""

    def __init__(self, device: Optional[str], path: Optional[str], found: str, message: str) -> None:
        self.device = device
        self.path = path
        self.found = found
        super().__init__(message)


class ForeignSignature(StagingError):
    """The device carries data that is not a ``fs_type`` filesystem (another filesystem, LUKS, a partition
    table, LVM, RAID): it is never formatted and never mounted as ``fs_type``."""

    def __init__(self, device: str, path: str, found: str, wanted: str) -> None:
        self.wanted = wanted
        super().__init__(device, path, found,
                         f"refusing to stage {device} on {path} as {wanted}: it holds {found} (never formatted)")


class ProbeFailed(StagingError):
    """Whether the device is blank could not be decided: nothing is formatted."""

    def __init__(self, device: str, path: str, found: str) -> None:
        super().__init__(device, path, found, f"cannot tell whether {device} is blank (for {path}): {found}")


class DeviceInUse(StagingError):
    """The device is claimed by something else (a dm/md holder, an exclusive opener, another mount)."""

    def __init__(self, device: str, path: str, found: str) -> None:
        super().__init__(device, path, found, f"{device} (for {path}) is in use: {found}")


class MountConflict(StagingError):
    """Something other than what was asked is mounted at ``path``."""

    def __init__(self, device: Optional[str], path: str, found: str) -> None:
        super().__init__(device, path, found,
                         f"{path} already has {found} mounted" + (f" (wanted {device})" if device else ""))


class NotStaged(StagingError):
    """``path`` is not a staged volume (nothing mounted there, or not a whole filesystem)."""

    def __init__(self, path: str, found: str, device: Optional[str] = None) -> None:
        super().__init__(device, path, found, f"{path} is not a staged volume: {found}")


class MountBusy(StagingError):
    """The mount cannot be undone while processes use it; ``holders`` are ``pid N (comm)`` strings."""

    def __init__(self, device: Optional[str], path: str, holders: Sequence[str], extra: str = "") -> None:
        self.holders = tuple(holders)
        found = ", ".join(self.holders) or "no process found (a kernel user or another mount)"
        super().__init__(device, path, found,
                         f"{path} ({device or 'no device'}) is busy: {found}" + (f"; {extra}" if extra else ""))


class StillPublished(StagingError):
    """Unstaging while the filesystem is still bind-mounted at publish targets."""

    def __init__(self, device: Optional[str], path: str, targets: Sequence[str]) -> None:
        self.targets = tuple(targets)
        super().__init__(device, path, ", ".join(self.targets),
                         f"{path} ({device}) is still published at {', '.join(self.targets)}")


class FilesystemCheckFailed(StagingError):
    """fsck found errors it could not fix unattended: the filesystem is not mounted."""

    def __init__(self, device: str, path: str, found: str) -> None:
        super().__init__(device, path, found, f"filesystem check of {device} (for {path}) failed: {found}")


class StagingCommandFailed(StagingError):
    """mkfs, mount, umount or a grow tool failed; ``found`` is its exit status and message."""

    def __init__(self, action: str, device: Optional[str], path: str, found: str) -> None:
        self.action = action
        super().__init__(device, path, found, f"{action} of {device or path} at {path} failed: {found}")


# ---------------------------------------------------------------------------------------------
# host-side encryption (blocklink.encryption): never a passphrase in any of them
# ---------------------------------------------------------------------------------------------

class EncryptionError(BlocklinkError):
    """cryptsetup failed in a way no narrower class describes; ``device`` names what it worked on."""

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        self.reason = reason
        super().__init__(f"encryption of {device}: {reason}")


class InvalidEncryption(InvalidConnectionInfo):
    """An encryption dict or option is malformed; ``field`` names it (``encryption.cipher``)."""


class WrongKey(EncryptionError):
    """No keyslot of the LUKS header opens with the given key."""

    def __init__(self, device: str) -> None:
        super().__init__(device, "no keyslot opens with this key")


class FormatRefused(EncryptionError):
    """The device was not formatted: ``found`` says what it carries (or why a blank one was not)."""

    def __init__(self, device: str, found: str) -> None:
        self.found = found
        EncryptionError.__init__(self, device, f"refusing to format: {found}")


class NotLuks(EncryptionError):
    """An operation that needs a LUKS header (key rotation) found none; ``found`` says what is there."""

    def __init__(self, device: str, found: str) -> None:
        self.found = found
        EncryptionError.__init__(self, device, f"not a LUKS volume: {found}")


class MappingConflict(EncryptionError):
    """The mapping name for this volume is already open on another device."""

    def __init__(self, mapping: str, expected: str, found: str) -> None:
        self.mapping = mapping
        self.expected = expected
        self.found = found
        EncryptionError.__init__(self, f"/dev/mapper/{mapping}", f"open on {found}, not on {expected}")


class EncryptionBusy(DeviceBusy):
    """The dm-crypt mapping is in use; ``reason`` names the holders (``pid N (comm)``, mounts, holders)."""


class KeyNotFound(BlocklinkError, LookupError):
    """The key manager has no key with this id."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(f"no key with id {key_id!r}")
