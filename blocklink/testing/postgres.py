"""A throwaway PostgreSQL server on a private unix socket (no TCP), for shared-store tests.

Runs as the ``postgres`` system user (PostgreSQL refuses root) in a temporary directory; stopped
by its PID (``postmaster.pid``) and removed on ``stop()``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from blocklink.testing.procs import stop_pids


def _bindir() -> str:
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not cands:
        raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql)")
    return os.path.dirname(cands[-1])


@dataclass
class PostgresServer:
    directory: str
    bindir: str
    pid: int = 0

    @classmethod
    def start(cls, user: str = "postgres") -> "PostgresServer":
        bindir = _bindir()
        pw = pwd.getpwnam(user)
        d = tempfile.mkdtemp(prefix="blocklink-pg.")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        srv = cls(directory=d, bindir=bindir)

        def as_user() -> None:
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

        data = os.path.join(d, "data")
        try:
            subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres",
                            "--no-sync"], check=True, capture_output=True, preexec_fn=as_user, cwd=d)
            subprocess.run([os.path.join(bindir, "pg_ctl"), "-D", data, "-l", os.path.join(d, "log"), "-w",
                            "-o", f"-k {d} -c listen_addresses='' -c fsync=off", "start"],
                           check=True, capture_output=True, preexec_fn=as_user, cwd=d)
            with open(os.path.join(data, "postmaster.pid")) as f:
                srv.pid = int(f.readline())
        except BaseException:
            srv.stop()
            raise
        return srv

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@/postgres?host={self.directory}"

    def stop(self) -> None:
        if self.pid:
            stop_pids([self.pid], must_contain="postgres")
            self.pid = 0
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["PostgresServer"]
