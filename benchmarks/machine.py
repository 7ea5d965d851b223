"""Describe the machine and the versions under test, for the report's header."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _out(argv: List[str]) -> str:
    if shutil.which(argv[0]) is None and not os.path.isabs(argv[0]):
        return ""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (p.stdout or p.stderr).strip()


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ram_gib() -> Optional[float]:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    return None


def load() -> List[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def hypervisor() -> str:
    flags = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            flags = line
            break
    if " hypervisor" not in flags:
        return "bare metal"
    vendor = _out(["systemd-detect-virt"]) or ""
    return f"virtual machine{' (' + vendor + ')' if vendor and vendor != 'none' else ''}"


def describe() -> Dict[str, str]:
    ram = ram_gib()
    return {
        "CPU": cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": f"{ram:.1f} GiB" if ram else "unknown",
        "kernel": platform.release(),
        "Debian": _read("/etc/debian_version").strip() or "not Debian",
        "platform": hypervisor(),
    }


def git_commit() -> str:
    sha = _out(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = _out(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"])
    return f"{sha}{' (+ uncommitted changes)' if dirty else ''}" if sha else "unknown"


def osbrick_versions(python: str) -> Dict[str, str]:
    """Versions of os-brick and the libraries that shape its cost, as its own venv sees them."""
    code = ("import importlib.metadata as m, json\n"
            "out = {}\n"
            "for p in ('os-brick', 'oslo.privsep', 'oslo.concurrency', 'eventlet', 'matplotlib'):\n"
            "    try:\n"
            "        out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError:\n"
            "        out[p] = 'missing'\n"
            "print(json.dumps(out))\n")
    try:
        return dict(json.loads(_out([python, "-c", code]) or "{}"))
    except ValueError:
        return {}


def versions(osbrick_python: Optional[str]) -> Dict[str, str]:
    import importlib.metadata as md

    import blocklink

    out = {"blocklink": f"{blocklink.__version__} (git {git_commit()})",
           "python": sys.version.split()[0] + f" ({sys.executable})"}
    for p in ("oslo.concurrency", "oslo.privsep"):
        try:
            out[f"{p} (blocklink venv)"] = md.version(p)
        except md.PackageNotFoundError:
            pass
    if osbrick_python:
        ob = osbrick_versions(osbrick_python)
        out["os-brick"] = ob.pop("os-brick", "missing") + f" ({osbrick_python})"
        for k, v in ob.items():
            out[f"{k} (os-brick venv)"] = v
    ceph = _out(["ceph", "--version"])
    out["ceph"] = " ".join(ceph.split()[:3]) if ceph else "missing"
    tgt = _out(["dpkg-query", "-W", "-f", "${Version}", "tgt"])
    if tgt:
        out["tgt"] = tgt
    iscsi = _out(["dpkg-query", "-W", "-f", "${Version}", "open-iscsi"])
    if iscsi:
        out["open-iscsi"] = iscsi
    out["strace"] = (_out(["strace", "-V"]).splitlines() or ["missing"])[0]
    return out
