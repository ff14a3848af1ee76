"""Worker counters and the snapshot wire format: the one module both master and workers import.

Stdlib only. The hot path touches plain integer attributes; once per ``--stats-interval`` the worker
turns them into a cumulative ``Snapshot`` (a dict of primitives, a few hundred bytes pickled, so a
pipe write of it is atomic: a worker killed mid-send cannot leave half a message behind).
"""

from __future__ import annotations

import os
import queue
import time
from bisect import bisect_left
from multiprocessing.sharedctypes import Synchronized
from typing import Any

WIRE_VERSION = 1
COUNTERS = (
    "connections_accepted",
    "bytes_received",
    "bytes_sent",
    "handler_errors",
    "stats_dropped",
    "event_loop_blocked",
    "log_lines_dropped",
    "http_request_timeouts",
    "tls_handshakes",
    "connections_upgraded",
    "websocket_messages_received",
    "websocket_messages_sent",
    "websocket_bytes_received",
    "websocket_bytes_sent",
)
GAUGES = (
    "connections_active",
    "resident_memory_bytes",
    "http_requests_in_flight",
    "websocket_connections_active",
)
# counters by a label value: the HTTP status code, the reason a TLS handshake failed
LABELLED = (
    "http_requests",
    "tls_handshake_failures",
    "proxy_protocol_failures",
    "websocket_closes",
)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
HISTOGRAMS = {
    "event_loop_lag_seconds": LAG_BUCKETS,
    "http_request_duration_seconds": DURATION_BUCKETS,
}

Snapshot = dict[str, Any]
# Open-connection counts per slot in shared memory, for fair accepts (protocols/accept.py).
LOAD_SLOTS = 256
LOAD_UNUSED = -1
LOAD_IN_USE = LOAD_SLOTS  # how many slots exist (set by the master)
DRAINING = LOAD_SLOTS + 1  # 1 once a stop with --drain-delay began: answer with Connection: close
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class Histogram:
    """Fixed-bucket histogram; ``counts`` are per bucket (not cumulative), the last is +Inf."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def to_wire(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}


class WorkerStats:
    """A worker's counters since its process started. Single-threaded use only (one gevent hub)."""

    __slots__ = (
        *COUNTERS,
        "tls_handshake_failures",
        "proxy_protocol_failures",
        "websocket_closes",
        "websocket_connections_active",
        "connections_active",
        "histograms",
        "http_in_flight",
        "http_requests",
        "requests_served",
        "seq",
    )

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.handler_errors = 0
        self.stats_dropped = 0
        self.event_loop_blocked = 0
        self.log_lines_dropped = 0  # copied from logs.dropped() at each flush
        self.http_request_timeouts = 0
        self.tls_handshakes = 0
        self.connections_upgraded = 0  # HTTP connections an app took over (WebSockets)
        self.websocket_messages_received = 0
        self.websocket_messages_sent = 0
        self.websocket_bytes_received = 0
        self.websocket_bytes_sent = 0
        self.websocket_connections_active = 0
        self.websocket_closes: dict[str, int] = {}  # by close code
        self.tls_handshake_failures: dict[str, int] = {}
        self.proxy_protocol_failures: dict[str, int] = {}
        self.connections_active = 0
        self.http_in_flight = 0
        self.http_requests: dict[str, int] = {}
        self.requests_served = 0  # HTTP requests answered (for --max-requests), any status
        self.histograms = {name: Histogram(bounds) for name, bounds in HISTOGRAMS.items()}
        self.seq = 0

    def snapshot(
        self, *, slot: int, generation: int, ready: bool, retire: bool = False
    ) -> Snapshot:
        """``retire``: the worker reached --max-requests and asks for its turn to be replaced."""
        self.seq += 1
        return {
            "retire": retire,
            "v": WIRE_VERSION,
            "slot": slot,
            "pid": os.getpid(),
            "generation": generation,
            "seq": self.seq,
            "ready": ready,
            "counters": {name: getattr(self, name) for name in COUNTERS},
            "gauges": {
                "connections_active": self.connections_active,
                "resident_memory_bytes": resident_memory_bytes(),
                "http_requests_in_flight": self.http_in_flight,
                "websocket_connections_active": self.websocket_connections_active,
            },
            "labelled": {
                "http_requests": dict(self.http_requests),
                "tls_handshake_failures": dict(self.tls_handshake_failures),
                "proxy_protocol_failures": dict(self.proxy_protocol_failures),
                "websocket_closes": dict(self.websocket_closes),
            },
            "histograms": {name: h.to_wire() for name, h in self.histograms.items()},
        }


def resident_memory_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):  # pragma: no cover - non-Linux
        return 0


class StatsChannel:
    """The worker's end of its own stats queue. ``send`` never blocks: a full queue drops."""

    __slots__ = ("_queue",)

    def __init__(self, channel: Any) -> None:
        self._queue = channel

    def send(self, message: Snapshot) -> bool:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            return False
        return True


class Heartbeat:
    """A monotonic timestamp in shared memory: the worker's hub writes it, the master reads it.

    A shared double cannot block, be lost or be queued behind stats, unlike a message; the
    master's view of a worker's liveness therefore survives a full stats queue.
    """

    __slots__ = ("_value",)

    def __init__(self, value: Synchronized | Any) -> None:
        self._value = value

    def beat(self) -> None:
        self._value.value = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self._value.value
