"""What the reliability suites measured, kept in-process and written as JSON at the end of the run.

The figures (cases fuzzed per target, faults injected, cycles run, leaks found, secret exposures
found) are counted by the tests themselves as they run, so a report shows what was exercised, not
what was planned. ``python -m tests.reliability.report`` prints them.

Where: ``$BLOCKLINK_RELIABILITY_RESULTS`` (a file path) or ``/tmp/blocklink-reliability/results.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Optional

RESULTS_ENV = "BLOCKLINK_RELIABILITY_RESULTS"
DEFAULT_PATH = os.path.join(tempfile.gettempdir(), "blocklink-reliability", "results.json")


def long_mode() -> bool:
    """BLOCKLINK_LONG=1: 10,000 fuzz cases per target, 200 soak cycles per protocol."""
    return os.environ.get("BLOCKLINK_LONG", "") not in ("", "0")


def results_path() -> str:
    return os.environ.get(RESULTS_ENV) or DEFAULT_PATH


class Results:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.fuzz_cases: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.cycles: Counter[str] = Counter()
        self.hostile: Counter[str] = Counter()
        self.secret_scans: Counter[str] = Counter()
        self.leaks: List[Dict[str, Any]] = []
        self.exposures: List[Dict[str, Any]] = []
        self.fixed: List[str] = []
        self.outcomes: Counter[str] = Counter()
        self.durations: Dict[str, float] = {}
        self.cycle_ms: Dict[str, List[float]] = {}

    def fuzzed(self, target: str, n: int = 1) -> None:
        with self._lock:
            self.fuzz_cases[target] += n

    def fault(self, name: str) -> None:
        with self._lock:
            self.faults[name] += 1

    def cycle(self, protocol: str, ms: Optional[float] = None) -> None:
        with self._lock:
            self.cycles[protocol] += 1
            if ms is not None:
                self.cycle_ms.setdefault(protocol, []).append(round(ms, 1))

    def hostile_value(self, entry_point: str, n: int = 1) -> None:
        with self._lock:
            self.hostile[entry_point] += n

    def scanned(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.secret_scans[what] += n

    def leak(self, where: str, leaks: Any) -> None:
        with self._lock:
            self.leaks.append({"where": where, "leaks": leaks})

    def exposure(self, where: str, detail: str) -> None:
        with self._lock:
            self.exposures.append({"where": where, "detail": detail})

    def to_dict(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "mode": "long" if long_mode() else "short",
                "started": self.started, "finished": time.time(),
                "fuzz_cases": dict(sorted(self.fuzz_cases.items())), "faults": dict(sorted(self.faults.items())),
                "cycles": dict(sorted(self.cycles.items())), "hostile_values": dict(sorted(self.hostile.items())),
                "secret_scans": dict(sorted(self.secret_scans.items())),
                "leaks_found": list(self.leaks), "secret_exposures": list(self.exposures),
                "outcomes": dict(self.outcomes), "durations": dict(self.durations),
                "cycle_ms": {k: v for k, v in self.cycle_ms.items()},
            }

    def empty(self) -> bool:
        return not (self.fuzz_cases or self.faults or self.cycles or self.hostile or self.secret_scans
                    or self.outcomes)

    def write(self, path: Optional[str] = None) -> str:
        path = path or results_path()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)
        return path


RESULTS = Results()
