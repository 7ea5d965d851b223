"""Structure-aware hypothesis strategies: mutations of real command outputs and grammar-built lines.

Three kinds of input reach each parser: (1) the real outputs (tests/vectors/command_outputs.json and
outputs recorded in the kernel guest / unit tests) mutated line by line and token by token, (2) lines
built from each output's grammar with fields drawn from valid and hostile values, (3) plain random text.
JSON outputs are also mutated as data (a value replaced, a key dropped, a list wrapped) before dumping.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.conftest import VECTORS
from tests.reliability.results import long_mode

EXAMPLES = 10_000 if long_mode() else int(os.environ.get("BLOCKLINK_FUZZ_SHORT", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not long_mode(),
                suppress_health_check=list(HealthCheck))

with open(os.path.join(VECTORS, "command_outputs.json")) as _f:
    VECTOR_OUTPUTS: List[Dict[str, Any]] = json.load(_f)


def vector_outputs(prefix: str) -> List[str]:
    return [c["output"] for c in VECTOR_OUTPUTS if c["command"].startswith(prefix) and c.get("output")]


# tokens that break naive parsers: separators, huge/negative numbers, control chars, line separators that
# str.splitlines() honours (\x0b \x0c \x1c \u2028), ANSI escapes, markers of other sections
HOSTILE_TOKENS = ["", " ", ":", "::", ",", "=", "-", "-1", "0", "00", "99999999999999999999999", "1e9", "NaN",
                  "[", "]", "[]", "(", ")", "{", "}", "\x00", "\t", "\r", "\x0b", "\x0c", "\x1c", "\u2028", "\x85",
                  "é", "\udcff", "\x1b[1m", "\x1b[0m", "..", "../../etc/passwd", "/", "'", '"', ";", "$(id)", "`id`",
                  "<x/>", "&amp;", "%s", "{0}", "None", "null", "true", "Target:", "Lun:", "size=", "LUN:",
                  "Current Portal:", "I_T nexus:", "Connection:", "# BEGIN RECORD", "# END RECORD", "SENDTARGETS:",
                  "DiscoveryAddress:", "policy=", "dm-", "undef", "iqn.", "eui.", "naa.", "Account list:",
                  "LUN information:", "    ", "        ", "\\", "\\040", "x" * 300]
hostile_token = st.sampled_from(HOSTILE_TOKENS)
token = st.one_of(hostile_token, st.text(max_size=12), st.from_regex(r"\A-?[0-9]{1,6}\Z"),
                  st.from_regex(r"\A[a-z0-9.:\-]{1,20}\Z"))

_SPLIT = re.compile(r"(\s+|[:,=\[\]()/])")


@st.composite
def mutated(draw: Any, seeds: Sequence[str], extra_lines: Any = None) -> str:
    """A real output with 0-5 line/token/char mutations."""
    lines = draw(st.sampled_from(list(seeds))).split("\n")
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from(["del", "dup", "swap", "cut", "token", "insert", "chars", "colon", "indent"]))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if not lines:
            lines = [""]
        if op == "del":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "cut":
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
        elif op == "token":
            parts = _SPLIT.split(lines[i])
            if parts:
                parts[draw(st.integers(0, len(parts) - 1))] = draw(token)
            lines[i] = "".join(parts)
        elif op == "insert":
            lines.insert(i, draw(extra_lines if extra_lines is not None else st.text(max_size=40)))
        elif op == "chars":
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.one_of(hostile_token, st.text(max_size=4))) + lines[i][pos:]
        elif op == "colon":
            lines[i] = lines[i].split(":")[0] + ":"
        elif op == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "\t", "    ", "        ", "| ", "`- "])) + lines[i].lstrip()
    text = "\n".join(lines)
    if draw(st.booleans()) and text:
        text = text[:draw(st.integers(0, len(text)))]  # truncated output (killed command)
    return text


def field(valid: Any) -> Any:
    """A field value: mostly plausible, sometimes hostile."""
    return st.one_of(valid, valid, token)


def lines_of(*line_strategies: Any, max_lines: int = 12) -> Any:
    return st.lists(st.one_of(*line_strategies, st.text(max_size=30)), max_size=max_lines).map("\n".join)


def output_strategy(seeds: Sequence[str], *grammar_lines: Any) -> Any:
    """Mutated seeds, grammar-built outputs, and random text."""
    line = st.one_of(*grammar_lines) if grammar_lines else st.text(max_size=40)
    return st.one_of(mutated(seeds, line), mutated(seeds, line), lines_of(*grammar_lines) if grammar_lines else
                     st.text(), st.text(max_size=200))


# ------------------------------------------------------------------ shared field strategies
ip = st.one_of(st.ip_addresses().map(str), st.sampled_from(["127.0.0.1", "10.0.0.1", "localhost", "::1"]))
portal = st.one_of(ip.map(lambda a: f"[{a}]" if ":" in a else a), st.just("[]")).flatmap(
    lambda h: field(st.integers(0, 70000).map(str)).map(lambda p: f"{h}:{p}"))
iqn = st.one_of(st.from_regex(r"\Aiqn\.20[0-9]{2}-[0-9]{2}\.[a-z.]{1,12}:[a-z0-9.\-]{1,20}\Z"),
                st.from_regex(r"\A(eui|naa)\.[0-9a-f]{8,16}\Z"))
num = st.integers(-2, 2 ** 40).map(str)
hctl = st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ":".join(map(str, t)))
sd = st.from_regex(r"\Asd[a-z]{1,2}\Z")


# ------------------------------------------------------------------ JSON outputs
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                        st.text(max_size=12), hostile_token)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8) | hostile_token, inner, max_size=4)),
    max_leaves=10)


@st.composite
def mutated_json(draw: Any, seeds: Sequence[Any], keys: Sequence[str] = ()) -> str:
    """A seed value with 0-4 data mutations, dumped; sometimes truncated or prefixed by a log line."""
    value = json.loads(json.dumps(draw(st.sampled_from(list(seeds)))))
    for _ in range(draw(st.integers(0, 4))):
        containers = _containers(value)
        if not containers:
            break
        c = draw(st.sampled_from(containers))
        op = draw(st.sampled_from(["set", "del", "wrap", "add"]))
        if isinstance(c, dict) and c:
            k = draw(st.sampled_from(sorted(c)))
            if op == "set":
                c[k] = draw(json_value)
            elif op == "del":
                del c[k]
            elif op == "wrap":
                c[k] = [c[k]]
            else:
                c[draw(st.sampled_from(list(keys) or [k]))] = draw(json_value)
        elif isinstance(c, list) and c:
            i = draw(st.integers(0, len(c) - 1))
            if op == "set":
                c[i] = draw(json_value)
            elif op == "del":
                del c[i]
            elif op == "wrap":
                c[i] = [c[i]]
            else:
                c.append(draw(json_value))
    if draw(st.integers(0, 9)) == 0:
        value = draw(json_value)
    text = json.dumps(value, indent=draw(st.sampled_from([None, 1, 2])))
    r = draw(st.integers(0, 9))
    if r == 0:
        text = text[:draw(st.integers(0, len(text)))]
    elif r == 1:
        text = "dumped monmap epoch 1\n" + text
    elif r == 2:
        text = draw(st.text(max_size=60))
    return text


def _containers(v: Any) -> List[Any]:
    out: List[Any] = []
    if isinstance(v, (dict, list)):
        out.append(v)
        for x in (v.values() if isinstance(v, dict) else v):
            out += _containers(x)
    return out
