"""``os_brick.initiator.connectors.iscsi``: iSCSI through blocklink's open-iscsi connector."""

from __future__ import annotations

from typing import Any, Dict

from blocklink.compat.os_brick.initiator.connectors.base import BrickConnector
from blocklink.hostpaths import HostPaths
from blocklink.initiator.properties import read_initiator_name


class ISCSIConnector(BrickConnector):
    """os-brick's ``transport`` is the open-iscsi interface (``iface``); ``enforce_multipath`` fails an
    attach that gets no multipath map instead of falling back to one path."""

    blocklink_protocol = "iscsi"
    search_path = "/dev/disk/by-path"

    def _options(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        opts = super()._options(kwargs)
        opts["iface"] = kwargs.pop("transport", None) or "default"
        opts["enforce_multipath"] = bool(kwargs.pop("enforce_multipath", False))
        return opts

    @staticmethod
    def get_connector_properties(root_helper: Any, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        name = read_initiator_name(HostPaths())
        return {"initiator": name} if name else {}
