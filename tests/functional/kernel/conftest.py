"""Kernel tests: every test in this folder runs inside one real-kernel qemu guest per session.

On the host, the hooks below hand the selected tests to :mod:`tests.harness.guest.pytest_plugin`
(one guest boots when collection ends and runs them all while the host runs the rest; each host item reports the guest's
outcome); ``@pytest.mark.kernel(host=True)`` tests (the harness's own) stay on the host. Inside the guest (``BLOCKLINK_IN_GUEST=1``) the same files run normally with the
fixtures below. See README.md in this folder.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterator

import pytest

from tests.harness.guest import INITIATOR_IQN, in_guest
from tests.harness.guest import pytest_plugin as delegation
from tests.harness.guest.daemons import DaemonError, Iscsid, Multipathd, modprobe as _modprobe
from tests.harness.guest.kernel_state import cleanup, snapshot

HERE = os.path.dirname(os.path.abspath(__file__))
LIO_MODULES = ("target_core_mod", "iscsi_target_mod", "target_core_file", "target_core_iblock")
# the per-protocol smoke set (attach, I/O, detach) that also runs on the 6.12 guest kernel:
# scripts/test selects it with -m "smoke612 or needs_kernel" and BLOCKLINK_GUEST_KERNEL=6.12
SMOKE_612 = (
    "test_iscsi_connector.py::test_single_path_attach_io_detach",
    "test_iscsi_connector.py::test_multipath_two_portals",
    "test_fc_connector.py::test_single_path_attach_io_extend_detach",
    "test_nvme_tcp.py::test_connect_write_read_disconnect[file]",
    "test_rbd_kernel.py::test_local_attach_write_extend_detach[krbd]",
    "test_rbd_kernel.py::test_local_attach_write_extend_detach[nbd]",
    "test_nvme_auth.py::test_connect_spawns_no_child_process",
)


# ---------------------------------------------------------------------------- delegation (host side)
def _here(item: pytest.Item) -> bool:
    return str(item.path).startswith(HERE + os.sep)


def _runs_in_guest(item: pytest.Item) -> bool:
    """Tests here run in the guest, except ``@pytest.mark.kernel(host=True)`` ones (they boot their own)."""
    return _here(item) and not any(m.kwargs.get("host") for m in item.iter_markers("kernel"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    mine = [it for it in items if _here(it)]
    for it in mine:
        if it.get_closest_marker("kernel") is None:
            it.add_marker(pytest.mark.kernel)
        if it.nodeid.split("/")[-1] in SMOKE_612:
            it.add_marker(pytest.mark.smoke612)
    if not in_guest():
        mine = _deselect_other_kernels(config, items, mine)
        delegation.mark_delegated([it for it in mine if _runs_in_guest(it)])
        delegation.order_delegated_last(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    if not in_guest():
        delegation.start_early(session)  # the guest runs its share while the host runs the rest


def _deselect_other_kernels(config: pytest.Config, items: list, mine: list) -> list:
    """``@pytest.mark.needs_kernel("6.12")`` tests run only when the guest boots that series (the
    ``BLOCKLINK_GUEST_KERNEL`` / ``--guest-kernel`` choice); elsewhere they are deselected, not skipped."""
    gated = [it for it in mine if it.get_closest_marker("needs_kernel") is not None]
    if not gated:
        return mine
    from tests.harness.guest.qemu import KERNEL_ENV, matches_series, select_kernel

    release = select_kernel(os.environ.get(KERNEL_ENV)).release
    drop = [it for it in gated if not matches_series(release, str(it.get_closest_marker("needs_kernel").args[0]))]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if it not in drop]
    return [it for it in mine if it not in drop]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    if in_guest() or not _runs_in_guest(item):
        return None
    return delegation.run_item_in_guest(item, nextitem)


def pytest_sessionfinish(session: pytest.Session) -> None:
    delegation.finish(session.config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    delegation.summary(terminalreporter, config)


# ---------------------------------------------------------------------------- guest-side fixtures
def _need_guest() -> None:
    if not in_guest():
        pytest.fail("this fixture only works inside the kernel test guest", pytrace=False)


class ModuleLoader:
    """``modprobe("rbd", "nbd")`` loads modules; ``modprobe.load("scsi_debug", add_host=0)`` one with
    parameters. A module that does not load fails the test with modprobe's message."""

    def __call__(self, *modules: str) -> None:
        try:
            _modprobe(*modules)
        except DaemonError as e:
            pytest.fail(str(e), pytrace=False)

    def load(self, module: str, **params: Any) -> None:
        try:
            _modprobe(module, params=[f"{k}={v}" for k, v in params.items()])
        except DaemonError as e:
            pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def modprobe() -> ModuleLoader:
    """Load kernel modules on demand (see :class:`ModuleLoader`)."""
    _need_guest()
    return ModuleLoader()


@pytest.fixture(scope="session")
def configfs(modprobe: ModuleLoader) -> str:
    """configfs mounted (the guest mounts it at boot) with LIO's core loaded; returns its mount point."""
    path = "/sys/kernel/config"
    if not os.path.ismount(path):
        pytest.fail(f"configfs is not mounted on {path}", pytrace=False)
    modprobe(*LIO_MODULES)
    return path


def _clear_lio() -> None:
    from rtslib_fb import RTSRoot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Cannot set dbroot": harmless once targets exist
        RTSRoot().clear_existing(confirm=True)


@pytest.fixture
def lio_clean(configfs: str) -> Iterator[Any]:
    """An empty LIO configuration (an ``rtslib_fb.RTSRoot``); everything the test created is cleared after."""
    from rtslib_fb import RTSRoot

    _clear_lio()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = RTSRoot()
    try:
        yield root
    finally:
        _clear_lio()


@pytest.fixture(scope="session")
def iscsid() -> Iterator[Iscsid]:
    """open-iscsi's iscsid (initiator ``INITIATOR_IQN``), started once per session, stopped by PID."""
    _need_guest()
    try:
        daemon = Iscsid(initiator_iqn=INITIATOR_IQN).start()
    except DaemonError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def multipathd() -> Iterator[Multipathd]:
    """multipathd with the test /etc/multipath.conf (find_multipaths no, user_friendly_names no), per test."""
    _need_guest()
    try:
        daemon = Multipathd().start()
    except DaemonError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(autouse=True)
def leak_check() -> Iterator[None]:
    """After each test: no new iSCSI session, SCSI disk, dm map, rbd/nbd mapping, NVMe controller,
    loop device, LIO or nvmet object. Leaks fail the test (as a teardown error) and are cleaned up."""
    if not in_guest():
        yield
        return
    before = snapshot()
    yield
    leaked = snapshot().new_since(before)
    if leaked:
        problems = cleanup(leaked)
        text = "\n  ".join(leaked.items())
        extra = ("\ncleanup problems:\n  " + "\n  ".join(problems)) if problems else ""
        pytest.fail(f"the test left kernel state behind:\n  {text}{extra}", pytrace=False)
