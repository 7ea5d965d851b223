"""A recording executor with canned outputs, for unit tests of host logic (no processes run)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from blocklink.errors import CommandFailed
from blocklink.executor import CommandResult, Input, _check_argv

Responder = Union[CommandResult, Tuple[int, str, str], str, Callable[[Tuple[str, ...], Input], "Responder"]]


@dataclass
class Call:
    argv: Tuple[str, ...]
    input: Input = None
    env: Optional[Dict[str, str]] = None


@dataclass
class FakeExecutor:
    """Answers commands from rules (first match wins); records every call.

    ``rules`` maps a pattern to a response. A pattern is a tuple prefix of argv (``("iscsiadm", "-m",
    "session")``) or a compiled regex matched against the space-joined argv. A response is the stdout
    text, an ``(exit_code, stdout, stderr)`` tuple, a :class:`CommandResult`, or a callable
    ``(argv, input) -> response`` that can also change the fake host (create a device, say).
    Unmatched commands fail with exit 127 unless ``default`` is given.
    """

    rules: List[Tuple[Union[Tuple[str, ...], "re.Pattern[str]"], Responder]] = field(default_factory=list)
    default: Optional[Responder] = None
    calls: List[Call] = field(default_factory=list)

    def on(self, pattern: Union[Sequence[str], str, "re.Pattern[str]"], response: Responder) -> "FakeExecutor":
        if isinstance(pattern, str):
            pat: Union[Tuple[str, ...], "re.Pattern[str]"] = re.compile(pattern)
        elif isinstance(pattern, re.Pattern):
            pat = pattern
        else:
            pat = tuple(pattern)
        self.rules.append((pat, response))
        return self

    def run(self, argv: Sequence[str], *, input: Input = None, check: bool = True,
            ok_codes: Sequence[int] = (0,), timeout: Optional[float] = None,
            env: Optional[Mapping[str, str]] = None, root: bool = True) -> CommandResult:
        cmd = _check_argv(argv)
        self.calls.append(Call(cmd, input, dict(env) if env is not None else None))
        resp = self._match(cmd)
        res = self._resolve(cmd, input, resp)
        if check and res.exit_code not in ok_codes:
            raise CommandFailed(cmd, res.exit_code, res.stdout, res.stderr)
        return res

    def _match(self, cmd: Tuple[str, ...]) -> Optional[Responder]:
        joined = " ".join(cmd)
        for pat, resp in self.rules:
            if isinstance(pat, tuple):
                if cmd[:len(pat)] == pat:
                    return resp
            elif pat.search(joined):
                return resp
        return self.default

    def _resolve(self, cmd: Tuple[str, ...], input: Input, resp: Optional[Responder]) -> CommandResult:
        while callable(resp):
            resp = resp(cmd, input)
        if resp is None:
            return CommandResult(cmd, 127, "", f"{cmd[0]}: no fake response")
        if isinstance(resp, CommandResult):
            return resp
        if isinstance(resp, tuple):
            return CommandResult(cmd, resp[0], resp[1], resp[2])
        return CommandResult(cmd, 0, resp, "")

    def argvs(self, prefix: Sequence[str] = ()) -> List[Tuple[str, ...]]:
        p = tuple(prefix)
        return [c.argv for c in self.calls if c.argv[:len(p)] == p]
