"""--request-timeout: stop an app that holds a request too long, without a timer per request.

The request's deadline is a field the sweeper already compares (phase.ConnectionPhase); when it
passes, the sweeper calls ``RequestClock.expire`` from its own greenlet.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from typing import Any

import gevent

TIMEOUT_GRACE = 1.0  # an app that swallowed its request timeout is stopped again this much later


class RequestTimeout(BaseException):
    """Raised inside a request's greenlet when --request-timeout passes.

    A BaseException, like gevent.Timeout: an app's ``except Exception`` does not swallow it,
    while its ``finally`` blocks and context managers still run.
    """


class RequestClock:
    """One connection's request clock: made on its first request when --request-timeout is set.

    The first expiry raises RequestTimeout where the app waits; if the app swallows it and is
    still running TIMEOUT_GRACE later, its socket is shut (its next write fails) and the
    exception comes again. The throw is scheduled on the hub, as gevent's own kill is: a throw
    from the sweeper's greenlet would leave the sweeper suspended.
    """

    __slots__ = ("generation", "sock", "stack", "timeout", "watched")

    def __init__(self, sock: Any, timeout: float) -> None:
        """``sock``: the connection's socket (TLS: the session), shut on a second expiry."""
        self.sock = sock
        self.watched = sock.watched  # the CountingSocket whose deadline the sweeper reads
        self.timeout = timeout
        self.generation = 0  # requests finished: tells a late throw from the next request's
        self.stack: str | None = None  # where the app waited when its request timed out

    def start(self) -> None:
        self.watched.clock_request(time.monotonic() + self.timeout, self.expire)

    def stop(self) -> None:
        self.generation += 1
        # not kept while idle: no bound method held by each keep-alive connection's socket
        self.watched.clock_request(0.0, None)

    def expire(self) -> None:
        greenlet = self.watched.greenlet
        if greenlet is None or greenlet.dead:
            return
        if self.stack is None:
            frame = greenlet.gr_frame  # where the app waits, before the exception unwinds it
            self.stack = "".join(traceback.format_stack(frame)) if frame else ""
            self.watched.clock_request(time.monotonic() + TIMEOUT_GRACE, self.expire)
        else:
            with contextlib.suppress(OSError):
                self.sock.shutdown(2)
        gevent.get_hub().loop.run_callback(self._throw, greenlet, self.generation)

    def _throw(self, greenlet: Any, generation: int) -> None:
        if self.generation == generation and not greenlet.dead:  # still the same request
            greenlet.throw(RequestTimeout)

    def reported(self) -> str | None:
        """The timed-out app's stack, once, or None if this request did not time out."""
        stack, self.stack = self.stack, None
        return stack
