"""``python -m tests.harness.guest 'command'``: run one command in a fresh guest.

Prints the command's stdout and stderr and exits with its status (124: it timed out; 125: the
guest failed, console tail on stderr). Environment knobs: ``BLOCKLINK_GUEST_TIMEOUT`` (seconds,
default 600), ``BLOCKLINK_GUEST_KEEP=1`` (keep the run dir), ``BLOCKLINK_GUEST_DEBUG=1`` (full
kernel log), ``BLOCKLINK_GUEST_STATS=1`` (boot time and qemu peak RSS on stderr).
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from tests.harness.guest.machine import Guest, GuestError


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    env = os.environ
    timeout = float(env.get("BLOCKLINK_GUEST_TIMEOUT", "600"))
    try:
        guest = Guest.boot(keep=env.get("BLOCKLINK_GUEST_KEEP") == "1", debug=env.get("BLOCKLINK_GUEST_DEBUG") == "1")
    except GuestError as e:
        print(f"guest: {e}", file=sys.stderr)
        return 125
    try:
        res = guest.run(args[0], timeout=timeout, cwd=os.getcwd())
    except GuestError as e:
        print(f"guest: {e}", file=sys.stderr)
        return 125
    finally:
        guest.shutdown()
    sys.stdout.buffer.write(res.stdout_bytes)
    sys.stdout.flush()
    sys.stderr.buffer.write(res.stderr_bytes)
    if env.get("BLOCKLINK_GUEST_STATS") == "1":
        st = guest.stats
        print(f"guest: boot {st.get('boot_seconds', 0):.2f}s, command {res.duration:.2f}s, shutdown "
              f"{st.get('shutdown_seconds', 0):.2f}s, qemu peak RSS {st.get('max_rss_kib', 0) / 1024:.0f} MiB",
              file=sys.stderr)
    if res.timed_out:
        return 124
    return res.exit_code if 0 <= res.exit_code < 256 else 1


if __name__ == "__main__":
    sys.exit(main())
