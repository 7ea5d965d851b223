import importlib.util
import os

import pytest

from tests.harness import watchdog
from tests.harness.guest import in_guest

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.environ.get("BLOCKLINK_VECTORS", os.path.join(HERE, "vectors"))

# tests/compat need the real Nova and Cinder (the .venv-compat interpreter; scripts/test runs them
# there with BLOCKLINK_COMPAT=1, so a broken compat virtualenv fails instead of being skipped)
if importlib.util.find_spec("nova") is None and os.environ.get("BLOCKLINK_COMPAT") != "1":
    collect_ignore = ["compat"]

def pytest_addoption(parser) -> None:  # type: ignore[no-untyped-def]
    parser.addoption("--guest-kernel", default=None,
                     help="kernel of the real-kernel test guest: 6.1, 6.12, a release or a vmlinuz path "
                          "(same as BLOCKLINK_GUEST_KERNEL; default the host's newest, Debian's 6.1)")


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    kernel = config.getoption("--guest-kernel", default=None)
    if kernel:
        os.environ["BLOCKLINK_GUEST_KERNEL"] = kernel  # the guest harness reads it at boot


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # type: ignore[no-untyped-def]
    """Every host-run test is time-bounded (:mod:`tests.harness.watchdog`): a hang fails that test with
    all stacks instead of stalling the run. Guest-delegated items have the guest's own idle limit."""
    if in_guest() or getattr(item, "_blocklink_in_guest", False):
        yield
        return
    with watchdog.bounded(item.nodeid, watchdog.limit()):
        yield
