"""``get_connector_properties`` with os-brick's key meanings, on top of blocklink's.

Where os-brick and blocklink's own :func:`blocklink.get_connector_properties` differ, this follows
os-brick (blocklink's API keeps its documented choice):

* ``uuid`` is the UUID of the file system mounted at ``/`` (os-brick: ``findmnt`` + ``blkid``; here
  read from /proc/self/mountinfo and /dev/disk/by-uuid), absent when ``/`` is not a block device;
  ``system uuid`` is the DMI product UUID (blocklink's ``uuid``).
* With the nvme CLI installed, a missing /etc/nvme/hostnqn (``nqn.2014-08.org.nvmexpress:uuid:`` +
  the system UUID) and /etc/nvme/hostid (the system UUID, else a random one) are created, 0644.
* ``nvme_native_multipath`` says whether nvme_core runs with native multipath.
* No ``found_dsc`` / ``host_ips``: os-brick's LightOS connector adds them, and the facade has no LightOS.
"""

from __future__ import annotations

import os
import shutil
import uuid as uuidlib
from typing import Any, Dict, Optional

import blocklink
from blocklink.compat.os_brick.exception import translate
from blocklink.errors import BlocklinkError
from blocklink.hostpaths import HostPaths
from blocklink.masking import get_logger

LOG = get_logger(__name__)
NQN_PREFIX = "nqn.2014-08.org.nvmexpress:uuid:"


def root_fs_uuid(paths: HostPaths) -> Optional[str]:
    """UUID of the file system on ``/``: its device number from mountinfo, matched in /dev/disk/by-uuid."""
    majmin = None
    for line in (paths.read(paths.procpath("self", "mountinfo"), "") or "").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            majmin = fields[2]  # the last mount on / is the one in effect
    if not majmin or majmin.startswith("0:"):
        return None  # major 0: no block device (overlay, tmpfs, 9p)
    dev = os.path.basename(paths.realpath(paths.sys("dev", "block", majmin)))
    by_uuid = paths.devpath("disk", "by-uuid")
    for name in sorted(paths.listdir(by_uuid)):
        if os.path.basename(paths.realpath(os.path.join(by_uuid, name))) == dev:
            return name
    return None


def system_uuid(paths: HostPaths) -> Optional[str]:
    value = paths.read(paths.sys("class", "dmi", "id", "product_uuid"))
    return value.lower() if value else None


def _ensure(path: str, content: str) -> Optional[str]:
    """The file's stripped text, written first (0644) when missing; None if it cannot be had."""
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        pass
    except OSError as e:
        LOG.warning("cannot read %s: %s", path, e.strerror)
        return None
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(content + "\n")
    except FileExistsError:
        return _ensure(path, content)  # written by a concurrent caller: use theirs
    except OSError as e:
        LOG.warning("cannot create %s: %s", path, e.strerror)
        return None
    LOG.info("created %s", path)
    return content


def nvme_properties(paths: HostPaths, nvme_cli: bool) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    suuid = system_uuid(paths)
    if nvme_cli:
        nqn = _ensure(paths.etcpath("nvme", "hostnqn"), NQN_PREFIX + (suuid or str(uuidlib.uuid4())))
        hostid = _ensure(paths.etcpath("nvme", "hostid"), suuid or str(uuidlib.uuid4()))
        if nqn:
            out["nqn"] = nqn
        if hostid:
            out["nvme_hostid"] = hostid
    fs_uuid = root_fs_uuid(paths)
    if fs_uuid:
        out["uuid"] = fs_uuid
    if suuid:
        out["system uuid"] = suuid
    out["nvme_native_multipath"] = paths.read(paths.sys("module", "nvme_core", "parameters", "multipath")) == "Y"
    return out


def connector_properties(my_ip: Optional[str], multipath: bool, enforce_multipath: bool,
                         host: Optional[str] = None, *, paths: Optional[HostPaths] = None,
                         nvme_cli: Optional[bool] = None) -> Dict[str, Any]:
    """The host connector dict os-brick returns for the same host (see the module docstring)."""
    paths = paths or HostPaths()
    try:
        props = blocklink.get_connector_properties(ip=my_ip, host=host, multipath=multipath,
                                                   enforce_multipath=enforce_multipath, paths=paths)
    except BlocklinkError as e:
        raise translate(e) from e
    for key in ("uuid", "nqn", "nvme_hostid"):  # blocklink's meanings; replaced by os-brick's below
        props.pop(key, None)
    props.update(nvme_properties(paths, shutil.which("nvme") is not None if nvme_cli is None else nvme_cli))
    return props
