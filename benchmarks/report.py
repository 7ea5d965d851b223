"""Turn benchmark outcomes into results.json, report.md (Markdown table) and the printed table."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from benchmarks.model import BLOCKLINK, FLOOR, OSBRICK, Outcome, Row
from benchmarks.stats import Summary, advantage, ratio, summarize

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


def compare(bl: Optional[Summary], other: Optional[Summary], row: Row) -> str:
    """'12.3× faster', '1.08× slower', '5 fewer', 'same'..."""
    if bl is None or other is None:
        return "–"
    if row.unit == "count":
        d = other.median - bl.median
        if d == 0:
            return "same"
        return f"{fmt(abs(d), 'count')} {'fewer' if d > 0 else 'more'}"
    adv = advantage(bl, other, row.higher_is_better)
    if adv is None:
        return "–"
    if row.higher_is_better:
        word = "higher" if adv >= 1 else "lower"
    else:
        word = "faster" if adv >= 1 else "slower"
    x = adv if adv >= 1 else 1 / adv
    return f"**{x:.2f}× {word}**" if adv >= 1 else f"{x:.2f}× {word}"


def summaries(row: Row) -> Dict[str, Summary]:
    return {impl: summarize(v) for impl, v in row.samples.items() if v}


def table_rows(outcomes: Sequence[Outcome]) -> List[List[str]]:
    out = []
    for o in outcomes:
        for row in o.rows:
            s = summaries(row)
            bl, ob, fl = s.get(BLOCKLINK), s.get(OSBRICK), s.get(FLOOR)
            ns = sorted({x.n for x in s.values()})
            r = ratio(bl, ob) if bl and ob and row.unit != "count" else None
            out.append([row.benchmark, row.metric, row.unit, cell(bl, row.unit), cell(ob, row.unit),
                        cell(fl, row.unit), "/".join(str(n) for n in ns), f"{r:.3f}" if r is not None else "–",
                        compare(bl, ob, row), compare(bl, fl, row)])
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


def render(meta: Mapping[str, Any], outcomes: Sequence[Outcome], chart: Optional[str]) -> str:
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
              "the ratio of the medians; *vs os-brick* and *vs floor* say how many times better (bold) or "
              "worse blocklink is, for the metric's direction (time: lower is better; MiB/s and IOPS: higher "
              "is better; counts: fewer is better).")
    md.append("- **floor** is the bare minimum that does the same job without a library (raw librbd calls, "
              "raw iscsiadm, raw tgtadm/rtslib): the limit neither library can beat.")
    md.append("- os-brick runs from its own virtualenv (benchmarks/.venv-osbrick, `pip install os-brick==7.1.1`),"
              " never installed into blocklink's; both venvs are Debian's python3 with system site packages, "
              "so both use the same interpreter, librbd and oslo libraries' code paths where they share them.")
    md += ["", "| benchmark | seconds | load average at start | at end |", "|---|---|---|---|"]
    for o in outcomes:
        md.append(f"| {o.title} | {o.seconds:.0f} | {_load(o.load_before)} | {_load(o.load_after)} |")
    md += ["", "## Results", "", results_table(outcomes)]
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


def write(directory: str, meta: Mapping[str, Any], outcomes: Sequence[Outcome], chart: Optional[str]) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"meta": dict(meta), "outcomes": [o.to_json() for o in outcomes]}, f, indent=1)
    path = os.path.join(directory, "report.md")
    with open(path, "w") as f:
        f.write(render(meta, outcomes, chart))
    return path


def load(path: str) -> Dict[str, Any]:
    with open(path) as f:
        d = json.load(f)
    d["outcomes"] = [Outcome.from_json(o) for o in d["outcomes"]]
    return d
