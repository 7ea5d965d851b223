"""What a benchmark hands back: rows of samples per implementation, notes, and what was not run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional

BLOCKLINK = "blocklink"
OSBRICK = "os-brick"
FLOOR = "floor"
IMPLS = (BLOCKLINK, OSBRICK, FLOOR)


@dataclass
class Row:
    """One metric measured on up to three implementations, on the same host, in the same run.

    ``samples`` maps an implementation (``blocklink``, ``os-brick``, ``floor``) to its repetitions.
    ``floor`` is the bare minimum the job needs (raw librbd, raw iscsiadm, raw tgtadm/rtslib calls).
    """

    benchmark: str
    metric: str
    unit: str
    higher_is_better: bool = False
    samples: Dict[str, List[float]] = field(default_factory=dict)
    note: str = ""
    chart: bool = True  # counts (child processes) have no place on a log-ratio chart

    def add(self, impl: str, value: float) -> None:
        if impl not in IMPLS:
            raise ValueError(f"unknown implementation {impl!r}")
        self.samples.setdefault(impl, []).append(float(value))


@dataclass
class NotRun:
    benchmark: str
    reason: str


@dataclass
class Outcome:
    """Everything one benchmark module produced."""

    name: str
    title: str
    rows: List[Row] = field(default_factory=list)
    not_run: List[NotRun] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # Markdown paragraphs: method, details
    seconds: float = 0.0
    load_before: Optional[List[float]] = None
    load_after: Optional[List[float]] = None

    def row(self, metric: str, unit: str, higher_is_better: bool = False, note: str = "",
            chart: bool = True) -> Row:
        r = Row(self.title, metric, unit, higher_is_better, note=note, chart=chart)
        self.rows.append(r)
        return r

    def skip(self, reason: str, what: Optional[str] = None) -> None:
        self.not_run.append(NotRun(what or self.title, reason))

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Outcome":
        rows = [Row(**r) for r in d.get("rows", [])]
        not_run = [NotRun(**n) for n in d.get("not_run", [])]
        rest = {k: v for k, v in d.items() if k not in ("rows", "not_run")}
        return cls(rows=rows, not_run=not_run, **rest)
