"""The compat kernel tests run in the real-kernel guest, with the compat virtualenv's interpreter.

The guest runs pytest with the host session's interpreter path (the root is shared over 9p), so a
session started with ``.venv-compat/bin/python`` runs these tests there with Nova and Cinder
installed. The guest-side fixtures are the kernel suite's own (imported below).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.harness.guest import in_guest
from tests.harness.guest import pytest_plugin as delegation
from tests.functional.kernel.conftest import (configfs, iscsid, leak_check, lio_clean, modprobe, multipathd,  # noqa: F401,E501
                                              pytest_sessionfinish, pytest_terminal_summary)

HERE = os.path.dirname(os.path.abspath(__file__))


def _mine(item: pytest.Item) -> bool:
    return str(item.path).startswith(HERE + os.sep)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Every test here is a kernel test; on the host they are handed to the session's guest."""
    mine = [it for it in items if _mine(it)]
    for it in mine:
        it.add_marker(pytest.mark.kernel)
    if not in_guest():
        delegation.mark_delegated(mine)
        delegation.order_delegated_last(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    if not in_guest():
        delegation.start_early(session)  # the guest runs its share while the host runs the rest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    if in_guest() or not _mine(item):
        return None
    return delegation.run_item_in_guest(item, nextitem)

