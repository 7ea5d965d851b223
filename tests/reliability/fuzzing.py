"""The fuzz harness shared by the parser and hypervisor fuzz suites.

A :class:`Target` is one parser under fuzzing together with its VALID seeds: real inputs (recorded
outputs, vectors) and the known-correct result of each. The fuzz property has two halves:

- a valid seed parses, without error, to its known result (so a parser that always raises a typed
  error, or returns nothing, fails);
- any other input gives a typed error (:class:`~blocklink.errors.BlocklinkError`) or a well-formed
  result, the same one twice.

A violated property raises :class:`FuzzPropertyViolated` naming the target, what was wrong and the
input, never a bare ``AssertionError`` or a ``ZeroDivisionError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from blocklink.errors import BlocklinkError
from tests.reliability.results import RESULTS


class FuzzPropertyViolated(AssertionError):
    """A fuzz property failed (an AssertionError, so pytest and hypothesis report and shrink it)."""


def check(ok: Any, what: str, value: Any = None) -> None:
    """Raise :class:`FuzzPropertyViolated` with ``what`` (and the offending value) unless ``ok``."""
    if not ok:
        raise FuzzPropertyViolated(what if value is None else f"{what}: {value!r}"[:2000])


def strs(*values: Any) -> None:
    for v in values:
        check(isinstance(v, str), "expected a str", v)


def same(a: Any, b: Any) -> bool:
    """Equal results; an exception returned as a result is equal by type and text."""
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        return type(a) is type(b) and str(a) == str(b)
    return bool(a == b)


def _key(arg: Any) -> Any:
    try:
        hash(arg)
    except TypeError:
        return repr(arg)
    return arg


@dataclass
class Target:
    """One fuzz target: ``fn`` applied to an input; ``view`` turns its result into plain data that is
    compared with the known results of the ``valid`` seeds ((input, expected view) pairs)."""

    name: str
    fn: Callable[[Any], Any]
    valid: Sequence[Tuple[Any, Any]]
    validate: Optional[Callable[[Any], None]] = None
    view: Callable[[Any], Any] = lambda out: out
    _known: Dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.valid:
            raise ValueError(f"fuzz target {self.name!r} has no valid seeds")
        self._known = {_key(arg): expected for arg, expected in self.valid}

    def parse_valid(self, arg: Any, expected: Any) -> Any:
        """A valid seed must parse (no error at all) to its known result."""
        try:
            out = self.fn(arg)
        except Exception as e:  # noqa: BLE001 - any error on a valid input violates the property
            raise FuzzPropertyViolated(f"{self.name}: a valid seed raised {type(e).__name__}: {e}; "
                                       f"input {arg!r}"[:2000]) from e
        got = self.view(out)
        check(got == expected, f"{self.name}: a valid seed parsed to {got!r}, expected {expected!r}; input", arg)
        if self.validate is not None:
            self.validate(out)
        return out

    def fuzz(self, arg: Any) -> Any:
        """One case: a known seed parses to its known result; anything else gives a typed error or a
        valid result, the same one twice."""
        RESULTS.fuzzed(self.name)
        key = _key(arg)
        if key in self._known:
            return self.parse_valid(arg, self._known[key])
        try:
            out = self.fn(arg)
        except BlocklinkError:
            return None
        again = self.fn(arg)
        check(same(again, out), f"{self.name}: parsed twice to different results {out!r} / {again!r}; input", arg)
        if self.validate is not None:
            self.validate(out)
        return out


def check_valid_seeds(targets: Sequence[Target]) -> List[str]:
    """Every valid seed of every target parses to its known result; returns the names checked."""
    for t in targets:
        for arg, expected in t.valid:
            t.parse_valid(arg, expected)
    return [t.name for t in targets]
