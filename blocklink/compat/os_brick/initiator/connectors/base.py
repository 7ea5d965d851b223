"""The os-brick connector call surface over one blocklink connector.

os-brick's connectors take the ``data`` part of Cinder's connection info and return/accept plain
dicts; blocklink's take typed infos and :class:`~blocklink.AttachedDevice`. This class converts
between the two and turns blocklink's errors into os-brick's (:func:`..exception.translate`).
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple

import blocklink
from blocklink.compat.os_brick import exception
from blocklink.errors import BlocklinkError
from blocklink.hostpaths import HostPaths
from blocklink.masking import get_logger

LOG = get_logger(__name__)

# os-brick factory keywords with no blocklink counterpart: accepted and not used
_IGNORED = ("root_helper", "driver", "execute", "device_scan_attempts", "device_scan_interval", "arch",
            "conn", "expect_raw_disk", "use_multipath_for_image_xfer", "image_device_path")
# blocklink's own constructor options a caller may pass through (tests, operators who know blocklink)
_PASSTHROUGH = ("executor", "paths", "lock_path", "run_dir")


class BrickConnector:
    """One os-brick connector: ``connect_volume``, ``disconnect_volume`` and friends.

    ``options`` are os-brick's factory keywords; the ones blocklink has a meaning for are mapped
    by :meth:`_options` and the others are accepted and ignored (root_helper: blocklink runs its
    commands through its own privileged seam).
    """

    blocklink_protocol: ClassVar[str] = ""
    search_path: ClassVar[Optional[str]] = None

    def __init__(self, root_helper: Optional[str] = None, driver: Any = None, execute: Any = None,
                 use_multipath: bool = False, device_scan_attempts: int = 3, *args: Any, **kwargs: Any) -> None:
        self._root_helper = root_helper
        self.use_multipath = use_multipath
        self.device_scan_attempts = device_scan_attempts
        opts = {k: kwargs.pop(k) for k in _PASSTHROUGH if k in kwargs}
        for k in _IGNORED:
            kwargs.pop(k, None)
        opts.update(self._options(kwargs))
        if kwargs:
            LOG.debug("%s: ignoring os-brick options %s", type(self).__name__, ", ".join(sorted(kwargs)))
        self.paths: HostPaths = opts.get("paths") or HostPaths()
        self.blocklink = blocklink.connector_for(self.blocklink_protocol, **opts)

    def _options(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """blocklink constructor options from os-brick keywords (pops what it uses)."""
        return {"use_multipath": self.use_multipath}

    # ------------------------------------------------------------------ os-brick API
    @staticmethod
    def get_connector_properties(root_helper: Optional[str], *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return {}

    def connect_volume(self, connection_properties: Mapping[str, Any]) -> Dict[str, Any]:
        info = self._info(connection_properties)
        try:
            dev = self.blocklink.connect_volume(info)
        except BlocklinkError as e:
            raise exception.translate(e, self.blocklink_protocol) from e
        return self._device_info(dev)

    def disconnect_volume(self, connection_properties: Mapping[str, Any], device_info: Optional[Mapping[str, Any]],
                          force: bool = False, ignore_errors: bool = False) -> None:
        """Detach. ``device_info`` may be None (Nova): the device is then the info's ``device_path``,
        and blocklink checks that it still holds this volume before touching it.

        As in os-brick, ``force`` carries on past failed steps and ``ignore_errors`` (with ``force``)
        logs what failed instead of raising it; without ``force`` the first failure is raised."""
        info = self._info(connection_properties)
        device = self._device(connection_properties, device_info)
        try:
            self.blocklink.disconnect_volume(info, device, force=force)
        except BlocklinkError as e:
            if ignore_errors and force:
                LOG.warning("disconnect of %s: ignoring errors as asked: %s", self.blocklink_protocol, e)
                return
            raise exception.translate(e, self.blocklink_protocol) from e

    def extend_volume(self, connection_properties: Mapping[str, Any]) -> int:
        try:
            return int(self.blocklink.extend_volume(self._info(connection_properties)))
        except BlocklinkError as e:
            raise exception.translate(e, self.blocklink_protocol) from e

    def get_volume_paths(self, connection_properties: Mapping[str, Any]) -> List[str]:
        try:
            return list(self.blocklink.get_volume_paths(self._info(connection_properties)))
        except BlocklinkError as e:
            raise exception.translate(e, self.blocklink_protocol) from e

    def get_search_path(self) -> Optional[str]:
        return self.search_path

    def get_all_available_volumes(self, connection_properties: Optional[Mapping[str, Any]] = None) -> List[str]:
        """Every entry of the search path (os-brick's meaning: all volumes of this kind on the host)."""
        path = self.get_search_path()
        if path is None:
            return []
        where = self.paths.from_host(path)
        return sorted(os.path.join(path, n) for n in self.paths.listdir(where))

    def check_valid_device(self, path: Any, run_as_root: bool = True) -> bool:
        """Whether the device (a path, or a handle with read/seek/tell) answers a 4 KiB read."""
        if not path:
            return False
        if not isinstance(path, str):
            return _handle_readable(path)
        return _device_readable(self.paths.from_host(path))

    # ------------------------------------------------------------------ conversions
    def _info(self, connection_properties: Mapping[str, Any]) -> Any:
        if not isinstance(connection_properties, Mapping):
            raise exception.InvalidParameterValue(err="connection_properties must be a dict",
                                                  field="connection_properties")
        try:
            return blocklink.parse_connection_info({"driver_volume_type": self.blocklink_protocol,
                                                    "data": dict(connection_properties)})
        except BlocklinkError as e:
            raise exception.translate(e, self.blocklink_protocol) from e

    def _device(self, props: Mapping[str, Any], device_info: Optional[Mapping[str, Any]]) -> Any:
        """The device to detach: os-brick's device dict, else (Nova) the info's ``device_path`` if
        it still is one of this volume's devices; else None (blocklink then finds the volume's
        devices by its address and WWN).

        A ``device_path`` recorded at attach can name another volume's device by now (the kernel
        reuses sdX names after a path was lost): such a path is never handed to blocklink, whose
        check trusts a caller's device without a WWN when nothing is left at the volume's address.
        Nova's FC driver passes the connection data itself as ``device_info`` (no ``path`` in it, its
        ``device_path`` is the device): such a dict is read as the connection data is."""
        if device_info and "path" in device_info:
            return blocklink.AttachedDevice.from_dict(_known(device_info), self.blocklink_protocol)
        path = props.get("device_path")
        if not isinstance(path, str) or not path.startswith("/dev/"):
            return None
        name = self._kernel_name(path)
        if not self.paths.exists(self.paths.sys("block", name)):
            return None  # gone already: nothing of it to flush
        current = {self._kernel_name(p) for p in self.get_volume_paths(props)}
        slaves = set(self.paths.listdir(self.paths.sys("block", name, "slaves")))
        if name in current or (slaves and slaves <= current):
            return blocklink.AttachedDevice(self.blocklink_protocol, path=path)
        LOG.warning("device_path %s is no longer a device of this volume (now %s); detaching by address",
                    path, ", ".join(sorted(current)) or "none")
        return None

    def _kernel_name(self, path: str) -> str:
        return os.path.basename(self.paths.realpath(self.paths.from_host(path)))

    def _device_info(self, dev: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = {"type": dev.type, "path": dev.path if dev.path is not None else dev.handle}
        if dev.wwn:
            out["scsi_wwn"] = dev.wwn
        if dev.multipath_id:
            out["multipath_id"] = dev.multipath_id
        return out


def _known(device_info: Mapping[str, Any]) -> Dict[str, Any]:
    """The keys of an os-brick device dict blocklink reads (others, such as ``conf``, are dropped)."""
    return {k: device_info[k] for k in ("type", "path", "scsi_wwn", "multipath_id") if k in device_info}


def _handle_readable(handle: Any) -> bool:
    try:
        pos = handle.tell()
    except (OSError, ValueError) as e:
        LOG.error("device handle is not usable: %s", e)
        return False
    try:
        handle.read(4096)
        return True
    except (OSError, ValueError, BlocklinkError) as e:
        LOG.error("reading the device handle failed: %s", e)
        return False
    finally:
        try:
            handle.seek(pos)
        except (OSError, ValueError, BlocklinkError):
            pass


def _device_readable(path: str) -> bool:
    """One 4 KiB read, bypassing the page cache where the file system allows (a dead path fails it)."""
    for flags in (os.O_DIRECT, 0):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
        except OSError as e:
            if e.errno == errno.EINVAL and flags:
                continue  # no O_DIRECT here (tmpfs): a cached read still proves the path is served
            LOG.error("cannot open %s: %s", path, e.strerror)
            return False
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
        try:
            os.readv(fd, [buf])
            return True
        except OSError as e:
            if e.errno == errno.EINVAL and flags:
                continue
            LOG.error("reading %s failed: %s", path, e.strerror)
            return False
        finally:
            buf.close()
            os.close(fd)
    return False


def split_name(connection_properties: Mapping[str, Any]) -> Tuple[str, str]:
    """``pool/image`` of an RBD info's ``name``."""
    name = str(connection_properties.get("name", ""))
    pool, _, image = name.partition("/")
    return pool, image
