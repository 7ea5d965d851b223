"""``os_brick.initiator.connectors.fibre_channel``: FC through blocklink's connector."""

from __future__ import annotations

from typing import Any, Dict

from blocklink.compat.os_brick.initiator.connectors.base import BrickConnector
from blocklink.hostpaths import HostPaths
from blocklink.initiator.properties import read_fc_ports


class FibreChannelConnector(BrickConnector):
    blocklink_protocol = "fibre_channel"
    search_path = "/dev/disk/by-path"

    def _options(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        opts = super()._options(kwargs)
        opts["enforce_multipath"] = bool(kwargs.pop("enforce_multipath", False))
        return opts

    @staticmethod
    def get_connector_properties(root_helper: Any, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        ports = read_fc_ports(HostPaths())
        return {"wwpns": [p[1] for p in ports], "wwnns": [p[2] for p in ports]} if ports else {}
