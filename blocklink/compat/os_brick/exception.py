"""os-brick's exception classes, each also a blocklink error so both catch styles work.

``except os_brick.exception.VolumeDeviceNotFound`` (Nova) and ``except blocklink.errors.DeviceNotFound``
catch the same failure. :func:`translate` turns an error a blocklink connector raised into the
os-brick class that names the same condition, keeping the original as ``__cause__`` and ``cause``.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

from blocklink import errors

LOG = logging.getLogger(__name__)


class BrickException(errors.BlocklinkError):
    """os-brick's base: ``message`` is a %-template filled from the keyword arguments; ``msg`` the text."""

    message = "An unknown exception occurred."
    code = 500
    headers: dict = {}
    safe = False

    def __init__(self, message: Optional[str] = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.kwargs.setdefault("code", self.code)
        self.cause: Optional[BaseException] = None
        if not message:
            try:
                message = self.message % kwargs
            except (KeyError, TypeError, ValueError):
                message = self.message  # a template the caller's keywords do not fill: keep the bare text
        self.msg = message
        Exception.__init__(self, message)  # not the blocklink classes' own constructors: their args differ


class NotFound(BrickException):
    message = "Resource could not be found."
    code = 404


class Invalid(BrickException, errors.InvalidConnectionInfo):
    message = "Unacceptable parameters."
    code = 400

    def __init__(self, message: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.field = str(kwargs.get("field", ""))
        self.reason = self.msg


class InvalidParameterValue(Invalid):
    message = "%(err)s"


class VolumeDeviceNotFound(BrickException, errors.DeviceNotFound):
    message = "Volume device not found at %(device)s."

    def __init__(self, message: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.what = str(kwargs.get("device", self.msg))
        self.waited = 0.0


class VolumePathsNotFound(BrickException):
    message = "Could not find any paths for the volume."


class VolumePathNotRemoved(BrickException, errors.DeviceBusy):
    message = "Volume path %(volume_path)s was not removed in time."


class NoFibreChannelHostsFound(BrickException):
    message = "We are unable to locate any Fibre Channel devices."


class NoFibreChannelVolumeDeviceFound(VolumeDeviceNotFound):
    message = "Unable to find a Fibre Channel volume device."


class ProtocolNotSupported(BrickException):
    message = "Connect to volume via protocol %(protocol)s not supported."


class TargetPortalNotFound(BrickException, errors.ConnectionFailed):
    message = "Unable to find target portal %(target_portal)s."


class TargetPortalsNotFound(TargetPortalNotFound):
    message = "Unable to find target portal in %(target_portals)s."


class FailedISCSITargetPortalLogin(BrickException, errors.ConnectionFailed):
    message = "Unable to login to iSCSI Target Portal"


class BlockDeviceReadOnly(BrickException):
    message = "Block device %(device)s is Read-Only."


class CommandExecutionFailed(BrickException, errors.CommandFailed):
    message = "Failed to execute command %(cmd)s"


class VolumeDriverException(BrickException):
    message = "An error occurred while IO to volume %(name)s."


class VolumeEncryptionNotSupported(Invalid):
    message = "Volume encryption is not supported for %(volume_type)s volume %(volume_id)s."


class EncryptionNotProvided(BrickException):
    """An encryption provider the facade does not implement (plain dm-crypt, out-of-tree classes)."""

    message = "volume encryption (%(what)s) is not provided by blocklink's os-brick facade"


class DeviceMismatch(BrickException, errors.DeviceMismatch):
    """blocklink's WWN check refused a device that belongs to another volume (no os-brick equivalent)."""


class InvalidConnectorProtocol(errors.UnknownProtocol, ValueError):
    """An unknown or unsupported protocol was given to the factory (a ValueError, as in os-brick)."""

    def __init__(self, protocol: str, known: Sequence[str] = ()) -> None:
        super().__init__(protocol, known)


class ExceptionChainer(BrickException):
    """Collects the failures of a series of steps and is raised once with all of them.

    Truthy when it holds at least one exception; ``context(catch, msg, *args)`` gives a context
    manager that records an exception (swallowing it when ``catch`` is true).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._exceptions: List[Tuple[Any, Any, Any]] = []
        self._catch = False
        self._log: Tuple[str, List[Any]] = ("", [])
        super().__init__(*args, **kwargs)

    def __repr__(self) -> str:
        parts = ("".join(traceback.format_exception(*e)).replace("\n", "\n\t") for e in self._exceptions)
        return "\n".join(f"\nChained Exception #{i + 1}\n\t{t}" for i, t in enumerate(parts))

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._exceptions)

    def add_exception(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self._exceptions.append((exc_type, exc_val, exc_tb))

    def context(self, catch_exception: bool, msg: str = "", *msg_args: Any) -> "ExceptionChainer":
        self._catch = catch_exception
        self._log = (msg, list(msg_args))
        return self

    def __enter__(self) -> "ExceptionChainer":
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool:
        if exc_type is None:
            return False
        self.add_exception(exc_type, exc_val, exc_tb)
        if self._log[0]:
            LOG.warning(self._log[0], *self._log[1])
        return self._catch


class DetachIncomplete(ExceptionChainer, errors.DetachIncomplete):
    """A forced disconnect continued past failures (os-brick raises its ExceptionChainer there)."""


# blocklink error class -> the os-brick class naming the same condition (first match wins)
_TRANSLATION: Tuple[Tuple[type, type], ...] = (
    (errors.DeviceMismatch, DeviceMismatch),
    (errors.DetachIncomplete, DetachIncomplete),
    (errors.DeviceNotFound, VolumeDeviceNotFound),
    (errors.VolumeNotFound, VolumeDeviceNotFound),
    (errors.ConnectionFailed, FailedISCSITargetPortalLogin),
    (errors.DeviceBusy, VolumePathNotRemoved),
    (errors.CommandFailed, CommandExecutionFailed),
    (errors.InvalidConnectionInfo, InvalidParameterValue),
)
_both: Dict[Tuple[type, type], type] = {}
_both_lock = threading.Lock()


def _both_class(brick: type, original: type) -> type:
    """A class that is both ``brick`` and ``original`` (named like ``brick``), made once per pair."""
    if issubclass(brick, original):
        return brick
    with _both_lock:
        cls = _both.get((brick, original))
        if cls is None:
            cls = type(brick.__name__, (brick, original), {"__module__": __name__, "__qualname__": brick.__qualname__})
            _both[(brick, original)] = cls
        return cls


def translate(e: BaseException, protocol: str = "") -> BaseException:
    """The os-brick exception for blocklink error ``e``: an instance of the os-brick class naming the
    same condition *and* of ``type(e)``, so ``except`` clauses of either library catch it. ``e``
    itself if it already is an os-brick error or is not a blocklink one."""
    if isinstance(e, (BrickException, InvalidConnectorProtocol)) or not isinstance(e, errors.BlocklinkError):
        return e
    brick: type = BrickException
    for source, target in _TRANSLATION:
        if isinstance(e, source):
            brick = target
            break
    if brick is FailedISCSITargetPortalLogin and protocol != "iscsi":
        brick = BrickException
    out = _both_class(brick, type(e))(str(e), device=getattr(e, "device", getattr(e, "what", "")))
    for attr, value in vars(e).items():  # the typed fields (device, expected, target, failures, ...)
        if not attr.startswith("_") and attr not in ("kwargs", "msg"):
            setattr(out, attr, value)
    if isinstance(out, ExceptionChainer):
        out.add_exception(type(e), e, e.__traceback__)
    out.cause = e
    out.__cause__ = e
    return out
