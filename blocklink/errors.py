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

    A :class:`ConnectionFailed` naming the image, and an :class:`OSError` for file-object callers."""


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
