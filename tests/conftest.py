import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.environ.get("BLOCKLINK_VECTORS", os.path.join(HERE, "vectors"))

# tests/compat need the real Nova and Cinder (the .venv-compat interpreter; scripts/test runs them
# there with BLOCKLINK_COMPAT=1, so a broken compat virtualenv fails instead of being skipped)
if importlib.util.find_spec("nova") is None and os.environ.get("BLOCKLINK_COMPAT") != "1":
    collect_ignore = ["compat"]
