"""One exception hierarchy, rooted at :class:`BlocklinkError`.

Every error names what failed (a field, a device, a target, a command) so a caller can act on it
without parsing prose. Messages never contain secrets: values that could be secret are masked by
the code raising the error (see :mod:`blocklink.masking`).
"""

from __future__ import annotations

from typing import Optional, Sequence


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


class VolumeNotFound(ConnectionFailed):
    """The target answered but has no such volume/image/LUN (or not for this initiator)."""


class DeviceNotFound(BlocklinkError):
    def __init__(self, what: str, waited: float = 0.0) -> None:
        self.what = what
        self.waited = waited
        super().__init__(f"device for {what} did not appear" + (f" within {waited:.1f}s" if waited else ""))


class DeviceMismatch(BlocklinkError):
    """A device exists but belongs to a different volume (WWN mismatch): never hand it out."""

    def __init__(self, device: str, expected: str, found: str) -> None:
        self.device = device
        self.expected = expected
        self.found = found
        super().__init__(f"device {device} has WWN {found!r}, expected {expected!r}")


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


class PathRefused(BlocklinkError, ValueError):
    """A privileged operation was asked for ``path``, which is not inside ``root``, the one tree that
    operation may touch (checked after resolving symlinks); nothing was done."""

    def __init__(self, path: str, root: str) -> None:
        self.path = path
        self.root = root
        super().__init__(path, root)  # args as given: oslo.privsep re-raises it as PathRefused(*args)

    def __str__(self) -> str:
        return f"refusing a privileged operation on {self.path!r}: only paths inside {self.root} are allowed"
