"""Connection greenlets reused from one connection to the next (protocols/runners.py)."""

from __future__ import annotations

import contextvars
import socket
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event

from greenserve.worker.protocols.runners import Runners
from greenserve.worker.protocols.tcp import CountingSocket, park
from tests.helpers import wait_until

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen")


def _until(predicate: Callable[[], Any], what: str) -> None:
    """Greenlets of this process make ``predicate`` true: poll through the hub, 5 s at most."""
    wait_until(predicate, 5, what, step=0.001, sleep=gevent.sleep)


def test_a_finished_runner_serves_the_next_connection_in_a_fresh_context():
    served: list[tuple[int, str | None]] = []

    def target(name: str) -> None:
        served.append((id(gevent.getcurrent()), SEEN.get(None)))
        SEEN.set(name)

    runners = Runners(target)
    runners.start("first")
    _until(lambda: runners.idle, "the runner to park")
    assert len(runners.idle) == 1
    runners.start("second")
    _until(lambda: len(served) == 2 and runners.idle, "the second job done")
    (first, seen_first), (second, seen_second) = served
    assert first == second  # the same greenlet
    assert seen_first is None and seen_second is None  # the first one's value is not seen
    assert len(runners.idle) == 1


def test_no_more_than_the_limit_wait():
    gate = Event()
    started: list[gevent.Greenlet] = []

    def target(job: int) -> None:
        started.append(gevent.getcurrent())
        gate.wait(5)

    runners = Runners(target, limit=2)
    for index in range(5):
        runners.start(index)
    _until(lambda: len(started) == 5, "five jobs running")
    assert runners.idle == []
    gate.set()
    _until(lambda: all(g.dead or g in runners.idle for g in started), "each one parked or ended")
    assert len(runners.idle) == 2
    assert sum(g.dead for g in started) == 3


def test_a_runner_whose_connection_raised_ends_and_is_not_kept(capsys):
    raised: list[gevent.Greenlet] = []

    def target(job: None) -> None:
        raised.append(gevent.getcurrent())
        raise ZeroDivisionError

    runners = Runners(target)
    runners.start(None)
    _until(lambda: raised and raised[0].dead, "the runner that raised to end")
    assert runners.idle == []
    assert "ZeroDivisionError" in capsys.readouterr().err  # reported by gevent, as before


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    first = CountingSocket(fileno=a.detach())
    second = CountingSocket(fileno=b.detach())
    yield first, second
    first.close()
    second.close()


def _served(sock: CountingSocket, outcome: list[str], then_kill: bool, wait: float) -> None:
    """A connection as TcpProtocol.handle serves it: its greenlet named, cleared at the end."""
    sock.serving()
    try:
        if then_kill:
            sock.kill()  # scheduled, runs after this connection is over
        else:
            gevent.sleep(wait)
        outcome.append("done")
    except gevent.GreenletExit:
        outcome.append("killed")
        raise
    finally:
        sock.greenlet = None


def test_a_kill_meant_for_a_finished_connection_spares_the_next_one(pair):
    """The sweeper's kill is scheduled; the runner may finish that connection and take the next
    before it runs. gevent's own ``kill`` would end the next connection."""
    first, second = pair
    outcome: list[str] = []
    runners = Runners(lambda job: _served(job[0], outcome, job[1], 0.05))
    runners.start((first, True))
    # One turn of the hub, not a poll: the runner ends the first connection and parks, and the
    # kill it scheduled is still queued when the second connection is handed to it.
    gevent.sleep(0)
    runners.start((second, False))  # the same runner, scheduled behind the kill
    _until(lambda: len(outcome) == 2, "both connections to end")
    assert outcome == ["done", "done"]


def test_a_kill_ends_the_connection_it_was_meant_for(pair):
    first, _ = pair
    outcome: list[str] = []
    runners = Runners(lambda sock: _served(sock, outcome, False, 5))
    first.greenlet = None  # as Connections.add leaves it, until the greenlet says it serves
    runners.start(first)
    _until(lambda: first.greenlet is not None, "the connection served")
    first.kill()
    _until(lambda: outcome, "the connection to end")
    assert outcome == ["killed"]
    assert runners.idle == []  # a killed runner ends


def test_a_parked_runner_saves_no_more_stack_than_a_greenlet_of_its_own(pair):
    """What an idle connection costs is mostly its greenlet's saved C stack: a runner adds no
    C frame to it (a bound method as the greenlet's run, or a star-call, or Context.run did:
    144 to 640 bytes more for every idle connection)."""
    first, second = pair

    serving: list[gevent.Greenlet] = []

    def serve(sock: CountingSocket) -> None:
        serving.append(gevent.getcurrent())
        park(sock._read_event, sock.hub)

    runners = Runners(serve)
    runners.start(first)
    _until(lambda: serving, "the runner waiting")
    (runner,) = serving
    alone = gevent.spawn(serve, second)
    _until(lambda: len(serving) == 2, "the greenlet of its own waiting")
    try:
        assert 0 < runner._stack_saved <= alone._stack_saved
    finally:
        runner.kill()
        alone.kill()
