"""What every benchmark module gets from the runner."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple, TypeVar

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

T = TypeVar("T")


@dataclass
class Context:
    blocklink_python: str  # the project's venv (blocklink installed)
    osbrick_python: str  # benchmarks/.venv-osbrick (os-brick 7.1.1), same base interpreter
    results_dir: str
    quick: bool = False

    def reps(self, full: int, quick: int = 3) -> int:
        return quick if self.quick else full

    def log(self, msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    def scratch(self, name: str) -> str:
        d = os.path.join(self.results_dir, "work", name)
        os.makedirs(d, exist_ok=True)
        return d


def interleave(reps: int, impls: Sequence[T]) -> Iterator[Tuple[int, T]]:
    """(repetition, implementation) pairs, rotating the order every repetition.

    The machine is shared: rotating spreads any burst of outside load, and any first-/last-position
    effect, evenly over the implementations instead of always hitting the same one.
    """
    items: List[T] = list(impls)
    for r in range(reps):
        k = r % len(items) if items else 0
        for impl in items[k:] + items[:k]:
            yield r, impl
