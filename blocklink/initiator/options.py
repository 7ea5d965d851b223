"""Connector options: one name per meaning across protocols, checked the same way everywhere.

Names shared by the connectors (same meaning, same default where a default is shared):

- ``timeout``: seconds to wait for a volume's device(s) to appear;
- ``use_multipath``: attach every path of the volume (dm-multipath for SCSI, native NVMe multipath);
  ``False`` by default, as os-brick's factory;
- ``flush_timeout``: seconds a multipath map may take to flush before a detach gives up on it;
- ``lock_path``: directory of the inter-process lock files.

Renamed options are still accepted for one release with a :class:`DeprecationWarning`; an unknown
option or a bad value raises :class:`~blocklink.errors.InvalidOption`.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any, Collection, Dict, Mapping, TypeVar

from blocklink.errors import InvalidOption

# old name -> current name
RENAMED_OPTIONS: Mapping[str, str] = {
    "device_timeout": "timeout",
    "flush_retry_seconds": "flush_timeout",
}

T = TypeVar("T")


def fold_renamed(owner: str, legacy: Mapping[str, Any], current: Dict[str, Any]) -> Dict[str, Any]:
    """``current`` with deprecated names from ``legacy`` folded in (each warns once per call).

    ``legacy`` is what a constructor caught in ``**legacy``: anything not a known old name of one of
    ``current``'s options is an unknown option.
    """
    out = dict(current)
    for old, value in legacy.items():
        new = RENAMED_OPTIONS.get(old)
        if new is None or new not in current:
            raise InvalidOption(old, f"{owner} has no such option")
        warnings.warn(f"{owner}: option {old!r} is deprecated, use {new!r}", DeprecationWarning,
                      stacklevel=_caller_level())
        out[new] = value
    return out


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller_level() -> int:
    """warnings' stacklevel of the first frame outside blocklink (the code that passed the old name),
    however many constructors (subclass, base class) sit in between."""
    frame = sys._getframe(1)  # fold_renamed
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR + os.sep):
        frame = frame.f_back
        level += 1
    return level


def seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite, positive (or zero if allowed) number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOption(name, f"expected a number of seconds, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InvalidOption(name, f"expected a positive number of seconds, got {value!r}")
    return v


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidOption(name, f"expected True or False, got {value!r}")
    return value


def count(name: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidOption(name, f"expected an integer >= {minimum}, got {value!r}")
    return value


def choice(name: str, value: T, choices: Collection[T]) -> T:
    if value not in choices:
        raise InvalidOption(name, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
