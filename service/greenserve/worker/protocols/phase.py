"""A connection's phase, its deadlines, and the sweeper that enforces them.

This module is the one place that writes the fields the sweeper reads. A protocol says where
a connection is (``phase``) and what the sweeper does when a deadline passes. It never sets the
fields itself. The sweeper reads the fields, and a graceful stop reads them too
(``Connections.close_parked`` and ``end_upgraded``).

A socket timeout would arm a timer on every blocking recv. On the echo benchmark that cost
about 20% of a worker's CPU per message. Instead one greenlet per worker compares each
connection's byte counts and deadlines a few times per timeout.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent

# The phases. The numbers are ordered so the sweeper and a drain can test a range.
OPEN = 0  # raw TCP, or HTTP between phases: no limit of the protocol's own
HANDSHAKE = 1  # a TLS handshake or a PROXY header, due by the deadline
FRESH = 2  # HTTP, waiting for the first request (a drain gives it FIRST_REQUEST_GRACE)
PARKED = 3  # HTTP keep-alive, waiting for a next request (a drain may end it)
HEAD = 4  # HTTP, a request head begun and not whole (--header-timeout)
BODY = 5  # HTTP, the app waits for more of a request body (--header-timeout per wait)
APP = 6  # HTTP, the app has the request (--request-timeout, when set, is ``request_deadline``)
UPGRADED = 7  # taken over by the app: no idle timeout, a drain shuts its read side
WEBSOCKET = 8  # taken over, and known to speak WebSocket: a drain sends it a Close frame


# ConnectionPhase's fields: the __slots__ of the socket class that mixes it in (tcp.py).
FIELDS = (
    "accepted_at",
    "deadline",
    "eof_data",
    "expire",
    "greenlet",
    "idle_since",
    "phase",
    "request_deadline",
    "rx",
    "seen",
    "shut",
    "tx",
    "turn_started",
)


class ConnectionPhase:
    """The sweeper's fields of a connection, and the methods that set them.

    A mixin without slots of its own: CountingSocket declares the fields in its ``__slots__``
    (gevent's socket has a slot layout a second slotted base would conflict with), and the
    tests' in-memory socket inherits the same methods instead of copying the fields.
    """

    if TYPE_CHECKING:
        __slots__ = FIELDS  # for the type checker: where they live, as it checks assignments
    else:
        __slots__ = ()
    phase: int
    deadline: float
    request_deadline: float
    expire: Callable[[], None] | None
    accepted_at: float
    idle_since: float
    seen: int
    shut: bool
    greenlet: Any
    eof_data: bytes
    rx: int
    tx: int

    def accepted(self, now: float) -> None:
        """A new connection, before its greenlet runs."""
        self.rx = self.tx = self.seen = 0
        self.phase = OPEN
        self.deadline = 0.0  # the phase's own limit: passed, the connection is shut
        # A protocol's limit for work in its greenlet (--request-timeout): when it passes,
        # the sweeper calls ``expire``, which decides what happens next.
        self.request_deadline = 0.0
        self.expire = None
        self.accepted_at = self.idle_since = now
        self.shut = False
        self.greenlet = None
        self.eof_data = b""  # what a read returns at end-of-file instead of b"", once
        self.turn_started = 0.0  # protocols/turns.py: 0.0 once its greenlet waited on a read

    def serving(self) -> None:
        """Called in the connection's own greenlet: the one a stuck handler's kill ends."""
        self.greenlet = gevent.getcurrent()

    def kill(self) -> None:
        """End the greenlet serving this connection, from outside it. Scheduled, as gevent's
        ``kill(block=False)``; the greenlet is checked again when the kill runs: a runner
        (runners.py) that finished this connection meanwhile may be serving another."""
        greenlet = self.greenlet
        if greenlet is not None:
            gevent.get_hub().loop.run_callback(self._kill, greenlet)

    def _kill(self, greenlet: Any) -> None:
        if self.greenlet is greenlet and not greenlet.dead:
            greenlet.throw(gevent.GreenletExit)

    def enter(self, phase: int, deadline: float = 0.0) -> None:
        """The connection is now in ``phase``. It is shut at ``deadline`` unless it moves on
        first (0: no deadline)."""
        self.phase = phase
        self.deadline = deadline

    def clock_request(self, deadline: float, expire: Callable[[], None] | None) -> None:
        """``expire`` is called once ``deadline`` passes (0 and None: no request clock)."""
        self.request_deadline = deadline
        self.expire = expire

    def cut_off(self, deadline: float) -> None:
        """A stop: the connection ends by ``deadline`` at the latest, sooner if its phase
        already says so."""
        current = self.deadline
        self.deadline = min(current, deadline) if current else deadline

    def shut_down(self) -> None:
        """End the connection from outside its greenlet.

        shutdown, not close: a handler blocked in recv sees end-of-file and returns normally,
        one blocked in send sees a broken pipe. The OS socket's own shutdown: gevent's first
        throws "File descriptor was closed in another greenlet" (EBADF) into a waiting reader,
        which a handler cannot tell from a bug (a TERM with idle connections logged one
        handler_error traceback per connection).
        """
        self.shut = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]

    def swept(self, now: float, timeout: float) -> None:
        """One look by the sweeper at ``now``; ``timeout``: --idle-timeout (0: none)."""
        moved = self.rx + self.tx
        if self.shut:
            # Still open a tick after shutdown: the handler ignored end-of-file.
            self.kill()
        elif self.deadline and now >= self.deadline:
            self.shut_down()
        elif self.request_deadline and now >= self.request_deadline:
            expire = self.expire
            self.clock_request(0.0, expire)  # once: ``expire`` sets a later one if it wants
            expire()  # type: ignore[misc]
        elif moved != self.seen:
            self.seen, self.idle_since = moved, now
        elif timeout and now - self.idle_since >= timeout and self.phase < UPGRADED:
            # An upgraded connection is the app's: a WebSocket idle for minutes (a chat
            # nobody types in) is alive, and its library pings if it wants liveness.
            self.shut_down()


class IdleSweeper:
    """Closes connections that moved no data for ``timeout`` seconds or passed a deadline.

    A connection is closed between ``timeout`` and ``timeout + tick`` after its last activity,
    never before.
    """

    def __init__(
        self, timeout: float, connections: Iterable[ConnectionPhase], tick: float = 1.0
    ) -> None:
        """``connections``: the open ones, a live collection (Connections.open)."""
        self.timeout = timeout
        self.tick = min(timeout / 4, tick) if timeout else tick
        self.connections = connections

    def run(self) -> None:
        while True:
            gevent.sleep(self.tick)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        timeout = self.timeout
        for sock in list(self.connections):
            sock.swept(now, timeout)
