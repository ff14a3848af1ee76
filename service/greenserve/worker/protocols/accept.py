"""Accepting on a shared socket fairly across workers.

With one listening socket in several epoll loops, Linux wakes the most recent waiter first (LIFO),
so the worker that just went idle takes most of a burst (measured: all 50 connections of a burst on
one of two workers, 2 runs of 3). Each worker publishes its open-connection count in shared memory
as it accepts; one that is busier than its least busy sibling lets a pending connection go by once
(stops accepting for a moment), so a sibling woken for the same connection takes it. A connection
is never deferred twice: if it is still pending after the pause, it is accepted.

Deferring only pays while connections arrive one by one. When the accept queue holds several (a
burst: a load balancer reconnecting, a client opening its pool), every worker is woken and takes
its share; a worker defers only once it is ahead of its least busy sibling by more than an even
share of what is queued. Deferring on any lead left connections waiting. It did: with each
connection of a 1,000-connection burst deferred while the siblings were saturated (two workers and
the load generator on two cores), their first requests waited up to a second, 1% of all requests in
a 10 s run (wrk -c1000, p99 456 ms against 98 ms with --reuse-port, where the kernel spreads
connections and nothing is deferred). The queue's length is the listening socket's TCP_INFO
(``tcpi_unacked`` on a listener), read only when a deferral is considered.

The shared socket stays: nothing queued on it is lost when a worker exits or on reload.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent.server import StreamServer

from greenserve.master.sockets import accept_queue
from greenserve.metrics.stats import LOAD_IN_USE
from greenserve.worker.protocols.runners import Runners
from greenserve.worker.protocols.tcp import Connections, CountingSocket

YIELD_SECONDS = 0.002
# Accepts per wake-up: each one checks the balance again, so a worker woken for a burst does not
# swallow it whole, and a burst is not accepted at one connection per loop turn either.
MAX_ACCEPT = 64


class CountingServer(StreamServer):
    """A StreamServer whose accepted sockets are CountingSockets, registered at accept.

    gevent's own do_read wraps each accepted fd in a plain gevent socket; turning that into a
    counting one afterwards (detach and wrap again) kept two socket objects per connection. The
    registry (``Connections``) is the pool: when it is full the server stops accepting, and
    resumes as soon as a connection ends (backpressure, as gevent's Pool gives).
    """

    socket_class: type = CountingSocket

    def __init__(self, listener: Any, handle: Any, *, connections: Connections) -> None:
        super().__init__(listener, handle)
        self.connections = connections
        connections.on_room.append(self._room)
        self.runners = Runners(_serve)

    def do_read(self) -> Any:
        listener = self.socket
        try:
            fd, address = listener._accept()
        except BlockingIOError:
            return None
        sock = self.socket_class(listener.family, listener.type, listener.proto, fileno=fd)
        self.connections.add(sock)
        if self.connections.full:
            self.stop_accepting()
        return sock, address

    def _room(self) -> None:
        if not self.closed:
            self.start_accepting()

    def do_handle(self, sock: Any, address: Any) -> None:
        """gevent's do_handle without its ``handle(*args)``: in Python 3.11 a star-call is not
        inlined but runs a second interpreter loop in C, and every idle connection's greenlet
        keeps its C stack saved on the heap (median greenlet._stack_saved over 300 idle
        connections: 3,320 bytes with it, 2,808 without). The handler is taken now, as gevent
        does: close() removes it. A greenlet of ``runners`` serves the connection
        (protocols/runners.py: not a new greenlet per connection), in place of the server's
        ``spawn``, which this class does not take."""
        handle, close = self._handle, self.do_close
        try:
            self.runners.start((handle, close, sock, address))
        except BaseException:
            close(sock, address)
            raise


def _serve(job: tuple[Any, Any, Any, Any]) -> None:
    handle, close, sock, address = job
    try:
        handle(sock, address)
    finally:
        close(sock, address)


class BalancedServer(CountingServer):
    """A StreamServer that defers an accept to an idler sibling, at most once per connection."""

    def __init__(self, *args: Any, load: Any, slot: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.load = load
        self.slot = slot
        self.deferred = False

    def _busier_than_a_sibling(self) -> bool:
        # Runs on every accept: only the slots in use are read (the master keeps their number
        # in the last cell), as one C-level slice. Walking all LOAD_SLOTS cells in Python cost
        # 35 us per accept when no sibling was idler, the common case.
        load = self.load
        mine = load[self.slot]
        if mine <= 0:
            return False
        in_use = load[LOAD_IN_USE]
        least = min((n for n in load[:in_use] if n >= 0), default=mine)
        if least >= mine:
            return False
        # a burst: each worker's share of the queue may be taken before anyone defers
        return mine - least > self._queued() // max(in_use, 1)

    def _queued(self) -> int:
        """Connections waiting in the accept queue (0 when unknown, as on a unix socket)."""
        return accept_queue(self.socket)

    def do_read(self) -> Any:
        if self.connections.full:
            self.stop_accepting()  # resumed by _room when a connection ends
            return None
        if self.deferred:
            self.deferred = False  # deferred once already: take it now
        elif self._busier_than_a_sibling():
            self.deferred = True
            self.stop_accepting()
            gevent.get_hub().loop.timer(YIELD_SECONDS).start(self._resume)
            return None
        accepted = super().do_read()
        if accepted is not None:
            # published at once, not when the connection's greenlet starts (after the wake-up):
            # the next accept of this wake-up, and the siblings, must see it
            self.load[self.slot] = len(self.connections.open)
        return accepted

    def _resume(self) -> None:
        if not self.closed:
            self.start_accepting()
