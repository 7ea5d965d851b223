"""A throwaway real-kernel guest (qemu TCG, Debian's kernel, the host's / over virtio-9p) for tests.

The host running the tests may lack SCSI, iSCSI, LIO, dm-multipath, rbd or nbd; the guest has them
all as modules. Public surface::

    from tests.harness.guest import Guest, run_in_guest, in_guest

    with Guest.boot() as g:
        print(g.run("modprobe -a iscsi_tcp rbd && lsmod").stdout)

``python -m tests.harness.guest 'command'`` runs one command in a fresh guest. The pytest
delegation of ``@pytest.mark.kernel`` tests is :mod:`tests.harness.guest.pytest_plugin`.
"""

from __future__ import annotations

import os

from tests.harness.guest.agent import IN_GUEST_ENV
from tests.harness.guest.machine import (Guest, GuestBootError, GuestConfig, GuestError, GuestResult,
                                             GuestTimeout, run_in_guest)
from tests.harness.guest.qemu import KERNEL_ENV, KernelChoice, find_kernel, nic_mac, select_kernel
from tests.harness.guest.stage2 import INITIATOR_IQN, LOOPBACK_ADDRS


def in_guest() -> bool:
    """True inside the test guest (the agent sets ``BLOCKLINK_IN_GUEST=1`` for every command)."""
    return os.environ.get(IN_GUEST_ENV) == "1"


__all__ = ["Guest", "GuestBootError", "GuestConfig", "GuestError", "GuestResult", "GuestTimeout", "IN_GUEST_ENV",
           "INITIATOR_IQN", "KERNEL_ENV", "KernelChoice", "LOOPBACK_ADDRS", "find_kernel", "in_guest", "nic_mac",
           "run_in_guest", "select_kernel"]
