"""The one seam for running commands.

Everything blocklink runs goes through an :class:`Executor`. The default, :class:`ProcessExecutor`,
uses ``oslo_concurrency.processutils.execute`` (argument lists, never a shell) and prefixes a root
helper (``sudo``, ``sudo blocklink-rootwrap ...``) when :func:`blocklink.privileged.separated` says
privileged work leaves this process (not root, or ``BLOCKLINK_PRIVSEP=force``). Tests pass a recorder.

Secrets never go on a command line: callers pass them on stdin or in 0600 files. As a guard,
:class:`~blocklink.masking.Secret` objects in ``argv`` are refused, and every argv that reaches a
log or an exception is masked.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

from blocklink.errors import CommandFailed, CommandTimeout
from blocklink.masking import Secret, get_logger, mask_argv, mask_text
from blocklink import privileged

LOG = get_logger(__name__)

Input = Union[str, bytes, None]


@dataclass(frozen=True)
class CommandResult:
    argv: Tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    seconds: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@runtime_checkable
class Executor(Protocol):
    def run(self, argv: Sequence[str], *, input: Input = None, check: bool = True,
            ok_codes: Sequence[int] = (0,), timeout: Optional[float] = None,
            env: Optional[Mapping[str, str]] = None, root: bool = True) -> CommandResult:
        """Run ``argv``; raise :class:`CommandFailed` on an exit code outside ``ok_codes`` if ``check``."""


def _check_argv(argv: Sequence[str]) -> Tuple[str, ...]:
    out = []
    for a in argv:
        if isinstance(a, Secret):
            raise TypeError("a Secret must not be passed on a command line; use input= or a 0600 file")
        if not isinstance(a, str):
            a = str(a)
        if "\x00" in a:
            raise ValueError("NUL byte in a command argument")
        out.append(a)
    if not out:
        raise ValueError("empty command")
    return tuple(out)


class ProcessExecutor:
    """Runs commands with ``processutils.execute``; ``root_helper`` (e.g. ``"sudo"``) when privilege is
    separated (:func:`blocklink.privileged.separated`)."""

    def __init__(self, root_helper: Union[str, Sequence[str], None] = None,
                 default_timeout: Optional[float] = 120.0, env: Optional[Mapping[str, str]] = None) -> None:
        if isinstance(root_helper, str):
            root_helper = shlex.split(root_helper)
        self.root_helper: Tuple[str, ...] = tuple(root_helper or ())
        self.default_timeout = default_timeout
        self.env: Dict[str, str] = {"LC_ALL": "C", "LANG": "C"}  # we parse outputs
        self.env.update(env or {})

    def run(self, argv: Sequence[str], *, input: Input = None, check: bool = True,
            ok_codes: Sequence[int] = (0,), timeout: Optional[float] = None,
            env: Optional[Mapping[str, str]] = None, root: bool = True) -> CommandResult:
        from oslo_concurrency import processutils  # lazy: `import blocklink` stays light

        cmd = _check_argv(argv)
        if root and self.root_helper and privileged.separated():
            cmd = self.root_helper + cmd
        shown = tuple(mask_argv(cmd))
        envvars = dict(os.environ)  # processutils replaces the environment wholesale
        envvars.update(self.env)
        envvars.update(env or {})
        tmo = timeout if timeout is not None else self.default_timeout
        procs: list[subprocess.Popen[bytes]] = []
        t0 = time.monotonic()
        LOG.debug("run: %s", " ".join(shlex.quote(a) for a in shown))
        try:
            out, err = processutils.execute(
                *cmd, process_input=input, env_variables=envvars, check_exit_code=False,
                timeout=tmo, loglevel=5,  # type: ignore[arg-type]
                on_execute=procs.append)
        except processutils.ProcessExecutionError as e:  # timeout or failure to spawn
            secs = time.monotonic() - t0
            msg = mask_text(str(e.stderr or e.description or ""))
            if tmo and secs >= tmo * 0.9:
                raise CommandTimeout(shown, None, "", msg, f"timed out after {secs:.1f}s") from None
            raise CommandFailed(shown, e.exit_code if isinstance(e.exit_code, int) else None, "", msg) from None
        except subprocess.TimeoutExpired:  # processutils re-raises this and leaves the child running
            for proc in procs:
                proc.kill()
                proc.wait()
            raise CommandTimeout(shown, None, "", "", f"timed out after {tmo}s") from None
        except OSError as e:
            raise CommandFailed(shown, None, "", "", f"cannot run {cmd[0]}: {e.strerror}") from None
        secs = time.monotonic() - t0
        stdout = out.decode(errors="replace") if isinstance(out, bytes) else out
        stderr = err.decode(errors="replace") if isinstance(err, bytes) else err
        rc = procs[0].returncode if procs and procs[0].returncode is not None else -1
        res = CommandResult(shown, rc, stdout, stderr, secs)
        LOG.debug("exit %d in %.3fs: %s", rc, secs, shown[0])
        if check and rc not in ok_codes:
            raise CommandFailed(shown, rc, mask_text(stdout), mask_text(stderr))
        return res


def default_executor() -> Executor:
    return ProcessExecutor()
