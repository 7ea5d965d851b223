"""Attach traces: every connect/disconnect/attach step as one structured event, through one hook.

Instrumented code wraps a step in ``with span("login", iqn=..., portal=...):``. When the step ends
an :class:`TraceEvent` (step, wall-clock start, duration, outcome, the error's type, the ids, and
its place in the tree of spans) goes to every hook added with :func:`add_hook` and to the
``blocklink.trace`` logger at DEBUG with ``extra={"trace": event.to_dict()}``. Nesting follows the
calling context (a :mod:`contextvars` variable), so worker threads started with a copied context
nest under the span that started them.

Ids are for finding things (IQNs, portals, volume ids, device names), never secrets: a
:class:`~blocklink.masking.Secret` value or a key that names a secret is recorded as ``***`` and
every value passes :func:`~blocklink.masking.mask_text`. An error is recorded by type name only
(its text may carry anything).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, Dict, Iterator, List, Optional, Type

from blocklink.masking import MASK, Secret, mask_text

LOG = logging.getLogger("blocklink.trace")

Hook = Callable[["TraceEvent"], None]

_hooks: List[Hook] = []
_hooks_lock = threading.Lock()
_ids = itertools.count(1)
_current: "contextvars.ContextVar[Optional[Span]]" = contextvars.ContextVar("blocklink_trace_span", default=None)
_SECRET_WORDS = ("password", "secret", "key", "token", "chap")


@dataclass(frozen=True)
class TraceEvent:
    """One finished step. ``start`` is epoch seconds, ``duration`` seconds; ``depth`` 0 is a
    top-level step (no enclosing span), ``parent`` the enclosing span's ``span_id``."""

    step: str
    start: float
    duration: float
    outcome: str  # "ok" or "error"
    ids: Dict[str, str] = field(default_factory=dict)
    error: Optional[str] = None  # the exception's type name
    span_id: int = 0
    parent: Optional[int] = None
    depth: int = 0
    thread: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__, ids=dict(self.ids))


def _safe_ids(ids: Dict[str, Any]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in ids.items():
        if v is None:
            continue
        if isinstance(v, Secret) or any(w in k.lower() for w in _SECRET_WORDS):
            out[k] = MASK
        else:
            out[k] = mask_text(str(v))
    return out


def add_hook(hook: Hook) -> Callable[[], None]:
    """Call ``hook(event)`` for every finished span (any thread); returns the function removing it.
    A hook that raises is logged and otherwise ignored: tracing never changes an outcome."""
    with _hooks_lock:
        _hooks.append(hook)

    def remove() -> None:
        with _hooks_lock:
            if hook in _hooks:
                _hooks.remove(hook)

    return remove


@contextlib.contextmanager
def collect() -> Iterator[List[TraceEvent]]:
    """Collect the events finished inside the block (from every thread) into the yielded list."""
    events: List[TraceEvent] = []
    mu = threading.Lock()

    def hook(ev: TraceEvent) -> None:
        with mu:
            events.append(ev)

    remove = add_hook(hook)
    try:
        yield events
    finally:
        remove()


def _emit(ev: TraceEvent) -> None:
    with _hooks_lock:
        hooks = list(_hooks)
    for h in hooks:
        try:
            h(ev)
        except Exception:  # a broken hook must not break an attach
            LOG.exception("trace hook %r failed", h)
    if LOG.isEnabledFor(logging.DEBUG):
        LOG.debug("%s %s in %.3fs", ev.step, ev.outcome, ev.duration, extra={"trace": ev.to_dict()})


class Span:
    """A step being timed; use :func:`span` (a context manager) or :meth:`start`/:meth:`finish`."""

    def __init__(self, step: str, ids: Dict[str, Any]) -> None:
        self.step = step
        self.ids = _safe_ids(ids)
        self.span_id = next(_ids)
        self._token: Optional[contextvars.Token[Optional[Span]]] = None
        self._t0 = 0.0
        self._wall = 0.0
        self.parent: Optional[Span] = None
        self.depth = 0

    def start(self) -> "Span":
        self.parent = _current.get()
        self.depth = 0 if self.parent is None else self.parent.depth + 1
        self._token = _current.set(self)
        self._wall = time.time()
        self._t0 = time.monotonic()
        return self

    def finish(self, error: Optional[BaseException] = None) -> None:
        duration = time.monotonic() - self._t0
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:  # finished in another context than started: just step out
                _current.set(self.parent)
            self._token = None
        _emit(TraceEvent(step=self.step, start=self._wall, duration=duration,
                         outcome="ok" if error is None else "error", ids=self.ids,
                         error=None if error is None else type(error).__name__, span_id=self.span_id,
                         parent=self.parent.span_id if self.parent is not None else None, depth=self.depth,
                         thread=threading.current_thread().name))

    def __enter__(self) -> "Span":
        return self.start()

    def __exit__(self, et: Optional[Type[BaseException]], ev: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.finish(ev)


def span(step: str, **ids: Any) -> Span:
    """``with span("login", iqn=iqn, portal=addr):`` times the block as step ``login``."""
    return Span(step, ids)


class Phases:
    """Consecutive steps of one sequence, each a span: ``current = phases.begin("export")`` ends the
    previous step (ok) and starts the next; :meth:`end` ends the last (with the error, if any)."""

    def __init__(self, **ids: Any) -> None:
        self.ids = ids
        self._open: Optional[Span] = None

    def begin(self, step: str, **ids: Any) -> str:
        self.end()
        self._open = Span(step, dict(self.ids, **ids)).start()
        return step

    def end(self, error: Optional[BaseException] = None) -> None:
        if self._open is not None:
            s, self._open = self._open, None
            s.finish(error)


def run_in_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` bound to a copy of the caller's context: hand it to a worker thread so the spans it
    opens nest under the caller's current span."""
    ctx = contextvars.copy_context()
    return lambda *a, **kw: ctx.run(fn, *a, **kw)


def format_events(events: List[TraceEvent]) -> List[str]:
    """Human lines, one per span, in start order, the step indented by depth:
    ``   0.123s  ok      login  iqn=...``."""
    lines = []
    for ev in sorted(events, key=lambda e: (e.start, e.depth)):
        ids = " ".join(f"{k}={v}" for k, v in ev.ids.items())
        status = ev.outcome if ev.error is None else f"{ev.outcome}({ev.error})"
        lines.append(f"{ev.duration:9.3f}s  {status:<5} {'  ' * ev.depth}{ev.step}" + (f"  {ids}" if ids else ""))
    return lines


def top_level_seconds(events: List[TraceEvent]) -> float:
    """Sum of the durations of the depth-0 spans (what a wall-clock comparison should use)."""
    return sum(e.duration for e in events if e.depth == 0)


__all__ = ["Hook", "Phases", "Span", "TraceEvent", "add_hook", "collect", "format_events", "run_in_context", "span",
           "top_level_seconds"]
