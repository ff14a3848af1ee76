"""Worker counters and the snapshot wire format, shared by master and workers (as spec.py and
catalog.py are).

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

from greenserve.metrics.catalog import (
    WORKER_COUNTERS,
    WORKER_GAUGES,
    WORKER_HISTOGRAMS,
    WORKER_LABELLED,
)

WIRE_VERSION = 1
# Snapshot keys, from the one declaration of each metric (catalog.py).
COUNTERS = tuple(family.stat for family in WORKER_COUNTERS)
GAUGES = tuple(family.stat for family in WORKER_GAUGES)
LABELLED = tuple(family.stat for family in WORKER_LABELLED)  # counters by a label value
HISTOGRAMS = {family.stat: family.buckets for family in WORKER_HISTOGRAMS}
_COUNTED_GAUGES = tuple(name for name in GAUGES if name != "resident_memory_bytes")

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
    """A worker's counters since its process started. Single-threaded use only (one gevent hub).

    One plain attribute per snapshot key (catalog.py declares them), touched directly by the hot
    path: ``stats.bytes_sent += n``.
    """

    __slots__ = (
        *COUNTERS,
        *LABELLED,
        *_COUNTED_GAUGES,
        "histograms",
        "requests_served",
        "seq",
    )
    # The catalog's names again, typed, so a misspelt counter is a type error (mypy in CI); a
    # test keeps these equal to the catalog's.
    connections_accepted: int
    bytes_received: int
    bytes_sent: int
    handler_errors: int
    stats_dropped: int
    event_loop_blocked: int
    log_lines_dropped: int
    http_request_timeouts: int
    tls_handshakes: int
    connections_upgraded: int
    websocket_messages_received: int
    websocket_messages_sent: int
    websocket_bytes_received: int
    websocket_bytes_sent: int
    websocket_slow_closes: int
    http2_streams: int
    connections_active: int
    websocket_connections_active: int
    upgraded_connections_active: int
    http_requests_in_flight: int
    app_series_capped: int
    http2_streams_active: int
    http_requests: dict[str, int]
    tls_handshake_failures: dict[str, int]
    proxy_protocol_failures: dict[str, int]
    http_requests_shed: dict[str, int]
    request_start_ignored: dict[str, int]
    static_requests: dict[str, int]
    static_bytes_sent: dict[str, int]
    static_not_modified: dict[str, int]
    static_refused: dict[str, int]
    websocket_closes: dict[str, int]
    upgraded_connections_opened: dict[str, int]
    upgraded_connections_closed: dict[str, int]
    http2_connections: dict[str, int]
    http2_connection_errors: dict[str, int]
    http2_streams_reset: dict[str, int]
    histograms: dict[str, Histogram]
    requests_served: int
    seq: int

    def __init__(self) -> None:
        for name in COUNTERS + _COUNTED_GAUGES:
            setattr(self, name, 0)
        for name in LABELLED:
            setattr(self, name, {})  # label value -> count
        # log_lines_dropped is copied from logs.dropped() at each flush
        self.requests_served = 0  # HTTP requests answered (for --max-requests), any status
        self.histograms = {name: Histogram(bounds) for name, bounds in HISTOGRAMS.items()}
        self.seq = 0

    def snapshot(self, *, slot: int, generation: int, ready: bool, retire: str = "") -> Snapshot:
        """``retire``: why the worker asks for its turn to be replaced (worker/recycle.py), or
        "" while it does not."""
        self.seq += 1
        gauges = {name: getattr(self, name) for name in _COUNTED_GAUGES}
        gauges["resident_memory_bytes"] = resident_memory_bytes()
        return {
            "retire": retire,
            "v": WIRE_VERSION,
            "slot": slot,
            "pid": os.getpid(),
            "generation": generation,
            "seq": self.seq,
            "ready": ready,
            "counters": {name: getattr(self, name) for name in COUNTERS},
            "gauges": gauges,
            "labelled": {name: dict(getattr(self, name)) for name in LABELLED},
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

    def __init__(self, value: Synchronized[int] | Any) -> None:
        self._value = value

    def beat(self) -> None:
        self._value.value = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self._value.value
