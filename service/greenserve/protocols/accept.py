"""Accepting on a shared socket fairly across workers.

With one listening socket in several epoll loops, Linux wakes the most recent waiter first (LIFO),
so the worker that just went idle takes most of a burst (measured: all 50 connections of a burst on
one of two workers, 2 runs of 3). Each worker publishes its open-connection count in shared memory;
one that is busier than its least busy sibling lets a pending connection go by once (stops
accepting for a moment), so a sibling woken for the same connection takes it. A connection is never
deferred twice: if no sibling took it (a sibling may be stuck), it is accepted on the next wake-up.
The shared socket stays: nothing queued on it is lost when a worker exits or on reload.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent.server import StreamServer

from greenserve.protocols.tcp import Connections, CountingSocket
from greenserve.stats import LOAD_IN_USE

YIELD_SECONDS = 0.002


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
        return any(0 <= other < mine for other in load[: load[LOAD_IN_USE]])

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
        return super().do_read()

    def _resume(self) -> None:
        if not self.closed:
            self.start_accepting()
