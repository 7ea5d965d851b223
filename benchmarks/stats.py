"""Summaries of repeated measurements: median, p10/p90, ratios of medians.

Kept free of numpy so that the runner works in the project's venv as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


def quantile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation between order statistics (numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside 0..1")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p10: float
    p90: float
    minimum: float
    maximum: float

    @property
    def spread(self) -> float:
        """p90 - p10 relative to the median (0 for a constant series)."""
        if self.median == 0:
            return 0.0
        return (self.p90 - self.p10) / abs(self.median)


def summarize(samples: Sequence[float]) -> Summary:
    return Summary(n=len(samples), median=quantile(samples, 0.5), p10=quantile(samples, 0.1),
                   p90=quantile(samples, 0.9), minimum=min(samples), maximum=max(samples))


def ratio(numerator: Summary, denominator: Summary) -> Optional[float]:
    """Ratio of medians, None when the denominator's median is zero."""
    if denominator.median == 0:
        return None
    return numerator.median / denominator.median


def advantage(blocklink: Summary, other: Summary, higher_is_better: bool) -> Optional[float]:
    """How many times better blocklink is than ``other`` (> 1: blocklink better; < 1: worse).

    For times (lower is better) that is other/blocklink, for throughputs blocklink/other. None when
    the division is undefined (a zero median), e.g. no child process at all on one side.
    """
    num, den = (blocklink, other) if higher_is_better else (other, blocklink)
    if den.median == 0:
        return None
    return num.median / den.median


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> Optional[Summary]:
    """Summary of the per-round ratios numerator[i] / denominator[i].

    Interleaved benchmarks record one sample of each implementation per round, close together in
    time; the ratio within a round cancels slow drift in the machine's load, so its median is a
    steadier estimate than the ratio of two medians. None when the series are not paired (different
    lengths) or a denominator is zero.
    """
    if not numerator or len(numerator) != len(denominator) or any(d == 0 for d in denominator):
        return None
    return summarize([n / d for n, d in zip(numerator, denominator)])


def paired_advantage(blocklink: Sequence[float], other: Sequence[float],
                     higher_is_better: bool) -> Optional[Summary]:
    """Per-round 'times better' of blocklink (see :func:`advantage`), summarized; None if not paired."""
    num, den = (blocklink, other) if higher_is_better else (other, blocklink)
    return paired_ratios(num, den)
