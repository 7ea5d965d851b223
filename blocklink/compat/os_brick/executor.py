"""``os_brick.executor``: the base class Cinder's LVM helper (``cinder.brick.local_dev.lvm``) extends.

It holds the command runner and root helper its subclasses call through ``self._execute``; by
default commands run through ``oslo_concurrency.processutils``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple


def _default_execute(*cmd: str, **kwargs: Any) -> Tuple[str, str]:
    from oslo_concurrency import processutils

    return processutils.execute(*cmd, **kwargs)


class Executor:
    def __init__(self, root_helper: Optional[str], execute: Optional[Callable[..., Tuple[str, str]]] = None,
                 *args: Any, **kwargs: Any) -> None:
        self.set_execute(execute or _default_execute)
        self.set_root_helper(root_helper)

    @staticmethod
    def safe_decode(value: Any) -> Any:
        return value.decode("utf-8", "ignore") if isinstance(value, bytes) else value

    def _execute(self, *args: Any, **kwargs: Any) -> Tuple[str, str]:
        out, err = self._run(*args, **kwargs)
        return self.safe_decode(out), self.safe_decode(err)

    def set_execute(self, execute: Callable[..., Tuple[str, str]]) -> None:
        self._run = execute

    def set_root_helper(self, helper: Optional[str]) -> None:
        self._root_helper = helper
