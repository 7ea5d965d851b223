"""The benchmarks' own virtualenv holding os-brick (never a dependency of blocklink) and matplotlib.

Made from Debian's /usr/bin/python3 with ``--system-site-packages`` so it imports Debian's rados and
rbd bindings, exactly like blocklink's own venv; os-brick then runs on the same interpreter and the
same librbd as blocklink.
"""

from __future__ import annotations

import os
import subprocess
import sys
HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv-osbrick")
OSBRICK_VERSION = "7.1.1"
REQUIREMENTS = [f"os-brick=={OSBRICK_VERSION}", "matplotlib"]
BASE_PYTHON = "/usr/bin/python3"


def python() -> str:
    return os.path.join(VENV, "bin", "python")


def _ready() -> bool:
    code = ("import importlib.metadata as m, sys\n"
            f"assert m.version('os-brick') == {OSBRICK_VERSION!r}\n"
            "import matplotlib, os_brick, rbd, rados\n")
    try:
        p = subprocess.run([python(), "-c", code], capture_output=True, timeout=120)
    except OSError:
        return False
    return p.returncode == 0


def ensure() -> str:
    """Create or complete the venv; return its python. Idempotent: a ready venv costs one check."""
    if os.path.exists(python()) and _ready():
        return python()
    if not os.path.exists(python()):
        print(f"creating {VENV} (os-brick {OSBRICK_VERSION}, matplotlib) ...", file=sys.stderr, flush=True)
        subprocess.run([BASE_PYTHON, "-m", "venv", "--system-site-packages", VENV], check=True)
    p = subprocess.run([python(), "-m", "pip", "install", "--disable-pip-version-check", "-q", *REQUIREMENTS],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(REQUIREMENTS)} into {VENV} failed:\n{p.stderr[-2000:]}")
    if not _ready():
        raise RuntimeError(f"{VENV} still cannot import os_brick, matplotlib, rados and rbd after pip install")
    return python()
