"""ratios.png from results.json: how many times better blocklink is than os-brick, and both vs the floor.

Needs matplotlib, which lives in the benchmarks' own venv (never a blocklink dependency); the
runner calls ``benchmarks/.venv-osbrick/bin/python -m benchmarks.chart results.json ratios.png``.
"""

from __future__ import annotations

import sys
import textwrap
from typing import List, Optional, Tuple

from benchmarks.model import BLOCKLINK, FLOOR, OSBRICK, Outcome
from benchmarks.report import load, versus, versus_summary
from benchmarks.stats import Summary


Bar = Tuple[str, float, float, float]  # label, median, p10, p90
_TICKS = [0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20]
_TICKS_WIDE = [0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


def _bar(label: str, s: Optional[Summary]) -> Optional[Bar]:
    if s is None or s.median <= 0:
        return None
    return (label, s.median, s.p10, s.p90)


def advantage_bars(outcomes: List[Outcome]) -> List[Bar]:
    """blocklink's advantage over os-brick per chartable row (per-round ratios: median, p10, p90)."""
    bars = []
    for o in outcomes:
        for r in o.rows:
            if r.chart:
                b = _bar(f"{o.title}: {r.metric}", versus_summary(r, OSBRICK))
                if b:
                    bars.append(b)
    return bars


def floor_bars(outcomes: List[Outcome]) -> List[Tuple[str, float, Optional[float]]]:
    """(label, blocklink's share of the floor's performance, os-brick's or None); 1.0 = the floor."""
    bars = []
    for o in outcomes:
        for r in o.rows:
            if not r.chart:
                continue
            bl = versus(r, FLOOR, BLOCKLINK)
            if bl:
                bars.append((f"{o.title}: {r.metric}", bl, versus(r, FLOOR, OSBRICK)))
    return bars


def draw(outcomes: List[Outcome], path: str, subtitle: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

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
        labels = [textwrap.fill(b[0], wrap) for b in adv]
        vals = [b[1] for b in adv]
        err = [[max(0.0, b[1] - b[2]) for b in adv], [max(0.0, b[3] - b[1]) for b in adv]]
        colors = ["#2a7ab9" if v >= 1 else "#d9772b" for v in vals]
        ys = list(range(len(vals)))
        ax.set_xscale("log")
        ax.set_xlim(min(min(b[2] for b in adv) / 1.6, 0.5), max(max(b[3] for b in adv) * 2.5, 2.0))
        # bars grow from 1× (parity) towards the median: right = blocklink better, left = worse
        ax.barh(ys, [v - 1.0 for v in vals], left=1.0, color=colors, xerr=err,
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#444"})
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        for i, b in enumerate(adv):
            ax.text(max(b[1], b[3]) * 1.04, i, f"{b[1]:.2f}×", va="center", fontsize=8)
        lo, hi = ax.get_xlim()
        ticks = [t for t in (_TICKS if hi / lo < 30 else _TICKS_WIDE) if lo <= t <= hi]
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("blocklink advantage over os-brick: × better (log scale; > 1 = blocklink better)\n"
                      "bar: median of the per-round ratios; whiskers: their p10–p90", fontsize=9)
        ax.set_title("blocklink vs os-brick 7.1.1, same machine, same run" + (f"\n{subtitle}" if subtitle else ""),
                     fontsize=10)
    if flo:
        ax = axes[row][0]
        labels = [textwrap.fill(lb, wrap) for lb, _, _ in flo]
        y = list(range(len(flo)))
        bl = [f[1] for f in flo]
        ob = [f[2] if f[2] is not None else 0.0 for f in flo]
        ax.barh([i - 0.2 for i in y], bl, height=0.4, color="#2a7ab9", label="blocklink")
        if any(ob):
            ax.barh([i + 0.2 for i in y], ob, height=0.4, color="#9a9a9a", label="os-brick")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        for i, (bv, ov) in enumerate(zip(bl, ob)):
            ax.text(bv, i - 0.2, f" {bv:.2f}", va="center", fontsize=7)
            if ov:
                ax.text(ov, i + 0.2, f" {ov:.2f}", va="center", fontsize=7)
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
