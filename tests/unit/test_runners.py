"""Connection greenlets reused from one connection to the next (protocols/runners.py)."""

from __future__ import annotations

import contextvars
import socket

import gevent
import pytest
from gevent.event import Event

from greenserve.worker.protocols.runners import Runners
from greenserve.worker.protocols.tcp import CountingSocket, park

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen")


def test_a_finished_runner_serves_the_next_connection_in_a_fresh_context():
    served: list[tuple[int, str | None]] = []

    def target(name: str) -> None:
        served.append((id(gevent.getcurrent()), SEEN.get(None)))
        SEEN.set(name)

    runners = Runners(target)
    runners.start("first")
    gevent.sleep(0)
    assert len(runners.idle) == 1
    runners.start("second")
    gevent.sleep(0)
    (first, seen_first), (second, seen_second) = served
    assert first == second  # the same greenlet
    assert seen_first is None and seen_second is None  # the first one's value is not seen
    assert len(runners.idle) == 1


def test_no_more_than_the_limit_wait():
    gate = Event()
    runners = Runners(lambda job: gate.wait(5), limit=2)
    for index in range(5):
        runners.start(index)
    gevent.sleep(0)
    assert runners.idle == []
    gate.set()
    gevent.sleep(0.01)
    assert len(runners.idle) == 2
    assert all(not runner.dead for runner in runners.idle)


def test_a_runner_whose_connection_raised_ends_and_is_not_kept(capsys):
    runners = Runners(lambda job: 1 / 0)
    runners.start(None)
    gevent.sleep(0.01)
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
    gevent.sleep(0)
    runners.start((second, False))  # the same runner, scheduled behind the kill
    gevent.sleep(0.2)
    assert outcome == ["done", "done"]


def test_a_kill_ends_the_connection_it_was_meant_for(pair):
    first, _ = pair
    outcome: list[str] = []
    runners = Runners(lambda sock: _served(sock, outcome, False, 5))
    runners.start(first)
    gevent.sleep(0)
    first.kill()
    gevent.sleep(0.01)
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
    gevent.sleep(0)
    (runner,) = serving
    alone = gevent.spawn(serve, second)
    gevent.sleep(0)
    try:
        assert 0 < runner._stack_saved <= alone._stack_saved
    finally:
        runner.kill()
        alone.kill()
