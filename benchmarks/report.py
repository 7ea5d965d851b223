"""Turn benchmark outcomes into results.json, report.md (Markdown table) and the printed table."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from benchmarks.model import BLOCKLINK, FLOOR, OSBRICK, Outcome, Row
from benchmarks.stats import Summary, advantage, paired_advantage, paired_ratios, ratio, summarize

HEADER = ["benchmark", "metric", "unit", "blocklink median [p10–p90]", "os-brick median [p10–p90]",
          "floor median [p10–p90]", "n", "blocklink / os-brick", "blocklink vs os-brick", "blocklink vs floor"]


def fmt(x: float, unit: str = "") -> str:
    if unit == "count":
        return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def cell(s: Optional[Summary], unit: str) -> str:
    if s is None:
        return "–"
    if s.n == 1 or s.p10 == s.p90:
        return fmt(s.median, unit)
    return f"{fmt(s.median, unit)} [{fmt(s.p10, unit)}–{fmt(s.p90, unit)}]"


def versus_summary(row: Row, other: str, base: str = BLOCKLINK) -> Optional[Summary]:
    """How many times better ``base`` is than ``other`` on this row (> 1: better), as a Summary.

    Per-round ratios when the samples are paired (interleaved rounds); else a one-value Summary of
    the ratio of the medians. None for counts or missing data.
    """
    b, o = row.samples.get(base), row.samples.get(other)
    if not b or not o or row.unit == "count":
        return None
    paired = paired_advantage(b, o, row.higher_is_better)
    if paired is not None:
        return paired
    adv = advantage(summarize(b), summarize(o), row.higher_is_better)
    return summarize([adv]) if adv is not None else None


def versus(row: Row, other: str, base: str = BLOCKLINK) -> Optional[float]:
    s = versus_summary(row, other, base)
    return s.median if s is not None else None


def compare(row: Row, other: str) -> str:
    """'12.3× faster', '1.08× slower', '5 fewer', 'same'..."""
    s = summaries(row)
    bl, ot = s.get(BLOCKLINK), s.get(other)
    if bl is None or ot is None:
        return "–"
    if row.unit == "count":
        d = ot.median - bl.median
        if d == 0:
            return "same"
        return f"{fmt(abs(d), 'count')} {'fewer' if d > 0 else 'more'}"
    adv = versus(row, other)
    if adv is None or adv == 0:
        return "–"
    if row.higher_is_better:
        word = "higher" if adv >= 1 else "lower"
    else:
        word = "faster" if adv >= 1 else "slower"
    x = adv if adv >= 1 else 1 / adv
    return f"**{x:.2f}× {word}**" if adv >= 1 else f"{x:.2f}× {word}"


def ratio_cell(row: Row) -> str:
    """blocklink / os-brick: per-round ratios' median [p10–p90] when paired, else ratio of medians."""
    bl, ob = row.samples.get(BLOCKLINK), row.samples.get(OSBRICK)
    if not bl or not ob or row.unit == "count":
        return "–"
    paired = paired_ratios(bl, ob)
    if paired is not None:
        if paired.n == 1 or paired.p10 == paired.p90:
            return f"{paired.median:.3f}"
        return f"{paired.median:.3f} [{paired.p10:.3f}–{paired.p90:.3f}]"
    r = ratio(summarize(bl), summarize(ob))
    return f"{r:.3f}" if r is not None else "–"


def summaries(row: Row) -> Dict[str, Summary]:
    return {impl: summarize(v) for impl, v in row.samples.items() if v}


def table_rows(outcomes: Sequence[Outcome]) -> List[List[str]]:
    out = []
    for o in outcomes:
        for row in o.rows:
            s = summaries(row)
            ns = sorted({x.n for x in s.values()})
            out.append([row.benchmark, row.metric, row.unit, cell(s.get(BLOCKLINK), row.unit),
                        cell(s.get(OSBRICK), row.unit), cell(s.get(FLOOR), row.unit), "/".join(str(n) for n in ns),
                        ratio_cell(row), compare(row, OSBRICK), compare(row, FLOOR)])
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def results_table(outcomes: Sequence[Outcome]) -> str:
    return markdown_table(HEADER, table_rows(outcomes))


def not_run_lines(outcomes: Sequence[Outcome]) -> List[str]:
    return [f"- **not run**: {n.benchmark}: {n.reason}" for o in outcomes for n in o.not_run]


def render(meta: Mapping[str, Any], outcomes: Sequence[Outcome], chart: Optional[str],
           extra: Sequence[str] = ()) -> str:
    """The report; ``extra`` (Markdown lines, e.g. the goals section) follows the results table."""
    md = ["# blocklink vs os-brick: benchmark report", ""]
    md.append(f"Run {meta['started']} – {meta['finished']} ({meta['seconds']:.0f} s), "
              f"mode **{'quick (smoke run, few repetitions)' if meta['quick'] else 'full'}**, "
              f"command `{meta['command']}`.")
    md.append("")
    md.append("All numbers come from this one run on this one machine. Compare the ratios within this "
              "report; never compare absolute times across runs or machines.")
    md += ["", "## Machine", "", markdown_table(["", ""], [[k, str(v)] for k, v in meta["machine"].items()])]
    md += ["", "## Versions", "", markdown_table(["", ""], [[k, str(v)] for k, v in meta["versions"].items()])]
    md += ["", "## Method", ""]
    md.append("- The machine is shared with other work (its load average at the start and the end of each "
              "benchmark is listed below). To make outside load fall on both libraries alike, blocklink and "
              "os-brick (and the floor) run **interleaved**: repetition by repetition, in an order that "
              "rotates every repetition; the first round of fresh-process benchmarks is a discarded warm-up.")
    md.append("- Each cell is the **median** of the repetitions with the **10th–90th percentile** range in "
              "brackets; **n** is the number of repetitions per implementation. *blocklink / os-brick* is "
              "the median [p10–p90] of the per-round ratios (each round measures both back to back, so the "
              "ratio cancels slow drift in the machine's load; a single-sample row shows the plain ratio); "
              "*vs os-brick* and *vs floor* say, from the same per-round ratios, how many times better (bold) "
              "or worse blocklink is, for the metric's direction (time: lower is better; MiB/s and IOPS: "
              "higher is better; counts: fewer is better).")
    md.append("- **floor** is the bare sequence of tool or library calls that does the same job without a "
              "library (raw librbd calls, raw iscsiadm, raw tgtadm, rtslib-fb objects): what a minimal script "
              "costs. A library beats it only by doing the job differently (e.g. blocklink talks to tgtd's "
              "socket instead of starting tgtadm processes); where it is slower, that is its own overhead.")
    md.append("- os-brick runs from its own virtualenv (benchmarks/.venv-osbrick, `pip install os-brick==7.1.1`),"
              " never installed into blocklink's; both venvs are Debian's python3 with system site packages, "
              "so both use the same interpreter, librbd and oslo libraries' code paths where they share them.")
    md += ["", "| benchmark | seconds | load average at start | at end |", "|---|---|---|---|"]
    for o in outcomes:
        md.append(f"| {o.title} | {o.seconds:.0f} | {_load(o.load_before)} | {_load(o.load_after)} |")
    md += ["", "## Results", "", results_table(outcomes)]
    if extra:
        md += [""] + list(extra)
    nr = not_run_lines(outcomes)
    if nr:
        md += ["", "## Not run", ""] + nr
    if chart:
        md += ["", "## Chart", "", f"![blocklink vs os-brick]({chart})"]
    md += ["", "## Details", ""]
    for o in outcomes:
        if not o.notes:
            continue
        md += [f"### {o.title}", ""]
        for n in o.notes:
            md += [n, ""]
    return "\n".join(md).rstrip() + "\n"


def _load(v: Optional[List[float]]) -> str:
    return " / ".join(f"{x:.2f}" for x in v) if v else "–"


def write(directory: str, meta: Mapping[str, Any], outcomes: Sequence[Outcome], chart: Optional[str],
          extra: Sequence[str] = ()) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"meta": dict(meta), "outcomes": [o.to_json() for o in outcomes]}, f, indent=1)
    path = os.path.join(directory, "report.md")
    with open(path, "w") as f:
        f.write(render(meta, outcomes, chart, extra))
    return path


def load(path: str) -> Dict[str, Any]:
    with open(path) as f:
        d = json.load(f)
    d["outcomes"] = [Outcome.from_json(o) for o in d["outcomes"]]
    return d
