"""Device-mapper multipath: find a volume's map in sysfs, drive multipathd, parse ``multipath -ll``.

A map is found from sysfs alone (``/sys/block/dm-N/dm/uuid`` is ``mpath-<wwid>``; ``slaves/``
lists its paths), which is exact and works with or without user_friendly_names. Commands go to
``multipath``/``multipathd`` only to change state: add a WWID and paths, flush, resize, remove.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

from blocklink.errors import CommandFailed, DeviceNotFound
from blocklink.executor import Executor
from blocklink.hostpaths import HostPaths
from blocklink.initiator.host.wait import wait_for
from blocklink.initiator.host.wwn import same_wwn
from blocklink.masking import get_logger

LOG = get_logger(__name__)

UUID_PREFIX = "mpath-"
# multipath prints log lines before the topology: "Oct 13 10:24:01 | ..." (syslog-style stamp,
# older releases) or "283.261570 | ..." (monotonic seconds, 0.8+); also ANSI bold on a tty.
_LOG_LINE = re.compile(r"^\s*(?:[A-Z][a-z]{2}\s+\d+\s+[\d:]+|\d+(?:\.\d+)?)\s+\|")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ACTIONS = ("create", "reload", "switchpg", "rename", "resize", "unchanged", "reject", "remove")
_HEADER = re.compile(r"^(?:(?P<action>%s):\s+)?(?P<name>\S+)(?:\s+\((?P<wwid>[^)\s]+)\))?\s+"
                     r"(?P<dm>dm-\d+|undef)(?:\s+(?P<vp>.*?))?\s*$" % "|".join(_ACTIONS))
_PATH = re.compile(r"^[\s|`\-+]*(?P<hctl>\d+:\d+:\d+:\d+)\s+(?P<dev>\S+)\s+(?P<majmin>\d+:\d+)"
                   r"(?:\s+(?P<dm_state>\S+))?(?:\s+(?P<checker>\S+))?(?:\s+(?P<dev_state>\S+))?")


@dataclass(frozen=True)
class MultipathPath:
    hctl: str
    device: str  # sdX
    majmin: str
    dm_state: str = ""
    checker_state: str = ""
    dev_state: str = ""


@dataclass
class MultipathMap:
    """One map of ``multipath -ll`` / ``-l`` output."""

    name: str
    wwid: str
    dm: str  # "dm-N" ("undef" before the kernel has it)
    vendor_product: str = ""
    size: str = ""
    action: str = ""
    paths: List[MultipathPath] = field(default_factory=list)

    @property
    def device(self) -> str:
        return f"/dev/mapper/{self.name}"


def parse_multipath(text: Optional[str]) -> List[MultipathMap]:
    """Every map in ``multipath -ll``/``-l`` output, tolerating log lines, wrapped header lines,
    blank lines, ANSI colour and vendor names with spaces."""
    maps: List[MultipathMap] = []
    cur: Optional[MultipathMap] = None
    for raw in (text or "").splitlines():
        line = _ANSI.sub("", raw).rstrip()
        if not line.strip() or _LOG_LINE.match(line):
            continue
        m = _PATH.match(line)
        if m and cur is not None:
            cur.paths.append(MultipathPath(m.group("hctl"), m.group("dev"), m.group("majmin"),
                                           m.group("dm_state") or "", m.group("checker") or "",
                                           m.group("dev_state") or ""))
            continue
        if line.lstrip().startswith("size="):
            if cur is not None:
                size = line.split("size=", 1)[1].split()
                cur.size = size[0] if size else ""  # a line cut short by a killed command
            continue
        if line[:1] in (" ", "|", "`", "\t") or "policy=" in line or "=" in line.split(" ", 1)[0]:
            continue  # path-group lines and wrapped continuation of the size line (" wp=rw")
        h = _HEADER.match(line)
        if h:
            cur = MultipathMap(h.group("name"), h.group("wwid") or h.group("name"), h.group("dm"),
                               (h.group("vp") or "").strip(), action=h.group("action") or "")
            maps.append(cur)
    return maps


# ---------------------------------------------------------------------------------------------
# sysfs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DmMap:
    dm: str  # dm-N
    name: str  # /dev/mapper name
    wwid: str
    slaves: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"/dev/{self.dm}"


def read_map(paths: HostPaths, dm: str) -> Optional[DmMap]:
    uuid = paths.read(paths.sys("block", dm, "dm", "uuid"), "") or ""
    if not uuid.startswith(UUID_PREFIX):
        return None
    return DmMap(dm, paths.read(paths.sys("block", dm, "dm", "name"), "") or "", uuid[len(UUID_PREFIX):],
                 tuple(paths.listdir(paths.sys("block", dm, "slaves"))))


def multipath_maps(paths: HostPaths) -> List[DmMap]:
    out = []
    for name in paths.listdir(paths.sys("block")):
        if name.startswith("dm-"):
            m = read_map(paths, name)
            if m is not None:
                out.append(m)
    return out


def map_for_wwid(paths: HostPaths, wwid: str) -> Optional[DmMap]:
    for m in multipath_maps(paths):
        if same_wwn(wwid, m.wwid):
            return m
    return None


def map_holding(paths: HostPaths, devices: Iterable[str]) -> Optional[DmMap]:
    """The multipath map that has any of ``devices`` (sdX names) as a path."""
    for dev in devices:
        for holder in paths.listdir(paths.sys("block", dev, "holders")):
            m = read_map(paths, holder)
            if m is not None:
                return m
    return None


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

class Multipath:
    """multipath/multipathd commands through an :class:`Executor`."""

    def __init__(self, executor: Executor, paths: HostPaths, timeout: float = 60.0) -> None:
        self.executor = executor
        self.paths = paths
        self.timeout = timeout

    def _run(self, argv: Sequence[str], ok: Sequence[int] = (0,), timeout: Optional[float] = None) -> str:
        return self.executor.run(list(argv), ok_codes=ok, timeout=timeout or self.timeout).stdout

    def running(self) -> bool:
        try:
            out = self._run(["multipathd", "show", "status"], timeout=10)
        except CommandFailed:
            return False
        return not out.lstrip().startswith("error receiving packet")  # old multipathd: error text, exit 0

    def add_wwid(self, wwid: str) -> bool:
        """Record ``wwid`` as multipath (needed with find_multipaths strict/yes); True if added now."""
        out = self._run(["multipath", "-a", wwid], ok=(0, 1))
        return out.strip() == f"wwid '{wwid}' added"

    def add_path(self, device: str) -> bool:
        """Ask multipathd to (re)consider a path device (``/dev/sdX``)."""
        return self._run(["multipathd", "add", "path", device], ok=(0, 1), timeout=30).strip() == "ok"

    def del_path(self, device: str) -> bool:
        return self._run(["multipathd", "del", "path", device], ok=(0, 1), timeout=30).strip() == "ok"

    def usable(self, dm: str) -> bool:
        """``multipath -C``: whether the map has a usable path."""
        try:
            self._run(["multipath", "-C", dm], timeout=30)
        except CommandFailed:
            return False
        return True

    def flush(self, name: str) -> None:
        """Flush and remove the map; raises :class:`CommandFailed` if it is open or I/O is stuck."""
        self._run(["multipath", "-f", name])

    def del_map(self, name: str) -> bool:
        return self._run(["multipathd", "del", "map", name], ok=(0, 1), timeout=30).strip() == "ok"

    def resize(self, name: str) -> None:
        """``multipathd resize map``; anything but "ok" (exit 0 or 1) raises :class:`CommandFailed`
        carrying multipathd's answer ("fail", "timeout") in its text."""
        res = self.executor.run(["multipathd", "resize", "map", name], ok_codes=(0, 1), timeout=self.timeout)
        answer = res.stdout.strip()
        if res.exit_code != 0 or answer != "ok":
            raise CommandFailed(res.argv, res.exit_code, res.stdout, res.stderr,
                                f"multipathd answered {answer[:80]!r}")

    def show(self, name: str) -> Optional[MultipathMap]:
        maps = parse_multipath(self._run(["multipath", "-ll", name], ok=(0, 1)))
        return maps[0] if maps else None


def wait_for_map(mp: Multipath, wwid: str, names: Sequence[str], *, timeout: float, uevents: bool = True,
                 min_paths: int = 1) -> Optional[DmMap]:
    """Make ``names`` (sdX paths of LU ``wwid``) a multipath map and wait for it: records the WWID
    (find_multipaths strict/yes), hands multipathd the paths it lacks, then waits for a map holding
    them all. After ``timeout`` a map with at least ``min_paths`` of them is accepted; else None."""
    paths = mp.paths
    m = map_for_wwid(paths, wwid)
    if m is None or not set(names) <= set(m.slaves):
        mp.add_wwid(wwid)
        for n in names:
            if m is None or n not in m.slaves:
                mp.add_path(paths.to_host(paths.devpath(n)))

    def check() -> Optional[DmMap]:
        found = map_for_wwid(paths, wwid)
        return found if found is not None and set(names) <= set(found.slaves) else None

    try:
        return wait_for(check, timeout=timeout, watch=[paths.dev, paths.devpath("mapper")], uevents=uevents,
                        what=f"multipath map mpath-{wwid}")
    except DeviceNotFound:
        found = map_for_wwid(paths, wwid)
        if found is not None and len(set(names) & set(found.slaves)) >= min_paths:
            return found
        return None


__all__ = ["MultipathPath", "MultipathMap", "parse_multipath", "DmMap", "read_map", "multipath_maps",
           "map_for_wwid", "map_holding", "Multipath", "UUID_PREFIX", "wait_for_map"]
