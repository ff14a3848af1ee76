"""Fairness between the connections of one worker.

A greenlet whose peer sends the next request (or WebSocket message) as soon as it has the answer
may never give the hub a chance to poll: every other connection waits until this one goes quiet.
Reading the next request from the socket waits for readability first (``recv_after_wait``),
which goes through the hub's poll, so it is fair by itself. What is not: a request or message
already read, pipelined behind the one just answered (in the parser's queue, or as plaintext in
a TLS session). Each protocol loop checks, in that case only, how long the connection has run since
it last waited on the hub and, past ``TURN_SECONDS``, steps back behind the I/O that became ready
meanwhile: a time slice per connection, as a scheduler gives one per thread.

Measured on the Flask bench (wrk -c64) when the turn was taken after every response: p99 77 ms
with no turn, 64 ms at 10 ms, 49-51 ms at 2 ms, 34 ms at 1 ms, 20 ms at 0.5 ms. Taking it after
every response also cost a poll and two epoll_ctl calls per request (strace): libev keeps a
descriptor registered after its watcher stops, drops it when the poll reports it ready with no
watcher on it, and adds it back at the next wait.

Why the slice is the reader's own and not the loop turn's (the time since the last poll, which
it was until 2026-12-07): under load every loop turn runs past 0.5 ms, so every pipelining
connection stepped back after each request, and each step back sent that one response on its
own (a held batch goes out before a greenlet yields: CountingSocket.cork). wrk pipelining 16
requests per write over 64 connections made 9,179 sends for 13,189 requests (strace), and the
pipelined hello served 1.25x the unpipelined one per CPU-second instead of batching.
"""

from __future__ import annotations

from time import monotonic
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


def take_turn(connection: Any) -> None:
    """For a reader about to go on without waiting (a request or message already read): step
    back once the connection's greenlet has run past ``TURN_SECONDS``. ``connection``: the
    socket beneath (a CountingSocket, phase.py), whose ``turn_started`` its
    ``recv_after_wait`` sets to 0.0 at each wait, whichever reader (HTTP, TLS, WebSocket) asked.

    The slice starts at the first call after a wait, not at the wait itself: a clock read per
    request that never pipelines would be paid by every keep-alive request. A run is therefore
    bounded by ``TURN_SECONDS`` plus the two requests at its ends."""
    now = monotonic()
    started = connection.turn_started
    if not started:
        connection.turn_started = now
    elif now - started > TURN_SECONDS:
        step_back(get_hub())
        connection.turn_started = monotonic()
