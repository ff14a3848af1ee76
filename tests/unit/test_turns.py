"""The fairness turn (protocols/turns.py): a time slice per reader, not per loop turn."""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest

from greenserve.worker.protocols.turns import TURN_SECONDS, take_turn

pytestmark = pytest.mark.timeout(30)


def _spin(seconds: float) -> None:
    """CPU without yielding: the loop turn grows, as under load."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _in_a_greenlet(body: Any) -> tuple[Any, list[str]]:
    """Run ``body`` in a greenlet beside one that records when it gets to run: whether
    ``body`` stepped back shows in the order."""
    order: list[str] = []

    def reader() -> Any:
        gevent.sleep(0)  # a fresh loop turn
        result = body(order)
        order.append("reader done")
        return result

    def other() -> None:
        gevent.sleep(0)
        order.append("other ran")

    first = gevent.spawn(reader)
    second = gevent.spawn(other)
    gevent.joinall([first, second], timeout=10)
    assert first.dead and second.dead, order
    return first.value, order


def test_a_long_loop_turn_alone_does_not_make_a_fresh_reader_step_back():
    # Under load every loop turn runs past the slice; a reader that has just waited must still
    # serve its pipelined batch in one go (the slice used to count from the last poll, and
    # each response then went out in a write of its own).
    def body(order: list[str]) -> float:
        _spin(4 * TURN_SECONDS)  # others' work in this loop turn
        started = take_turn(0.0)
        order.append("went on")
        return started

    started, order = _in_a_greenlet(body)
    assert order[:2] == ["went on", "reader done"], order
    assert abs(time.monotonic() - started) < 5.0 and started > 0.0


def test_a_reader_past_its_slice_steps_back_and_starts_a_new_one():
    def body(order: list[str]) -> tuple[float, float]:
        started = take_turn(0.0)
        _spin(2 * TURN_SECONDS)  # its own requests
        before = time.monotonic()
        again = take_turn(started)
        order.append("went on")
        return before, again

    (before, again), order = _in_a_greenlet(body)
    assert order.index("other ran") < order.index("went on"), order
    assert again >= before  # the new slice counts from after the step back


def test_a_reader_within_its_slice_goes_on():
    def body(order: list[str]) -> tuple[float, float]:
        started = take_turn(0.0)
        again = take_turn(started)
        order.append("went on")
        return started, again

    (started, again), order = _in_a_greenlet(body)
    assert order[:2] == ["went on", "reader done"], order
    assert again == started
