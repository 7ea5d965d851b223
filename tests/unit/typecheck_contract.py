"""Checked by mypy (tests/unit/test_contract.py and scripts/test), never imported by pytest.

The revealed types are the typed ``connector_for`` contract; the assignments make mypy prove that
the real target helpers and the test fakes conform to the Protocols ``AttachFlow`` takes.
"""

from typing import List, reveal_type

import blocklink
from blocklink.target.base import ExportingTargetHelper, TargetHelper
from blocklink.target.lio import LioTarget
from blocklink.target.nvmet import NvmetTarget
from blocklink.target.rbd import RbdTarget
from blocklink.target.tgt import TgtTarget
from tests.unit.test_attach_flow import FakeTarget

reveal_type(blocklink.connector_for("iscsi"))
reveal_type(blocklink.connector_for("iscsi", attach="userspace"))
reveal_type(blocklink.connector_for("rbd"))
reveal_type(blocklink.connector_for("ceph", attach="userspace"))
reveal_type(blocklink.connector_for("fibre_channel"))
reveal_type(blocklink.connector_for("fc"))
reveal_type(blocklink.connector_for("nvmeof"))
reveal_type(blocklink.connector_for("nvme_tcp"))
reveal_type(blocklink.connector_for("someplugin"))


def conformance(lio: LioTarget, tgt: TgtTarget, nvmet: NvmetTarget, rbd: RbdTarget, fake: FakeTarget) -> None:
    helpers: List[TargetHelper] = [lio, tgt, nvmet, rbd, fake]
    exporting: List[ExportingTargetHelper] = [lio, tgt, nvmet, fake]
    del helpers, exporting
