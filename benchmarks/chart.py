"""ratios.png from results.json: how many times better blocklink is than os-brick, and both vs the floor.

Needs matplotlib, which lives in the benchmarks' own venv (never a blocklink dependency); the
runner calls ``benchmarks/.venv-osbrick/bin/python -m benchmarks.chart results.json ratios.png``.
"""

from __future__ import annotations

import sys
import textwrap
from typing import List, Optional, Tuple

from benchmarks.model import BLOCKLINK, FLOOR, OSBRICK, Outcome
from benchmarks.report import load
from benchmarks.stats import advantage, summarize


def advantage_bars(outcomes: List[Outcome]) -> List[Tuple[str, float]]:
    bars = []
    for o in outcomes:
        for r in o.rows:
            if not r.chart or not r.samples.get(BLOCKLINK) or not r.samples.get(OSBRICK):
                continue
            adv = advantage(summarize(r.samples[BLOCKLINK]), summarize(r.samples[OSBRICK]), r.higher_is_better)
            if adv:
                bars.append((f"{o.title}: {r.metric}", adv))
    return bars


def floor_bars(outcomes: List[Outcome]) -> List[Tuple[str, float, Optional[float]]]:
    """(label, blocklink share of the floor's performance, os-brick share or None); 1.0 = the floor."""
    bars = []
    for o in outcomes:
        for r in o.rows:
            if not r.chart or not r.samples.get(FLOOR) or not r.samples.get(BLOCKLINK):
                continue
            fl = summarize(r.samples[FLOOR])
            bl = advantage(summarize(r.samples[BLOCKLINK]), fl, r.higher_is_better)
            ob = advantage(summarize(r.samples[OSBRICK]), fl, r.higher_is_better) if r.samples.get(OSBRICK) else None
            if bl:
                bars.append((f"{o.title}: {r.metric}", bl, ob))
    return bars


def draw(outcomes: List[Outcome], path: str, subtitle: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adv = advantage_bars(outcomes)
    flo = floor_bars(outcomes)
    panels = [p for p in (adv, flo) if p]
    if not panels:
        raise SystemExit("nothing to chart")
    heights = [max(2.0, 0.42 * len(p) + 1.2) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    row = 0
    wrap = 58
    if adv:
        ax = axes[row][0]
        row += 1
        labels = [textwrap.fill(lb, wrap) for lb, _ in adv]
        vals = [v for _, v in adv]
        colors = ["#2a7ab9" if v >= 1 else "#d9772b" for v in vals]
        ys = list(range(len(vals)))
        ax.barh(ys, vals, color=colors)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}×", va="center", fontsize=8)
        ax.set_xlabel("blocklink advantage over os-brick (× better, log scale; > 1 = blocklink better)")
        ax.set_title("blocklink vs os-brick 7.1.1, same machine, same run" + (f"\n{subtitle}" if subtitle else ""),
                     fontsize=10)
        ax.set_xlim(min(min(vals) / 1.6, 0.5), max(vals) * 2.5)
    if flo:
        ax = axes[row][0]
        labels = [textwrap.fill(lb, wrap) for lb, _, _ in flo]
        y = list(range(len(flo)))
        bl = [b for _, b, _ in flo]
        ob = [o if o is not None else 0.0 for _, _, o in flo]
        ax.barh([i - 0.2 for i in y], bl, height=0.4, color="#2a7ab9", label="blocklink")
        if any(ob):
            ax.barh([i + 0.2 for i in y], ob, height=0.4, color="#9a9a9a", label="os-brick")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        for i, (b, o) in enumerate(zip(bl, ob)):
            ax.text(b, i - 0.2, f" {b:.2f}", va="center", fontsize=7)
            if o:
                ax.text(o, i + 0.2, f" {o:.2f}", va="center", fontsize=7)
        ax.set_xlabel("share of the floor's performance (1.0 = as good as the bare tool/librbd calls)")
        ax.set_xlim(0, max(bl + ob + [1.0]) * 1.2)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.chart results.json ratios.png", file=sys.stderr)
        return 2
    data = load(argv[0])
    meta = data["meta"]
    sub = f"{meta['machine'].get('CPU', '')}, {meta['machine'].get('cores', '?')} cores; {meta['started']}"
    if meta.get("quick"):
        sub += " (quick smoke run)"
    draw(data["outcomes"], argv[1], sub)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
