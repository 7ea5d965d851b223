"""Stage 2 of the guest boot (the bash script that runs as PID 1 after ``switch_root``) and its settings.

The initramfs ``/init`` prepares the environment (busybox in RAM is fast; every exec from the 9p
root costs ~0.3 s under TCG); stage 2 starts systemd-udevd and runs the agent (which executes
the host's commands) in the foreground; when the agent exits it powers the guest off. Bash as
PID 1 also reaps the orphans of daemons the tests start with ``setsid``.

What a test finds in the guest:

- the host's ``/`` read-only; RAM overlays on /etc /var /tmp /root ...; tmpfs /run and /dev/shm;
- configfs mounted on /sys/kernel/config; loopback up with extra addresses (``LOOPBACK_ADDRS``);
- ``systemd-udevd`` running without coldplug, so /dev/disk/by-path and by-id links appear;
- /etc/iscsi/initiatorname.iscsi naming ``INITIATOR_IQN``; /etc/iscsi and /etc/multipath writable;
- the host folders shared read-write mounted at their host paths.
"""

from __future__ import annotations

import ipaddress
import shlex
from typing import Sequence, Tuple

INITIATOR_IQN = "iqn.2004-10.org.blocklink:guest"
LOOPBACK_ADDRS = ("127.0.0.2", "127.0.0.3")
HOSTNAME = "blguest"

STAGE2_SCRIPT = r"""#!/bin/bash
# PID 1 of the blocklink test guest after switch_root (the initramfs /init prepared the rest).
. /run/blguest/config.sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
say() { echo "blguest: $* (uptime $(cut -d' ' -f1 /proc/uptime))" > /dev/console; }
/lib/systemd/systemd-udevd --daemon > /dev/null 2>&1 || say "systemd-udevd did not start"
say "starting the agent"
"$AGENT_PYTHON" -I -S "$AGENT" --port "$AGENT_PORT" < /dev/null > /dev/console 2>&1
say "agent exited ($?), powering off"
udevadm control --exit 2> /dev/null
sync
/bin/busybox poweroff -f
"""


def config_sh(*, agent_python: str, agent: str, agent_port: str, initiator_iqn: str = INITIATOR_IQN,
              loopback_addrs: Sequence[str] = LOOPBACK_ADDRS, hostname: str = HOSTNAME, guest_modules: str = "") -> str:
    """The ``config.sh`` /init (busybox sh) and stage 2 source: POSIX assignments, every value quoted.

    ``guest_modules``: a ``lib/modules`` folder /init lays over the host's (a kernel the host does not boot)."""
    q = shlex.quote
    if guest_modules and (not guest_modules.startswith("/") or any(c in guest_modules for c in ":,\n")):
        raise ValueError(f"guest_modules {guest_modules!r}: an absolute path without ':' ',' or newlines")
    for a in loopback_addrs:
        ipaddress.IPv4Address(a)
    lines = [
        f"AGENT_PYTHON={q(agent_python)}",
        f"AGENT={q(agent)}",
        f"AGENT_PORT={q(agent_port)}",
        f"INITIATOR_IQN={q(initiator_iqn)}",
        f"GUEST_HOSTNAME={q(hostname)}",
        f"LOOPBACK_ADDRS={q(' '.join(loopback_addrs))}",
        f"GUEST_MODULES={q(guest_modules)}",
    ]
    return "\n".join(lines) + "\n"


def rwdirs_file(rw_dirs: Sequence[Tuple[str, str]]) -> str:
    """``tag dir`` lines for the shared folders /init mounts (a dir may hold spaces, not newlines)."""
    for _, d in rw_dirs:
        if "\n" in d or not d.startswith("/"):
            raise ValueError(f"shared folder {d!r}: must be an absolute path without newlines")
    return "".join(f"{t} {d}\n" for t, d in rw_dirs)
