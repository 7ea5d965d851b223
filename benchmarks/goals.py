"""The performance goals a report is held to (issue 22), each checked against the rows of one run.

A goal names one row (benchmark title + words its metric contains), the implementation it is measured
against (the floor or os-brick) and the least "times better" blocklink must reach there: per-round
ratios when the row is paired, so load drift cancels; 1/1.5 reads "at most 1.5× slower". A goal whose
row did not run says so instead of passing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from benchmarks.model import FLOOR, OSBRICK, Outcome, Row
from benchmarks.report import markdown_table, versus_summary
from benchmarks.stats import Summary


@dataclass(frozen=True)
class Goal:
    name: str                     # the row as the issue names it
    benchmark: str                # Outcome title
    metric_words: Tuple[str, ...]  # every one appears in the metric's name
    versus: str                   # FLOOR or OSBRICK
    at_least: float               # "times better" (median); below 1: that much worse at most
    wanted: str                   # the goal in words
    p10_at_least: Optional[float] = None

    def rows(self, outcomes: Sequence[Outcome]) -> List[Row]:
        return [r for o in outcomes for r in o.rows
                if r.benchmark == self.benchmark and all(w in r.metric for w in self.metric_words)]


USERSPACE = "userspace attach throughput"
GOALS: Tuple[Goal, ...] = (
    *(Goal(f"userspace attach, {proto}, sequential 1 MiB O_DIRECT {op}, vs direct", USERSPACE,
           (proto, f"sequential {op}", "1 MiB O_DIRECT"), FLOOR, 0.8, "≥ 0.8× of direct")
      for proto in ("rbd", "iscsi") for op in ("write", "read")),
    Goal("iSCSI, detach 16 volumes at once, vs floor", "iSCSI attach/detach (guest)", ("detach", "volumes at once"),
         FLOOR, 1 / 1.5, "≤ 1.5× slower"),
    Goal("iSCSI, detach one volume, vs floor", "iSCSI attach/detach (guest)", ("detach one",),
         FLOOR, 1 / 1.2, "≤ 1.2× slower"),
    Goal("LIO, create_export + initialize_connection, vs rtslib-fb direct", "target side",
         ("LIO", "create_export"), FLOOR, 1.0, "≤ 1.0× (not slower)"),
    Goal("RBD handle, 4 KiB random read, vs raw librbd", "RBD handle I/O", ("random read", "4 KiB"),
         FLOOR, 0.95, "≥ 0.95× with p10 ≥ 0.9", p10_at_least=0.9),
    *(Goal(f"attach flow end to end (reserve → hot-plug), {proto}, vs the bare sequence",
           "attach flow end to end (libvirt + QEMU TCG)", (proto, "attach (reserve"), FLOOR, 1 / 1.3, "≤ 1.3× slower")
      for proto in ("iSCSI", "RBD")),
    Goal("Nova's iSCSI driver attach, facade vs os-brick", "Nova iSCSI volume driver (guest)",
         (".connect_volume",), OSBRICK, 3.0, "≥ 3× faster"),  # the dot: not disconnect_volume
    Goal("Nova's iSCSI driver detach, facade vs os-brick", "Nova iSCSI volume driver (guest)",
         (".disconnect_volume",), OSBRICK, 2.0, "≥ 2× faster"),
)


def times(adv: float, higher_is_better: bool) -> str:
    """1.45 -> '1.45× faster'; 0.69 -> '1.45× slower' (or higher/lower for throughput)."""
    good, bad = ("higher", "lower") if higher_is_better else ("faster", "slower")
    return f"{adv:.2f}× {good}" if adv >= 1 else f"{1 / adv:.2f}× {bad}"


def met(goal: Goal, s: Summary) -> bool:
    return s.median >= goal.at_least and (goal.p10_at_least is None or s.p10 >= goal.p10_at_least)


def goal_rows(outcomes: Sequence[Outcome], goals: Sequence[Goal] = GOALS) -> List[List[str]]:
    out = []
    for g in goals:
        rows = g.rows(outcomes)
        if not rows:
            out.append([g.name, "–", "not measured in this run", g.wanted, "**not measured**"])
            continue
        for r in rows:
            s = versus_summary(r, g.versus)
            if s is None:
                out.append([g.name, r.metric, f"no {g.versus} samples", g.wanted, "**not measured**"])
                continue
            spread = "" if s.n == 1 or s.p10 == s.p90 else f", p10–p90 {s.p10:.2f}–{s.p90:.2f}"
            out.append([g.name, r.metric,
                        f"{times(s.median, r.higher_is_better)} vs {g.versus} ({s.median:.2f}× as good{spread})",
                        g.wanted, "met" if met(g, s) else "**missed**"])
    return out


def section(outcomes: Sequence[Outcome]) -> List[str]:
    """The report's goals section: one line per goal row (a goal matching several rows lists each)."""
    return ["## Goals (issue 22)", "",
            "Each goal row's ratio is blocklink against the implementation named, from the same run's "
            "per-round ratios (\"as good\": the other's time / blocklink's, or blocklink's throughput / the "
            "other's; 1 = equal); misses are explained in benchmarks/README.md.", "",
            markdown_table(["goal", "metric", "measured", "goal", "status"], goal_rows(outcomes))]
