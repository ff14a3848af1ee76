"""Every metric greenserve exports, declared once: name, type, labels, help.

Stdlib only. The worker's counters and snapshot (stats.py), the aggregator's sums, the
prometheus collector (metrics.py), the tools (monitor.py) and the docs reference page read this
table. Adding a per-worker metric is one ``Family`` here plus the code that counts it.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "greenserve_"

LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
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


@dataclass(frozen=True)
class Family:
    """One metric family.

    ``stat``: the key in a worker's snapshot (and the WorkerStats attribute) for per-worker
    families; empty for the master's own. ``label``/``seeded``: a counter by one label besides
    ``worker``, with the values shown at 0 from the first scrape.
    """

    name: str  # without the greenserve_ prefix and without _total
    kind: str  # counter, gauge or histogram
    help: str
    stat: str = ""
    label: str = ""
    seeded: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def metric(self) -> str:
        return PREFIX + self.name

    @property
    def sample(self) -> str:
        """The sample name in the exposition (counters end in _total)."""
        return self.metric + "_total" if self.kind == "counter" else self.metric


def _counter(stat: str, text: str) -> Family:
    return Family(stat, "counter", text, stat=stat)


def _by(stat: str, label: str, seeded: tuple[str, ...], text: str) -> Family:
    return Family(stat, "counter", text, stat=stat, label=label, seeded=seeded)


# Who speaks on a connection taken over after an Upgrade (worker/protocols/upgrades.py).
UPGRADE_KINDS = ("wsgi.websocket", "app", "other")

# Per worker slot (label ``worker``), summed over the slot's processes, dead ones included.
WORKER_COUNTERS = (
    _counter("connections_accepted", "Connections accepted by the worker slot."),
    _counter("bytes_received", "Bytes received from clients by the worker slot."),
    _counter("bytes_sent", "Bytes sent to clients by the worker slot."),
    _counter("handler_errors", "Connections whose handler raised an exception."),
    _counter(
        "stats_dropped", "Stats snapshots dropped because the channel to the master was full."
    ),
    _counter("event_loop_blocked", "Times the event loop was blocked longer than --block-warn."),
    _counter(
        "log_lines_dropped", "Log lines the worker could not write (stdout and stderr failed)."
    ),
    _counter("http_request_timeouts", "HTTP requests stopped by --request-timeout."),
    _counter("tls_handshakes", "TLS handshakes completed."),
    _counter(
        "connections_upgraded",
        "HTTP connections the app took over after an Upgrade (WebSockets).",
    ),
    _counter("websocket_messages_received", "WebSocket messages received (wsgi.websocket)."),
    _counter("websocket_messages_sent", "WebSocket messages sent (wsgi.websocket)."),
    _counter(
        "websocket_bytes_received",
        "Bytes received on WebSockets (wsgi.websocket), framing included.",
    ),
    _counter("websocket_bytes_sent", "WebSocket payload bytes sent (wsgi.websocket)."),
    _counter(
        "websocket_slow_closes",
        "WebSockets closed with 1013 because the peer read slower than the app sent: "
        "--ws-send-buffer stayed full for --ws-send-timeout (wsgi.websocket).",
    ),
    _counter("http2_streams", "HTTP/2 streams (requests) clients opened and the app was given."),
)
WORKER_LABELLED = (
    _by("http_requests", "code", ("200",), "HTTP requests answered, by status code."),
    _by(
        "tls_handshake_failures",
        "reason",
        ("timeout", "eof", "plaintext_http", "client_certificate", "protocol"),
        "TLS handshakes that failed, by reason.",
    ),
    _by(
        "proxy_protocol_failures",
        "reason",
        ("not_allowed", "malformed", "timeout", "eof"),
        "Connections closed because of their PROXY header, by reason.",
    ),
    _by(
        "http_requests_shed",
        "reason",
        ("inflight", "queue_time"),
        "HTTP requests answered 503 without the app: --max-inflight or --max-queue-time.",
    ),
    _by(
        "request_start_ignored",
        "reason",
        ("malformed", "untrusted", "future"),
        "X-Request-Start headers not used for queue time, by reason.",
    ),
    _by("static_requests", "mount", (), "Static files answered (200, 206, 304), by mount."),
    _by("static_bytes_sent", "mount", (), "Body bytes of static file responses, by mount."),
    _by(
        "static_not_modified",
        "mount",
        (),
        "Static requests answered 304 Not Modified (ETag or date matched), by mount.",
    ),
    _by(
        "static_refused",
        "reason",
        ("traversal", "backslash", "nul", "dotfile", "symlink"),
        "Static paths refused: a . or .. segment, a backslash, a NUL (400), a dotfile or a "
        "symlink out of the directory (404).",
    ),
    _by(
        "http2_connections",
        "negotiation",
        ("alpn", "prior_knowledge", "upgrade"),
        "HTTP/2 connections, by how HTTP/2 was agreed: TLS ALPN, h2c prior knowledge or an "
        "HTTP/1.1 Upgrade: h2c.",
    ),
    _by(
        "http2_connection_errors",
        "reason",
        (
            "protocol",
            "bad_preface",
            "header_limit",
            "rapid_reset",
            "control_flood",
            "untrusted_h2c",
        ),
        "HTTP/2 connections ended with GOAWAY for the client's fault (an invalid frame, a "
        "flood, an HPACK bomb), and h2c attempts refused from untrusted peers, by reason.",
    ),
    _by(
        "http2_streams_reset",
        "reason",
        ("client", "refused", "stall", "timeout"),
        "HTTP/2 streams reset: by the client, refused over the stream limit or after GOAWAY, "
        "stalled on a closed flow-control window (--http2-send-timeout), or --request-timeout.",
    ),
    _by(
        "upgraded_connections_opened",
        "kind",
        UPGRADE_KINDS,
        "Connections taken over after an HTTP Upgrade, by kind: wsgi.websocket, app (a "
        "WebSocket the app answered itself: Flask-Sock, Socket.IO), other (another protocol).",
    ),
    _by(
        "upgraded_connections_closed",
        "kind",
        UPGRADE_KINDS,
        "Connections taken over after an HTTP Upgrade that have ended, by kind.",
    ),
    _by(
        "websocket_closes",
        "code",
        ("1000", "1001", "1006", "1009"),  # normal, going away, abnormal, too big
        "WebSockets closed (wsgi.websocket), by the close code received (1006: none).",
    ),
)
WORKER_GAUGES = (
    Family(
        "connections_active",
        "gauge",
        "Connections open in the worker slot now.",
        stat="connections_active",
    ),
    Family(
        "worker_resident_memory_bytes",
        "gauge",
        "Resident memory of the worker slot's live process.",
        stat="resident_memory_bytes",
    ),
    Family(
        "websocket_connections_active",
        "gauge",
        "WebSockets open now (wsgi.websocket).",
        stat="websocket_connections_active",
    ),
    Family(
        "upgraded_connections_active",
        "gauge",
        "Connections taken over after an HTTP Upgrade open now, every kind: wsgi.websocket, "
        "WebSockets the app answered itself (Flask-Sock, Socket.IO), other protocols.",
        stat="upgraded_connections_active",
    ),
    Family(
        "http_requests_in_flight",
        "gauge",
        "HTTP requests being answered by the worker slot now.",
        stat="http_requests_in_flight",
    ),
    Family(
        "http2_streams_active",
        "gauge",
        "HTTP/2 streams whose app is running now.",
        stat="http2_streams_active",
    ),
    Family(
        "app_series_capped",
        "gauge",
        "App metric series the worker leaves out now (over --app-metrics-max-series).",
        stat="app_series_capped",
    ),
)
WORKER_HISTOGRAMS = (
    Family(
        "event_loop_lag_seconds",
        "histogram",
        "How late the worker's event loop woke a timer (blocked-loop time).",
        stat="event_loop_lag_seconds",
        buckets=LAG_BUCKETS,
    ),
    Family(
        "http_queue_seconds",
        "histogram",
        "Time a request waited before the app: from a trusted proxy's X-Request-Start, or from "
        "accept for a connection's first request.",
        stat="http_queue_seconds",
        buckets=QUEUE_BUCKETS,
    ),
    Family(
        "http_request_duration_seconds",
        "histogram",
        "Time from a request's head to the end of its response.",
        stat="http_request_duration_seconds",
        buckets=DURATION_BUCKETS,
    ),
)
# The slot table's view of each slot (label ``worker``), published by the master.
SLOT_FAMILIES = (
    Family("worker_pid", "gauge", "Process id of the slot's live worker; 0 when none."),
    Family("worker_ready", "gauge", "1 when the slot's worker is accepting connections."),
    Family("slot_restarts", "counter", "Worker processes replaced in this slot, any reason."),
)
# The master's own, unlabelled unless said.
MASTER_FAMILIES = (
    Family("workers_alive", "gauge", "Worker processes alive now."),
    Family("workers_desired", "gauge", "Worker processes the master keeps."),
    Family(
        "worker_restarts",
        "counter",
        "Worker processes replaced, by reason.",
        label="reason",
        seeded=("exit", "signal", "timeout", "max_requests", "rss", "lifetime", "reload"),
    ),
    Family("generation", "gauge", "Worker generation: 1 at start, one more for each reload."),
    Family(
        "tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the served TLS certificate expires (Unix time); only with TLS.",
    ),
    Family(
        "master_log_lines_dropped",
        "counter",
        "Log lines the master could not write (stdout and stderr failed).",
    ),
    Family(
        "listen_queue",
        "gauge",
        "Connections waiting in a listener's accept queue now (the kernel's count).",
        label="listener",
    ),
    Family(
        "app_series_rejected",
        "counter",
        "App metric series the master refused to merge, by reason (another type, label names "
        "or buckets than the first worker's, a greenserve_ name, a worker label).",
        label="reason",
        seeded=("type", "labels", "buckets", "reserved", "worker_label"),
    ),
)
FAMILIES = (
    MASTER_FAMILIES
    + SLOT_FAMILIES
    + WORKER_COUNTERS
    + WORKER_GAUGES
    + WORKER_LABELLED
    + WORKER_HISTOGRAMS
)
BY_NAME = {family.name: family for family in FAMILIES}


def sample(name: str) -> str:
    """The exposition's sample name of a family, e.g. ``greenserve_bytes_sent_total``."""
    return BY_NAME[name].sample
