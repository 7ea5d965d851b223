"""Secrets: a value type that never prints itself, and masking for logs, argv and error text.

:class:`Secret` wraps CHAP passwords and cephx keys. ``str()``/``repr()`` give ``***``; only
:meth:`Secret.reveal` returns the value, so leaking one needs an explicit, greppable call.
Every revealed value is also remembered (bounded) so that :func:`mask_text` and the log filter
installed on the ``blocklink`` logger redact it even if it reaches a message some other way.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from collections import OrderedDict
from typing import Any, Iterable, Optional

MASK = "***"

_known_lock = threading.Lock()
_known: "OrderedDict[str, None]" = OrderedDict()
_KNOWN_MAX = 4096
_MIN_LEN = 4  # shorter values would mask innocent text; such secrets are rejected elsewhere anyway


def _remember(value: str) -> None:
    if len(value) < _MIN_LEN:
        return
    with _known_lock:
        _known[value] = None
        _known.move_to_end(value)
        while len(_known) > _KNOWN_MAX:
            _known.popitem(last=False)


class Secret:
    """A secret string. Compares by value (constant time); prints as ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("Secret value must be a str")
        self._value = value
        _remember(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:  # pickling (privsep channel) keeps the value
        return (Secret, (self._value,))


def reveal(value: "Secret | str | None") -> Optional[str]:
    if value is None:
        return None
    return value.reveal() if isinstance(value, Secret) else value


# key=value / key: value / "key": "value" / key value (iscsiadm -n name -v value) forms
_KEYS = (r"(?:auth_|discovery_auth_|node\.session\.auth\.|discovery\.sendtargets\.auth\.)?"
         r"(?:password|password_in|secret|key|keyring|chap_password|mutual_password)")
_PATTERNS = [
    re.compile(r"(?i)(['\"]?%s['\"]?\s*[:=]\s*['\"]?)([^'\"\s,}]+)" % _KEYS),
    re.compile(r"(?i)(%s\s+-v\s+)(\S+)" % _KEYS),
    re.compile(r"(?i)(--password\s+)(\S+)"),
    re.compile(r"(?i)(\bkey\s*=\s*)(\S+)"),
]


def mask_text(text: str, extra: Iterable[str] = ()) -> str:
    """Redact known secret values and ``password=...``-style fields from ``text``."""
    with _known_lock:
        values = list(_known)
    values.extend(v for v in extra if v and len(v) >= _MIN_LEN)
    # longest first so a secret containing another is masked whole
    for v in sorted(set(values), key=len, reverse=True):
        if v in text:
            text = text.replace(v, MASK)
    for pat in _PATTERNS:
        text = pat.sub(lambda m: m.group(1) + MASK, text)
    return text


def mask_argv(argv: Iterable[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for a in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if a in ("--password", "-v") and out and (a == "--password" or re.search(_KEYS, out[-1] or "")):
            out.append(a)
            hide_next = True
            continue
        out.append(mask_text(a))
    return out


class MaskingFilter(logging.Filter):
    """Formats the record's message once, masks it, and stores the result (no args left)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string: keep the template only
            msg = str(record.msg)
        record.msg = mask_text(msg)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
        return True


def get_logger(name: str) -> logging.Logger:
    """A logger under ``blocklink`` with the masking filter on it.

    Filters on a logger apply only to records created on that very logger, so each module's logger
    carries its own filter (handlers anywhere up the tree then see masked text).
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, MaskingFilter) for f in logger.filters):
        logger.addFilter(MaskingFilter())
    return logger
