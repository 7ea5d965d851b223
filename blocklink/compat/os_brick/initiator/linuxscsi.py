"""``os_brick.initiator.linuxscsi``: what Nova asks of it (is multipathd running)."""

from __future__ import annotations

from typing import Any, Optional

from blocklink.hostpaths import HostPaths
from blocklink.initiator.properties import multipathd_running


class LinuxSCSI:
    def __init__(self, root_helper: Optional[str] = None, execute: Any = None, *args: Any, **kwargs: Any) -> None:
        self._root_helper = root_helper

    @staticmethod
    def is_multipath_running(root_helper: Optional[str] = None, execute: Any = None,
                             paths: Optional[HostPaths] = None) -> bool:
        """Whether multipathd listens on its socket (os-brick asks ``multipathd show status``; the
        socket is what that command talks to)."""
        return multipathd_running(paths or HostPaths())
