"""Fairness between the connections of one worker.

A greenlet whose peer sends the next request (or WebSocket message) as soon as it has the answer
may never give the hub a chance to poll: every other connection waits until this one goes quiet.
Reading the next request from the socket waits for readability first (``recv_after_wait``),
which goes through the hub's poll, so it is fair by itself. What is not: a request or message
already read, pipelined behind the one just answered (in the parser's queue, or as plaintext in
a TLS session). Each protocol loop checks, in that case only, how long the current loop turn has
run (``loop.now()`` is the time of the last poll) and, past ``TURN_SECONDS``, steps back behind
the I/O that became ready meanwhile.

Measured on the Flask bench (wrk -c64) when the turn was taken after every response: p99 77 ms
with no turn, 64 ms at 10 ms, 49-51 ms at 2 ms, 34 ms at 1 ms, 20 ms at 0.5 ms. Taking it after
every response also cost a poll and two epoll_ctl calls per request (strace): libev keeps a
descriptor registered after its watcher stops, drops it when the poll reports it ready with no
watcher on it, and adds it back at the next wait.
"""

from __future__ import annotations

import time
from typing import Any

from gevent import get_hub

TURN_SECONDS = 0.0005


def step_back(hub: Any) -> None:
    """Resume after the next poll: a 0 s timer. Not sleep(0), a callback that runs before the
    poll; and not a small delay, which libev rounds up to a whole millisecond of poll timeout
    (it halved the 64 KiB bench's requests per second whenever nothing else was ready)."""
    turn = hub.loop.timer(0.0)
    try:
        hub.wait(turn)
    finally:
        turn.close()


def take_turn() -> None:
    """Step back if the current loop turn has run past ``TURN_SECONDS``; for a reader about to
    go on without waiting (a request or message already read)."""
    hub = get_hub()
    if time.time() - hub.loop.now() > TURN_SECONDS:
        step_back(hub)
