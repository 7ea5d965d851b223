"""Guest device names (vdX/sdX/hdX) and SCSI units for a new disk, read from the domain's XML.

Like Nova's ``get_next_disk_info``: the prefix comes from the bus, names are tried in order
``a..z, aa..az, ba..`` and the first one no disk of the domain uses (on any bus: ``sda`` on SCSI
also blocks ``sda`` on SATA) and the caller has not reserved is taken. IDE has four slots.
"""

from __future__ import annotations

import re
from typing import Collection, Iterable, Optional, Set

from blocklink.errors import InvalidDiskConfig, TooManyDevices
from blocklink.hypervisor.disk import BUSES
from blocklink.hypervisor.xml import parse_xml, target_devs

__all__ = ["device_prefix", "device_name", "device_index", "used_device_names", "next_device_name",
           "next_scsi_unit", "TooManyDevices"]

_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "usb": "sd", "ide": "hd", "fdc": "fd", "xen": "xvd"}
_LIMIT = {"ide": 4, "fdc": 2}
_NAME_RE = re.compile(r"^(xvd|vd|sd|hd|fd)([a-z]+)$")


def device_prefix(bus: str) -> str:
    try:
        return _PREFIX[bus]
    except KeyError:
        raise InvalidDiskConfig("bus", f"expected one of {', '.join(BUSES)}; got {str(bus)[:40]!r}") from None


def device_name(prefix: str, index: int) -> str:
    """``index`` 0 -> ``<prefix>a``, 25 -> ``z``, 26 -> ``aa``, 701 -> ``zz``, 702 -> ``aaa``."""
    if index < 0:
        raise ValueError("index must be >= 0")
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return prefix + letters


def device_index(name: str) -> Optional[int]:
    """Inverse of :func:`device_name` (``vdaa`` -> 26); None for names outside the scheme (``sda1``)."""
    m = _NAME_RE.match(name.rsplit("/", 1)[-1])
    if not m:
        return None
    n = 0
    for c in m.group(2):
        n = n * 26 + (ord(c) - ord("a") + 1)
    return n - 1


def used_device_names(*domain_xmls: str) -> Set[str]:
    """Target names in any of the given domain XMLs (pass live and inactive to respect both)."""
    used: Set[str] = set()
    for x in domain_xmls:
        if x:
            used.update(target_devs(x))
    return used


def next_device_name(domain_xml: str, bus: str = "virtio", *, reserved: Iterable[str] = (),
                     max_devices: Optional[int] = None, extra_xml: Iterable[str] = ()) -> str:
    """The first free ``<prefix><letters>`` for ``bus``.

    ``reserved`` are names handed out but not attached yet; ``extra_xml`` more domain XML to
    respect (the persistent definition besides the live one). ``max_devices`` caps the search
    (IDE: 4 regardless).
    """
    prefix = device_prefix(bus)
    used = used_device_names(domain_xml, *extra_xml) | {r.rsplit("/", 1)[-1] for r in reserved}
    limit = _LIMIT.get(bus, max_devices)
    if max_devices is not None and limit is not None:
        limit = min(limit, max_devices)
    # at most len(used) names can be taken, so the answer is within the first len(used)+1
    for i in range((len(used) + 1) if limit is None else limit):
        name = device_name(prefix, i)
        if name not in used:
            return name
    raise TooManyDevices("target_dev", f"no free {prefix}X name on bus {bus!r} (limit {limit})")


def next_scsi_unit(domain_xml: str, controller: int = 0, *, reserved: Collection[int] = (),
                   max_units: int = 256) -> int:
    """The lowest free ``unit`` on SCSI ``controller`` among the domain's drive addresses."""
    root = parse_xml(domain_xml, "domain")
    used = set(reserved)
    for disk in root.findall("./devices/disk"):
        t = disk.find("target")
        addr = disk.find("address")
        if t is None or t.get("bus") != "scsi" or addr is None or addr.get("type") != "drive":
            continue
        try:
            if int(addr.get("controller", "0"), 0) == controller:
                used.add(int(addr.get("unit", "0"), 0))
        except ValueError:
            continue
    for unit in range(max_units):
        if unit not in used:
            return unit
    raise TooManyDevices("unit", f"no free unit on SCSI controller {controller} (limit {max_units})")
