"""The fairness turn (protocols/turns.py): a time slice per reader, not per loop turn."""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
import pytest

from greenserve.worker.protocols.tcp import CountingSocket
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


class _Connection:
    """What take_turn reads and writes on a connection's socket (phase.py's field)."""

    turn_started = 0.0


def test_a_long_loop_turn_alone_does_not_make_a_fresh_reader_step_back():
    # Under load every loop turn runs past the slice; a reader that has just waited must still
    # serve its pipelined batch in one go (the slice used to count from the last poll, and
    # each response then went out in a write of its own).
    connection = _Connection()

    def body(order: list[str]) -> None:
        _spin(4 * TURN_SECONDS)  # others' work in this loop turn
        take_turn(connection)
        order.append("went on")

    _, order = _in_a_greenlet(body)
    assert order[:2] == ["went on", "reader done"], order
    assert abs(time.monotonic() - connection.turn_started) < 5.0


def test_a_reader_past_its_slice_steps_back_and_starts_a_new_one():
    connection = _Connection()

    def body(order: list[str]) -> float:
        take_turn(connection)
        _spin(2 * TURN_SECONDS)  # its own requests
        before = time.monotonic()
        take_turn(connection)
        order.append("went on")
        return before

    before, order = _in_a_greenlet(body)
    assert order.index("other ran") < order.index("went on"), order
    assert connection.turn_started >= before  # the new slice counts from after the step back


def test_a_reader_within_its_slice_goes_on():
    connection = _Connection()

    def body(order: list[str]) -> float:
        take_turn(connection)
        started = connection.turn_started
        take_turn(connection)
        order.append("went on")
        return started

    started, order = _in_a_greenlet(body)
    assert order[:2] == ["went on", "reader done"], order
    assert connection.turn_started == started


def test_a_wait_for_the_next_read_starts_a_new_slice():
    """recv_after_wait, which every reader (HTTP, TLS, WebSocket) waits through, clears it."""
    ours, peer = socket.socketpair()
    sock = CountingSocket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=ours.detach())
    sock.accepted(time.monotonic())
    try:
        sock.turn_started = time.monotonic()
        peer.sendall(b"next request")
        assert sock.recv_after_wait(64) == b"next request"
        assert sock.turn_started == 0.0
    finally:
        peer.close()
        sock.close()
