"""A pair of network namespaces joined by a veth link, for target/initiator tests.

::

    with NetnsPair.create() as net:            # "blt-<id>" (target side) and "blh-<id>" (host side)
        net.target_ip, net.host_ip              # e.g. 10.77.23.1 and 10.77.23.2, only inside them
        subprocess.run(net.host_argv(["iscsi-ls", ...]))   # run something on the host side

Addresses exist only inside the two namespaces, so test traffic never leaves the machine.
:meth:`destroy` deletes both namespaces (which removes the veth pair); stop any process you
started inside them first.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence

NETNS_DIR = "/run/netns"


class NetnsError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {p.stderr.strip()}")


@dataclass
class NetnsPair:
    target_ns: str
    host_ns: str
    target_ip: str
    host_ip: str
    prefix_len: int = 24
    _destroyed: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, tag: Optional[str] = None, subnet: Optional[str] = None) -> "NetnsPair":
        """Create ``blt-<tag>``/``blh-<tag>`` with ``<subnet>.1`` (target) and ``<subnet>.2`` (host).

        ``subnet`` is the first three octets (default ``10.77.<random>``).
        """
        tag = tag or secrets.token_hex(3)
        if not tag.isalnum() or len(tag) > 8:
            raise NetnsError("tag must be at most 8 letters or digits")
        subnet = subnet or f"10.77.{secrets.randbelow(250) + 1}"
        pair = cls(target_ns=f"blt-{tag}", host_ns=f"blh-{tag}", target_ip=f"{subnet}.1", host_ip=f"{subnet}.2")
        vt, vh = f"blvt{tag}", f"blvh{tag}"  # interface names: at most 15 characters
        try:
            _ip("netns", "add", pair.target_ns)
            _ip("netns", "add", pair.host_ns)
            _ip("link", "add", vt, "type", "veth", "peer", "name", vh)
            _ip("link", "set", vt, "netns", pair.target_ns)
            _ip("link", "set", vh, "netns", pair.host_ns)
            for ns, dev, addr in ((pair.target_ns, vt, pair.target_ip), (pair.host_ns, vh, pair.host_ip)):
                _ip("-n", ns, "addr", "add", f"{addr}/{pair.prefix_len}", "dev", dev)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            pair.destroy()
            try:  # a veth created before the move to the namespaces would stay in the root one
                _ip("link", "del", vt)
            except NetnsError:
                pass
            raise
        return pair

    def argv(self, ns: str, argv: Sequence[str]) -> List[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def target_argv(self, argv: Sequence[str]) -> List[str]:
        return self.argv(self.target_ns, argv)

    def host_argv(self, argv: Sequence[str]) -> List[str]:
        """``argv`` run on the host side (``ip netns exec``; private mount namespace, remounted /sys)."""
        return self.argv(self.host_ns, argv)

    def host_nsenter_argv(self, argv: Sequence[str]) -> List[str]:
        """``argv`` with only the host side's *network* namespace (mounts stay shared, e.g. FUSE)."""
        return ["nsenter", f"--net={NETNS_DIR}/{self.host_ns}", *argv]

    def run_host(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, timeout: float = 60,
                 **kw: Any) -> "subprocess.CompletedProcess[str]":
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run(self.host_argv(argv), capture_output=True, text=True, env=e, timeout=timeout, **kw)

    def exists(self) -> bool:
        return any(os.path.exists(os.path.join(NETNS_DIR, n)) for n in (self.target_ns, self.host_ns))

    def destroy(self) -> None:
        if self._destroyed:
            return
        for ns in (self.target_ns, self.host_ns):
            if os.path.exists(os.path.join(NETNS_DIR, ns)):
                _ip("netns", "del", ns)
        self._destroyed = True

    def __enter__(self) -> "NetnsPair":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.destroy()
