"""``os_brick.initiator.connectors.nvmeof``: NVMe over Fabrics (TCP) through blocklink's connector."""

from __future__ import annotations

from blocklink.compat.os_brick.initiator.connectors.base import BrickConnector


class NVMeOFConnector(BrickConnector):
    blocklink_protocol = "nvmeof"
    search_path = "/dev"
