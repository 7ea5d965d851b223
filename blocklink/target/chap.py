"""CHAP credentials for target helpers: generated with :mod:`secrets`, validated when supplied.

Generated user names and secrets use Cinder's alphabet (no 0/O, 1/l/I look-alikes), so they
survive being read aloud or typed, and contain nothing a config file or tgtd's ``k=v,k=v`` wire
format would have to escape. The secret is a :class:`~blocklink.masking.Secret`: it prints as
``***`` and reaches text only through an explicit ``reveal()``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from blocklink.errors import InvalidConnectionInfo
from blocklink.masking import Secret

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
USERNAME_LENGTH = 20
PASSWORD_LENGTH = 16  # the floor for generated secrets (Cinder's default length)
DEFAULT_PASSWORD_LENGTH = 20  # 20 * log2(57) = 117 bits, above RFC 3720's 96-bit advice
MIN_PASSWORD = 12     # what common initiators (Microsoft, some HBAs) accept as the lower bound
MAX_LEN = 255

# what a user-supplied name or secret may contain: printable, no whitespace, no ',' '=' (tgtd's
# request format), no quotes or backslash (config files), no '%' '@' '/' (iscsi:// URLs)
_CHAP_RE = re.compile(r"^[A-Za-z0-9._~+\-:!#$^*()\[\]{}|;?]+$")


# bytes below this are used (b % 57 is then uniform); the rest are dropped (rejection sampling)
_UNIFORM_BELOW = 256 - 256 % len(ALPHABET)


def random_string(length: int) -> str:
    """``length`` characters of ALPHABET, uniformly, from the OS CSPRNG: one read for all of them
    (``secrets.choice`` per character read the random source once per character)."""
    out: List[str] = []
    while len(out) < length:
        out += [ALPHABET[b % len(ALPHABET)] for b in secrets.token_bytes(2 * length) if b < _UNIFORM_BELOW]
    return "".join(out[:length])


def check_chap_username(v: Any, where: str = "chap.username") -> str:
    if not isinstance(v, str) or not v:
        raise InvalidConnectionInfo(where, "expected a non-empty string")
    if len(v) > MAX_LEN or not _CHAP_RE.match(v):
        raise InvalidConnectionInfo(where, "may contain only printable characters without spaces, quotes, "
                                           "',' '=' '%' '@' '/' and at most 255 of them")
    return v


def check_chap_password(v: Union[Secret, str, None], where: str = "chap.password") -> Secret:
    if isinstance(v, str):
        v = Secret(v)
    if not isinstance(v, Secret):
        raise InvalidConnectionInfo(where, "expected a string")
    text = v.reveal()
    if not MIN_PASSWORD <= len(text) <= MAX_LEN:
        raise InvalidConnectionInfo(where, f"must be {MIN_PASSWORD} to {MAX_LEN} characters long")
    if not _CHAP_RE.match(text):
        raise InvalidConnectionInfo(where, "contains a character that is not allowed (space, quote, ',', '=', ...)")
    return v


@dataclass(frozen=True)
class ChapCredentials:
    """One CHAP identity: what the initiator proves (incoming) or what the target proves (mutual)."""

    username: str
    password: Secret

    def __post_init__(self) -> None:
        check_chap_username(self.username)
        object.__setattr__(self, "password", check_chap_password(self.password))

    @classmethod
    def generate(cls, password_length: int = DEFAULT_PASSWORD_LENGTH, username_length: int = USERNAME_LENGTH) -> "ChapCredentials":
        if password_length < PASSWORD_LENGTH:
            raise InvalidConnectionInfo("password_length", f"at least {PASSWORD_LENGTH} characters")
        return cls(random_string(username_length), Secret(random_string(password_length)))

    @classmethod
    def coerce(cls, v: Any, where: str = "chap") -> Optional["ChapCredentials"]:
        """``None``, a ChapCredentials, a ``(user, password)`` pair or a ``{"username", "password"}`` dict."""
        if v is None or isinstance(v, ChapCredentials):
            return v
        if isinstance(v, (tuple, list)) and len(v) == 2:
            return cls(check_chap_username(v[0], f"{where}.username"),
                       check_chap_password(v[1], f"{where}.password"))
        if isinstance(v, dict):
            return cls(check_chap_username(v.get("username"), f"{where}.username"),
                       check_chap_password(v.get("password"), f"{where}.password"))
        raise InvalidConnectionInfo(where, "expected (username, password) or a dict with both")

    def to_dict(self, reveal: bool = False) -> Dict[str, str]:
        return {"username": self.username, "password": self.password.reveal() if reveal else str(self.password)}

    def __repr__(self) -> str:
        return f"ChapCredentials(username={self.username!r}, password=***)"
