"""The master loop's guard: a phase that raises is one event, rate-limited, and the loop goes on."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from greenserve.master.phase_guard import REPEAT_EVERY, PhaseGuard


def test_a_failing_phase_is_logged_as_an_event_and_the_next_one_runs() -> None:
    now = [0.0]
    guard = PhaseGuard(structlog.get_logger(), clock=lambda: now[0])
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug in a phase")

    with capture_logs() as events:
        for turn in range(41):  # 50 ms turns: 2 s
            now[0] = turn * 0.05
            guard.run("publish", broken)
            guard.run("carry_over", ran.append, "carry_over")
        now[0] = REPEAT_EVERY
        guard.run("publish", broken)
    assert ran == ["carry_over"] * 41
    assert [e["event"] for e in events] == ["master_phase_failed"] * 2
    first, second = events
    assert first["phase"] == "publish" and first["failures"] == 1 and first["exc_info"] is True
    assert second["failures"] == 41  # the ones in between are counted, not each logged


def test_phases_are_limited_each_on_its_own() -> None:
    guard = PhaseGuard(structlog.get_logger(), clock=lambda: 0.0)

    def broken() -> None:
        raise ValueError("x")

    with capture_logs() as events:
        guard.run("a", broken)
        guard.run("b", broken)
        guard.run("a", broken)
    assert [e["phase"] for e in events] == ["a", "b"]
