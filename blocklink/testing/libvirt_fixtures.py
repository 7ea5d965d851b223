"""pytest fixtures over a private libvirtd + QEMU (TCG), for blocklink's tests and its users' tests.

Use in a ``conftest.py``::

    pytest_plugins = ["blocklink.testing.libvirt_fixtures"]

    def test_hotplug(libvirt_host, libvirt_domain):        # a running guest with a virtio-scsi controller
        att = libvirt_host.attach_volume(libvirt_domain, info, device, bus="scsi")
        libvirt_host.detach_volume(libvirt_domain, att)

The daemon is started once per session (:class:`~blocklink.testing.libvirtd.LibvirtDaemon`: own
sockets and state, nothing left after). A component that cannot start fails the test; set
``BLOCKLINK_ALLOW_SKIP=1`` to turn that into a skip on a developer machine.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Iterator

import pytest

from blocklink.testing.libvirtd import EMULATOR, LIBVIRTD, LibvirtDaemon, tiny_domain_xml


def _missing(what: str) -> None:
    msg = f"{what} is not available on this machine (run scripts/bootstrap)"
    if os.environ.get("BLOCKLINK_ALLOW_SKIP") == "1":
        pytest.skip(msg)
    pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[LibvirtDaemon]:
    """A private libvirtd (QEMU driver), shared by the session; stopped (by PID) at the end."""
    for exe in (LIBVIRTD, EMULATOR):
        if not os.access(exe, os.X_OK):
            _missing(exe)
    try:
        import libvirt  # noqa: F401
    except ImportError:
        _missing("libvirt-python")
    daemon = LibvirtDaemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def libvirt_host(libvirtd: LibvirtDaemon) -> Iterator[Any]:
    """A :class:`blocklink.hypervisor.LibvirtHost` connected to the private daemon."""
    from blocklink.hypervisor.live import LibvirtHost

    host = LibvirtHost(libvirtd.uri, detach_timeout=20.0)
    try:
        yield host
    finally:
        host.close()


@pytest.fixture
def libvirt_domain(libvirt_host: Any) -> Iterator[Any]:
    """A running persistent TCG guest without an OS, with a virtio-scsi controller; removed after."""
    conn = libvirt_host.connection
    dom = conn.defineXML(tiny_domain_xml(f"bl-{uuid.uuid4().hex[:10]}"))
    try:
        dom.create()
        yield dom
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
