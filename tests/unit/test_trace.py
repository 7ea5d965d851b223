"""Attach traces: span nesting (threads too), outcomes, secrets kept out, the hook, the CLI's --trace, and
real instrumented runs of the iSCSI connector (fake host) and the attach flow."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List

import pytest

from blocklink import cli, trace
from blocklink.errors import AttachFailed, AuthenticationFailed
from blocklink.masking import Secret
from blocklink.trace import Phases, TraceEvent, add_hook, collect, run_in_context, span
from tests.unit.test_attach_flow import SPEC, make_flow
from tests.unit.test_iscsi_connector import SECRET, assert_clean, info, kernel, make, multi, tree  # noqa: F401


def by_step(events: List[TraceEvent]) -> dict:
    return {e.step: e for e in events}


def test_nested_spans_record_parent_depth_duration_and_outcome() -> None:
    with collect() as events:
        with span("outer", volume="v1"):
            with span("inner", lun=3):
                pass
            with pytest.raises(KeyError), span("failing"):
                raise KeyError("x")
    ev = by_step(events)
    assert ev["outer"].depth == 0 and ev["outer"].parent is None
    assert ev["inner"].parent == ev["outer"].span_id and ev["inner"].depth == 1
    assert ev["failing"].outcome == "error" and ev["failing"].error == "KeyError" and ev["failing"].depth == 1
    assert ev["inner"].ids == {"lun": "3"} and ev["outer"].outcome == "ok"
    assert ev["outer"].duration >= ev["inner"].duration + ev["failing"].duration
    assert ev["outer"].start <= ev["inner"].start
    with collect() as after:
        with span("again"):
            pass
    assert after[0].depth == 0  # nothing left open by the failing span


def test_worker_threads_nest_under_the_caller_when_run_in_context() -> None:
    with collect() as events, span("paths"):
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run_in_context(lambda i: span("path", i=i).__enter__().finish()), [1, 2]))
        t = threading.Thread(target=lambda: span("orphan").start().finish())
        t.start()
        t.join()
    ev = [e for e in events if e.step == "path"]
    root = by_step(events)["paths"]
    assert len(ev) == 2 and all(e.parent == root.span_id and e.depth == 1 for e in ev)
    assert by_step(events)["orphan"].depth == 0  # a plain thread starts a new tree


def test_secrets_never_reach_an_event() -> None:
    with collect() as events:
        with span("login", auth_password="pw-1234567", chap_user="u", key=Secret("k-1234567"),
                   note=Secret("s-7654321")):
            pass
    ids = events[0].ids
    assert ids == {"auth_password": "***", "chap_user": "***", "key": "***", "note": "***"}
    assert "1234567" not in repr(events[0].to_dict())


def test_a_failing_hook_does_not_change_the_outcome(caplog: Any) -> None:
    seen: List[str] = []
    remove_bad = add_hook(lambda ev: (_ for _ in ()).throw(RuntimeError("hook broke")))
    remove_good = add_hook(lambda ev: seen.append(ev.step))
    try:
        with caplog.at_level(logging.DEBUG, logger="blocklink.trace"), span("step"):
            pass
    finally:
        remove_bad()
        remove_good()
    assert seen == ["step"]
    assert any(getattr(r, "trace", {}).get("step") == "step" for r in caplog.records)  # the logging route
    with span("later"):
        pass
    assert seen == ["step"]  # removed


def test_phases_end_each_step_before_the_next() -> None:
    with collect() as events:
        p = Phases(volume="v")
        p.begin("a")
        p.begin("b")
        p.end(ValueError("bad"))
        p.end()
    assert [(e.step, e.outcome, e.ids) for e in events] == [("a", "ok", {"volume": "v"}),
                                                             ("b", "error", {"volume": "v"})]


def test_iscsi_multipath_connect_and_disconnect_are_traced(tree, kernel, tmp_path) -> None:  # noqa: F811
    conn = make(kernel, tmp_path, use_multipath=True)
    with collect() as events:
        dev = conn.connect_volume(multi(0))
    steps = [e.step for e in events]
    assert steps.count("path") == 2 and steps.count("login") == 2 and steps.count("scan") == 2
    assert {"lock_volume", "attach_paths", "wait_disk", "wait_multipath_map"} <= set(steps)
    paths = by_step(events)["attach_paths"]
    assert all(e.parent == paths.span_id for e in events if e.step == "path")  # threads nest
    assert all(e.outcome == "ok" for e in events)
    assert SECRET not in repr([e.to_dict() for e in events])
    with collect() as events:
        conn.disconnect_volume(multi(0), dev)
    actions = [e.ids.get("action", "") for e in events if e.step == "teardown"]
    assert any(a.startswith("flush multipath map") for a in actions)
    assert sum(a.startswith("delete /dev/sd") for a in actions) == 2
    assert sum(a.startswith("log out of") for a in actions) == 2
    assert_clean(tree, kernel)


def test_failed_login_is_an_error_event(tree, kernel, tmp_path) -> None:  # noqa: F811
    conn = make(kernel, tmp_path)
    bad = info(1, auth_password="wrong-password")
    with collect() as events, pytest.raises(AuthenticationFailed):
        conn.connect_volume(bad)
    login = by_step(events)["login"]
    assert login.outcome == "error" and login.error == "AuthenticationFailed"


def test_attach_flow_steps_are_spans_under_attach(tmp_path) -> None:
    flow, st, store = make_flow(tmp_path)
    with collect() as events:
        att = flow.attach_volume(SPEC, "inst1")
    top = by_step(events)["attach"]
    kids = [e.step for e in sorted(events, key=lambda e: e.start) if e.parent == top.span_id]
    # the connector properties (pure) are read before the device name is chosen: the name is recorded
    # (with the connector step) the moment it is picked
    assert kids == ["reserve", "connector", "device_name", "export", "initialize", "connect", "hypervisor", "record"]
    with collect() as events:
        flow.detach_volume(att.id)
    top = by_step(events)["detach"]
    assert [e.step for e in sorted(events, key=lambda e: e.start) if e.parent == top.span_id] == \
        ["hypervisor", "connect", "initialize", "export"]


def test_attach_flow_failure_marks_the_step_and_traces_the_rollback(tmp_path) -> None:
    flow, st, store = make_flow(tmp_path, fault="connect_volume")
    with collect() as events, pytest.raises(AttachFailed):
        flow.attach_volume(SPEC, "inst1")
    ev = by_step(events)
    assert ev["connect"].outcome == "error" and ev["attach"].outcome == "error"
    assert ev["rollback"].parent == ev["attach"].span_id and ev["rollback"].outcome == "ok"


def test_cli_trace_prints_steps_and_the_wall_time_share(monkeypatch, capsys) -> None:
    def fake_command(args: Any) -> int:
        with span("outer", volume="v1"):
            with span("inner"):
                pass
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["--trace", "list"])
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    args.func = fake_command
    assert cli.main(["--trace", "list"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "trace:"
    assert err[1].endswith("s  ok    outer  volume=v1") and err[2].endswith("s  ok      inner")
    assert "in top-level steps of" in err[3] and "%" in err[3]


def test_format_events_orders_by_start_and_indents() -> None:
    evs = [TraceEvent("b", 2.0, 0.5, "ok", depth=1), TraceEvent("a", 1.0, 1.5, "error", error="X", depth=0)]
    out = trace.format_events(evs)
    assert out == ["    1.500s  error(X) a", "    0.500s  ok      b"]
    assert trace.top_level_seconds(evs) == 1.5
