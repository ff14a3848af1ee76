"""Fairness between the connections of one worker.

A greenlet whose peer sends the next request (or WebSocket message) as soon as it has the answer
never waits on its socket, so it never gives the hub a chance to poll: every other connection
waits until this one goes quiet. Each protocol loop checks, between requests or messages, how
long the current loop turn has run (``loop.now()`` is the time of the last poll) and, past
``TURN_SECONDS``, steps back behind the I/O that became ready meanwhile.

Measured on the Flask bench (wrk -c64): p99 77 ms with no turn, 64 ms at 10 ms, 49-51 ms at 2 ms,
34 ms at 1 ms, 20 ms at 0.5 ms, for about 3% of throughput.
"""

from __future__ import annotations

from typing import Any

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
