"""An os-brick-compatible facade over blocklink: run Nova and Cinder, unmodified, on blocklink.

``activate()`` makes ``import os_brick`` (and ``os_brick.<sub>``) resolve to these modules in the
current process, even where the real os-brick is installed (Nova and Cinder depend on it);
``deactivate()`` gives the real one back. Nothing here is loaded by ``import blocklink``.

Turning it on for nova-compute / cinder-volume / cinder-backup without patching them (opt-in):
install a ``.pth`` file in the service's site-packages whose one line is::

    import os; os.environ.get("BLOCKLINK_OS_BRICK") == "1" and __import__("blocklink.compat.os_brick.hook")

and start the service with ``BLOCKLINK_OS_BRICK=1`` (e.g. ``Environment=`` in its systemd unit).
``.pth`` lines run at interpreter start, before the service imports anything.

What Nova 34.0.0 and Cinder 29.0.0 use, read from their installed sources (all provided here):

* ``os_brick.setup(conf)``; ``os_brick.initiator``: protocol constants (ISCSI, FIBRE_CHANNEL, NVME,
  NVMEOF, RBD, ... ) and ``DEVICE_SCAN_ATTEMPTS_DEFAULT``.
* ``os_brick.initiator.connector``: ``get_connector_properties(root_helper, my_ip, multipath,
  enforce_multipath, host=None, execute=None)``; ``InitiatorConnector.factory(protocol, root_helper,
  driver=None, use_multipath=False, device_scan_attempts=3, arch=None, **kw)`` with Nova's
  ``transport``/``enforce_multipath`` and Cinder's ``conn``/``expect_raw_disk``.
* connectors: ``connect_volume(data)`` -> ``{'type', 'path', 'scsi_wwn', 'multipath_id'}`` (RBD:
  ``{'path': RBDVolumeIOWrapper}``); ``disconnect_volume(data, device_info_or_None, force=,
  ignore_errors=)``; ``extend_volume`` (bytes); ``check_valid_device(path, run_as_root)``;
  ``get_volume_paths``; ``get_search_path``; ``get_all_available_volumes``.
* ``os_brick.initiator.connectors.{iscsi.ISCSIConnector, fibre_channel.FibreChannelConnector}``
  (Cinder's isinstance checks); ``os_brick.initiator.linuxrbd.{RBDImageMetadata, RBDVolumeIOWrapper}``
  (Cinder's Ceph backup driver: ``rbd_image``, ``rbd_pool``, ``rbd_user``, ``rbd_conf``).
* ``os_brick.initiator.linuxscsi.LinuxSCSI.is_multipath_running``; ``os_brick.initiator.utils.
  guard_connection``; ``os_brick.exception`` (BrickException, VolumeDeviceNotFound,
  InvalidConnectorProtocol, ExceptionChainer, ...); ``os_brick.executor.Executor`` (Cinder's LVM
  helper); ``os_brick.constants`` (SCSI addressing modes).
* ``os_brick.encryptors`` (``get_volume_encryptor``, ``get_encryption_metadata``, the provider maps) and
  ``.luks`` (``LuksEncryptor``, ``Luks2Encryptor``, ``is_luks``): host-side LUKS on blocklink.encryption.

Not provided (an import fails naming the facade): remotefs (NFS, GlusterFS, VZStorage), the other
vendors' connectors, ``os_brick.privileged``, ``os_brick.local_dev``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from types import ModuleType
from typing import Any, Dict, Optional, Sequence

from blocklink.errors import BlocklinkError

__version__ = "7.1.1+blocklink"
_PREFIX = __name__  # blocklink.compat.os_brick
_PROVIDED = ("constants", "encryptors", "encryptors.base", "encryptors.luks", "encryptors.nop", "exception",
             "executor", "hostprops", "initiator",
             "initiator.connector", "initiator.connectors", "initiator.connectors.base",
             "initiator.connectors.fibre_channel", "initiator.connectors.iscsi", "initiator.connectors.nvmeof",
             "initiator.connectors.rbd", "initiator.linuxrbd", "initiator.linuxscsi", "initiator.utils")


class AlreadyImported(BlocklinkError, ImportError):
    """``activate()`` came after something had imported the real os-brick (``modules`` names it)."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = tuple(modules)
        super().__init__("the real os-brick is already imported (" + ", ".join(self.modules[:5])
                         + "); activate the facade before anything imports os_brick, or pass replace=True")


class NotProvided(BlocklinkError, ModuleNotFoundError):
    def __init__(self, name: str) -> None:
        self.module = name
        super().__init__(f"{name} is not provided by blocklink's os-brick facade "
                         f"(provided: os_brick, {', '.join('os_brick.' + p for p in _PROVIDED)})", name=name)


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the facade module ran when it was imported under its own name


class _Finder(importlib.abc.MetaPathFinder):
    """Resolves ``os_brick.X`` to ``blocklink.compat.os_brick.X`` (ahead of every other finder)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != "os_brick" and not fullname.startswith("os_brick."):
            return None
        sub = fullname[len("os_brick."):] if fullname != "os_brick" else ""
        if sub and sub not in _PROVIDED:
            raise NotProvided(fullname)
        target_name = f"{_PREFIX}.{sub}" if sub else _PREFIX
        is_pkg = sub in ("", "encryptors", "initiator", "initiator.connectors")
        return importlib.machinery.ModuleSpec(fullname, _Alias(target_name), is_package=is_pkg)


_lock = threading.Lock()
_finder: Optional[_Finder] = None
_saved: Dict[str, ModuleType] = {}


def _real_modules() -> Dict[str, ModuleType]:
    return {n: m for n, m in sys.modules.items()
            if (n == "os_brick" or n.startswith("os_brick.")) and not getattr(m, "__name__", "").startswith(_PREFIX)}


def activate(replace: bool = False) -> None:
    """Make ``os_brick`` mean this facade in this process (idempotent).

    If the real os-brick is already imported this raises :class:`AlreadyImported`: modules that
    imported it keep references to it. ``replace=True`` swaps the ``sys.modules`` entries anyway
    (new imports get the facade; :func:`deactivate` restores the real ones).
    """
    global _finder
    with _lock:
        if _finder is not None:
            return
        real = _real_modules()
        if real and not replace:
            raise AlreadyImported(sorted(real))
        for name in real:
            _saved[name] = sys.modules.pop(name)
        _finder = _Finder()
        sys.meta_path.insert(0, _finder)
        importlib.invalidate_caches()


def deactivate() -> None:
    """Undo :func:`activate`: ``os_brick`` is the real package again for new imports."""
    global _finder
    with _lock:
        if _finder is None:
            return
        sys.meta_path.remove(_finder)
        _finder = None
        for name in [n for n in sys.modules if n == "os_brick" or n.startswith("os_brick.")]:
            if getattr(sys.modules[name], "__name__", "").startswith(_PREFIX):
                del sys.modules[name]
        sys.modules.update(_saved)
        _saved.clear()


def is_active() -> bool:
    return _finder is not None


def setup(conf: Any, **kwargs: Any) -> None:
    """os-brick's service hook (``os_brick.setup(CONF)``): blocklink reads no global configuration, so
    there is nothing to set; kept so services call it unchanged."""


__all__ = ["activate", "deactivate", "is_active", "setup", "AlreadyImported", "NotProvided"]
