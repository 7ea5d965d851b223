"""Pacer: a wait_for check that acts does so at once, then at most once per interval however often it is woken."""

from __future__ import annotations

from blocklink.initiator.host.wait import Pacer


def test_due_at_once_then_once_per_interval() -> None:
    now = [100.0]
    p = Pacer(0.25, clock=lambda: now[0])
    assert p.due() is True
    assert [p.due() for _ in range(5)] == [False] * 5  # woken by events within the interval
    now[0] += 0.24
    assert p.due() is False
    now[0] += 0.01
    assert p.due() is True and p.due() is False
