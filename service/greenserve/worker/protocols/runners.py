"""Connection greenlets kept for the next connection instead of a new greenlet for each.

A greenlet that runs Python gets its own chunk of CPython 3.11's frame data stack: 16 KiB
mapped with ``mmap`` when it first calls a Python function, page-faulted in, and unmapped when
the greenlet ends (strace of 1,000 ``gevent.spawn`` + ``join``: 1,147 ``munmap``). For a
connection that carries one request, that was about a tenth of the worker's CPU (perf of a
worker answering only 503s to a new connection each: ``mmap``, ``munmap`` and the page faults
10.7% of its samples). A runner that has served its connection parks in ``idle`` and the next
accepted connection is handed to it: no greenlet, no data stack chunk and no mapping made or
unmapped per connection.

Each connection still starts as in a new greenlet in what it can see: in a new, empty
``contextvars`` context (the greenlet's ``gr_context`` is reset: a ``ContextVar`` set by the last
connection's app is not visible).
``gevent.local`` (and ``threading.local`` under monkey-patching) is per greenlet, so, as in a
thread pool, a value one connection's app left in such a local is what the next connection on
that runner finds: apps that use locals per request set them per request (Flask and Werkzeug use
context variables). At most ``LIMIT`` runners wait; the others end as a connection's greenlet
ended before.
"""

from __future__ import annotations

from typing import Any

from gevent import Greenlet, get_hub, getcurrent

# Idle runners kept: each holds its saved C stack and its data stack chunk (about 7 KiB of RSS,
# tests/bench/greenlet_floor.py), so 64 keep under half a MiB for bursts of new connections.
LIMIT = 64


class Runners:
    """Starts ``target(job)`` in a parked runner when there is one, else in a new greenlet.

    One argument, not ``*args``: in CPython 3.11 a star-call is not inlined, it runs a second
    interpreter loop in C, whose frames stay on the stack that every switch of the greenlet
    saves and restores (an idle connection's saved stack 2,376 bytes with it, 1,864 without).
    """

    def __init__(self, target: Any, limit: int = LIMIT) -> None:
        self.target = target
        self.limit = limit
        self.idle: list[Any] = []
        self.run_callback = get_hub().loop.run_callback

    def start(self, job: Any) -> None:
        idle = self.idle
        if idle:
            # scheduled, not switched to now: as gevent.spawn starts a greenlet, after the
            # accept loop's turn (the hub is the one calling)
            self.run_callback(idle.pop().switch, job)
        else:
            # a function, not the bound method: that one call through C kept 144 bytes more
            # on every runner's saved stack (2,008 against 1,864 with a function)
            Greenlet.spawn(_run, self, job)


def _run(runners: Runners, job: Any) -> None:
    """A runner's life: jobs one after another, parked in ``runners.idle`` between them."""
    target, idle, limit = runners.target, runners.idle, runners.limit
    hub = get_hub()
    me = getcurrent()
    while True:
        target(job)
        if len(idle) >= limit:
            return
        # The next job starts in an empty context, and this one's values go now. Not
        # Context().run(target, job): that call goes through C too (2,504 bytes saved).
        me.gr_context = None
        idle.append(me)
        job = hub.switch()
