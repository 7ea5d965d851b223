"""``os_brick.initiator.utils``: ``guard_connection``, the attach/detach lock for shared targets."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

from blocklink.locks import LockFactory

# blocklink's iSCSI connector always scans only the volume's own LUN (node.session.scan = manual)
ISCSI_SUPPORTS_MANUAL_SCAN = True
LOCK_DIR_ENV = "BLOCKLINK_OS_BRICK_LOCK_PATH"


@contextlib.contextmanager
def guard_connection(device: Mapping[str, Any]) -> Iterator[None]:
    """Cinder's ``shared_targets`` is tri-state: False never locks, True locks only for initiators that
    cannot scan a single LUN (never here), None always locks, per backend (``service_uuid``)."""
    shared = device.get("shared_targets", False)
    if shared is False or (shared is not None and ISCSI_SUPPORTS_MANUAL_SCAN):
        yield
        return
    locks = LockFactory(os.environ.get(LOCK_DIR_ENV, "/run/blocklink/locks"))
    with locks.lock(f"os-brick-{device['service_uuid']}"):
        yield
