"""Master side of metrics: a prometheus-client Collector over the Aggregator, and the HTTP
endpoint serving ``/metrics`` and ``/healthz`` from threads so that no client can stall the
master's loop."""

from __future__ import annotations

import errno
import ipaddress
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from greenserve import logs
from greenserve.aggregate import RESTART_REASONS, Aggregator, View, health
from greenserve.config import Address, Settings
from greenserve.sockets import BindError
from greenserve.stats import HISTOGRAMS

COUNTER_HELP = {
    "connections_accepted": "Connections accepted by the worker slot.",
    "bytes_received": "Bytes received from clients by the worker slot.",
    "bytes_sent": "Bytes sent to clients by the worker slot.",
    "handler_errors": "Connections whose handler raised an exception.",
    "stats_dropped": "Stats snapshots dropped because the channel to the master was full.",
    "event_loop_blocked": "Times the event loop was blocked longer than --block-warn.",
    "log_lines_dropped": "Log lines the worker could not write (stdout and stderr failed).",
    "http_request_timeouts": "HTTP requests stopped by --request-timeout.",
    "tls_handshakes": "TLS handshakes completed.",
    "connections_upgraded": "HTTP connections the app took over after an Upgrade (WebSockets).",
    "websocket_messages_received": "WebSocket messages received (wsgi.websocket).",
    "websocket_messages_sent": "WebSocket messages sent (wsgi.websocket).",
    "websocket_bytes_received": "Bytes received on WebSockets (wsgi.websocket), framing included.",
    "websocket_bytes_sent": "WebSocket payload bytes sent (wsgi.websocket).",
}
# Reasons a TLS handshake fails (protocols/tls.py), each shown from the first scrape.
TLS_FAILURE_REASONS = ("timeout", "eof", "plaintext_http", "client_certificate", "protocol")
# Reasons a connection's PROXY header was refused (protocols/tcp.py), seeded the same way.
PROXY_FAILURE_REASONS = ("not_allowed", "malformed", "timeout", "eof")
# WebSocket close codes shown from the first scrape: normal, going away, abnormal, too big.
WEBSOCKET_CLOSE_CODES = ("1000", "1001", "1006", "1009")
GAUGES = {  # snapshot gauge -> (metric name, help)
    "connections_active": (
        "greenserve_connections_active",
        "Connections open in the worker slot now.",
    ),
    "resident_memory_bytes": (
        "greenserve_worker_resident_memory_bytes",
        "Resident memory of the worker slot's live process.",
    ),
    "websocket_connections_active": (
        "greenserve_websocket_connections_active",
        "WebSockets open now (wsgi.websocket).",
    ),
    "http_requests_in_flight": (
        "greenserve_http_requests_in_flight",
        "HTTP requests being answered by the worker slot now.",
    ),
}
HISTOGRAM_HELP = {
    "event_loop_lag_seconds": "How late the worker's event loop woke a timer (blocked-loop time).",
    "http_request_duration_seconds": "Time from a request's head to the end of its response.",
}
# Shown at 0 before the first request so that the family exists from the first scrape.
SEEDED_CODES = ("200",)


class GreenserveCollector(Collector):
    """Builds every greenserve family from the aggregator on each scrape."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def collect(self) -> Iterable[Metric]:
        view = self.aggregator.view()
        yield GaugeMetricFamily(
            "greenserve_workers_alive", "Worker processes alive now.", value=view.alive
        )
        yield GaugeMetricFamily(
            "greenserve_workers_desired", "Worker processes the master keeps.", value=view.desired
        )
        restarts = CounterMetricFamily(
            "greenserve_worker_restarts",
            "Worker processes replaced, by reason.",
            labels=["reason"],
        )
        for reason in RESTART_REASONS:
            restarts.add_metric([reason], view.restarts.get(reason, 0))
        yield restarts
        yield GaugeMetricFamily(
            "greenserve_generation",
            "Worker generation: 1 at start, one more for each reload.",
            value=view.generation,
        )
        if view.tls_expiry is not None:
            yield GaugeMetricFamily(
                "greenserve_tls_certificate_expiry_timestamp_seconds",
                "When the served TLS certificate expires (Unix time).",
                value=view.tls_expiry,
            )
        yield CounterMetricFamily(
            "greenserve_master_log_lines_dropped",
            "Log lines the master could not write (stdout and stderr failed).",
            value=logs.dropped(),
        )
        yield from _per_worker(view)


def _by_reason(
    view: View,
    name: str,
    text: str,
    stat: str,
    reasons: tuple[str, ...],
    label: str = "reason",
) -> Metric:
    """A per-worker counter by label value, every known value present from the first scrape."""
    family = CounterMetricFamily(name, text, labels=["worker", label])
    for slot in view.slots:
        counts = {**dict.fromkeys(reasons, 0), **slot.labelled.get(stat, {})}
        for reason, count in sorted(counts.items()):
            family.add_metric([str(slot.index), reason], count)
    return family


def _per_worker(view: View) -> Iterator[Metric]:
    slot_families = (
        (
            GaugeMetricFamily,
            "greenserve_worker_pid",
            "Process id of the slot's live worker; 0 when none.",
            lambda slot: slot.pid or 0,
        ),
        (
            GaugeMetricFamily,
            "greenserve_worker_ready",
            "1 when the slot's worker is accepting connections.",
            lambda slot: int(slot.alive and slot.ready),
        ),
        (
            CounterMetricFamily,
            "greenserve_slot_restarts",
            "Worker processes replaced in this slot, any reason.",
            lambda slot: slot.restarts,
        ),
    )
    for kind, name, text, value in slot_families:
        family = kind(name, text, labels=["worker"])
        for slot in view.slots:
            family.add_metric([str(slot.index)], value(slot))
        yield family
    for name, text in COUNTER_HELP.items():
        family = CounterMetricFamily(f"greenserve_{name}", text, labels=["worker"])
        for slot in view.slots:
            family.add_metric([str(slot.index)], slot.counters[name])
        yield family
    for name, (metric, text) in GAUGES.items():
        family = GaugeMetricFamily(metric, text, labels=["worker"])
        for slot in view.slots:
            family.add_metric([str(slot.index)], slot.gauges[name])
        yield family
    yield _by_reason(
        view,
        "greenserve_http_requests",
        "HTTP requests answered, by status code.",
        "http_requests",
        SEEDED_CODES,
        label="code",
    )
    yield _by_reason(
        view,
        "greenserve_tls_handshake_failures",
        "TLS handshakes that failed, by reason.",
        "tls_handshake_failures",
        TLS_FAILURE_REASONS,
    )
    yield _by_reason(
        view,
        "greenserve_websocket_closes",
        "WebSockets closed (wsgi.websocket), by the close code received (1006: none).",
        "websocket_closes",
        WEBSOCKET_CLOSE_CODES,
        label="code",
    )
    yield _by_reason(
        view,
        "greenserve_proxy_protocol_failures",
        "Connections closed because of their PROXY header, by reason.",
        "proxy_protocol_failures",
        PROXY_FAILURE_REASONS,
    )
    for name, bounds in HISTOGRAMS.items():
        family = HistogramMetricFamily(
            f"greenserve_{name}", HISTOGRAM_HELP[name], labels=["worker"]
        )
        for slot in view.slots:
            hist = slot.histograms[name]
            buckets, running = [], 0
            for bound, count in zip((*map(str, bounds), "+Inf"), hist["counts"], strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric([str(slot.index)], buckets, hist["sum"])
        yield family


def build_registry(aggregator: Aggregator) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GreenserveCollector(aggregator))
    ProcessCollector(registry=registry)  # the master's own CPU, memory and fds
    return registry


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def build_app(
    registry: CollectorRegistry, aggregator: Aggregator, stale_after: Callable[[], float | None]
) -> WsgiApp:
    """``/metrics`` (text, OpenMetrics or gzip as the scraper asks) and ``/healthz``."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            ok, body = health(aggregator.view(), stale_after())
            payload = json.dumps(body).encode()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [payload]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    # A stalled scraper holds only its own thread, and only this long.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one line per scrape would drown the service's own events."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class MetricsServer:
    """The HTTP endpoint, served from its own threads."""

    def __init__(self, address: Address, app: WsgiApp) -> None:
        self._server = make_server(
            address.host,
            address.port,
            app,
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # bounds how long stop() waits for the thread
            name="greenserve-metrics",
            daemon=True,
        )

    @property
    def address(self) -> Address:
        host, port = self._server.server_address[:2]
        return Address(str(host), int(port))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(settings: Settings, aggregator: Aggregator, log: Any) -> MetricsServer | None:
    """Start ``/metrics`` and ``/healthz`` on --metrics-bind; None when it is off.

    Raises BindError (one line) when the address cannot be bound.
    """
    address = settings.metrics_bind
    if address is None:
        return None
    if not is_loopback(address):
        log.warning(
            "metrics_exposed",
            metrics_bind=str(address),
            hint="metrics reveal internals; bind them to loopback or firewall the port",
        )
    app = build_app(build_registry(aggregator), aggregator, lambda: stale_window(settings))
    try:
        server = MetricsServer(address, app)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
            hint = " (another greenserve? give this one --metrics-bind HOST:PORT, or off)"
        raise BindError(f"cannot bind metrics {address}: {reason}{hint}") from None
    server.start()
    return server


def stale_window(settings: Settings) -> float:
    """How long a worker may go without reporting before /healthz calls it stale.

    Shorter than ``--timeout`` (which kills): a worker silent for a few stats intervals is
    already not serving, and operators should see that before the replacement happens.
    """
    window = max(2.0, 3 * settings.stats_interval)
    return min(window, settings.timeout) if settings.timeout else window


def is_loopback(address: Address) -> bool:
    if address.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False
