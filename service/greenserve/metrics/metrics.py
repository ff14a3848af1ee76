"""Master side of metrics: a prometheus-client Collector over the Aggregator, and the HTTP
endpoint serving ``/metrics`` and ``/healthz`` from threads so that no client can stall the
master's loop."""

from __future__ import annotations

import errno
import gzip
import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector
from prometheus_client.utils import MINUS_INF, floatToGoString

from greenserve import logs
from greenserve.config import Address, Settings
from greenserve.master.sockets import BindError, bind_reason
from greenserve.metrics.aggregate import Aggregator, SlotView, View, health
from greenserve.metrics.appmerge import MergedFamily
from greenserve.metrics.catalog import (
    MASTER_FAMILIES,
    SLOT_FAMILIES,
    WORKER_COUNTERS,
    WORKER_GAUGES,
    WORKER_HISTOGRAMS,
    WORKER_LABELLED,
)

KINDS = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
OM_EOF = b"# EOF\n"


class GreenserveCollector(Collector):
    """Builds every family of catalog.py from the aggregator on each scrape."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def collect(self) -> Iterable[Metric]:
        view = self.aggregator.view()
        rejected = self.aggregator.app_rejected()
        by_label = {
            "worker_restarts": view.restarts,
            "app_series_rejected": rejected,
            "listen_queue": dict(view.listen_queues),
        }
        master: dict[str, float | None] = {
            "workers_alive": view.alive,
            "workers_desired": view.desired,
            "generation": view.generation,
            "tls_certificate_expiry_timestamp_seconds": view.tls_expiry,
            "master_log_lines_dropped": logs.dropped(),
        }
        for family in MASTER_FAMILIES:
            if family.label:
                metric = KINDS[family.kind](family.metric, family.help, labels=[family.label])
                counts = {**dict.fromkeys(family.seeded, 0), **by_label[family.name]}
                for value, count in counts.items():
                    metric.add_metric([value], count)
                yield metric
            elif master[family.name] is not None:  # no certificate gauge without TLS
                yield KINDS[family.kind](family.metric, family.help, value=master[family.name])
        yield from _per_worker(view)


class AppCollector(Collector):
    """The app's own families (appmerge.py), for the rare scrape the fast renderer below does
    not serve (a ``name[]`` filter)."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def collect(self) -> Iterable[Metric]:
        for family in self.aggregator.app_families()[0]:
            metric = Metric(family.name, family.help, family.kind)
            for sample, labels, value in family.samples:
                metric.add_sample(sample, dict(labels), value)
            yield metric


# The text format's names for what prometheus_client calls these types (its generate_latest).
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}
_TEXT_TYPES["unknown"] = "untyped"
_LABEL_TEXT: dict[tuple[tuple[str, str], ...], str] = {}  # label set -> its {...} text
_LABEL_TEXT_MAX = 500_000


def render_app(families: list[MergedFamily], openmetrics: bool) -> bytes:
    """The app's families in the Prometheus text format or OpenMetrics, as prometheus_client
    writes them, several times faster: a series' label text is built once, not per scrape
    (64 workers' per-worker gauges are tens of thousands of lines)."""
    out = []
    labels_text = _LABEL_TEXT
    if len(labels_text) > _LABEL_TEXT_MAX:
        labels_text.clear()
    for family in families:
        name, kind, text = family.name, family.kind, family.help.replace("\\", r"\\")
        text = text.replace("\n", r"\n")
        if openmetrics:
            text = text.replace('"', r"\"")
        else:
            name += "_total" if kind == "counter" else "_info" if kind == "info" else ""
            kind = _TEXT_TYPES.get(kind, kind)
        out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")
        for sample, labels, value in family.samples:
            shown = labels_text.get(labels)
            if shown is None:
                shown = labels_text[labels] = _labels(labels)
            # floatToGoString is a float's repr() below 1e6 (Go writes exponents from there);
            # NaN and the infinities fail the test and take the long way
            fast = type(value) is float and MINUS_INF < value < 1e6
            text = repr(value) if fast else floatToGoString(value)
            out.append(f"{sample}{shown} {text}\n")
    return "".join(out).encode()


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    pairs = (f'{key}="{_escaped(value)}"' for key, value in labels)
    return "{" + ",".join(pairs) + "}"


def _escaped(value: str) -> str:
    """A label value as both formats write it: backslash, newline and double quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


SLOT_VALUES: dict[str, Callable[[SlotView], float]] = {
    "worker_pid": lambda slot: slot.pid or 0,
    "worker_ready": lambda slot: int(slot.alive and slot.ready),
    "slot_restarts": lambda slot: slot.restarts,
}


def _per_worker(view: View) -> Iterator[Metric]:
    for family in SLOT_FAMILIES:
        metric = KINDS[family.kind](family.metric, family.help, labels=["worker"])
        for slot in view.slots:
            metric.add_metric([str(slot.index)], SLOT_VALUES[family.name](slot))
        yield metric
    for family in WORKER_COUNTERS + WORKER_GAUGES:
        metric = KINDS[family.kind](family.metric, family.help, labels=["worker"])
        for slot in view.slots:
            values = slot.counters if family.kind == "counter" else slot.gauges
            metric.add_metric([str(slot.index)], values[family.stat])
        yield metric
    for family in WORKER_LABELLED:
        # every seeded value is present from the first scrape
        metric = CounterMetricFamily(family.metric, family.help, labels=["worker", family.label])
        for slot in view.slots:
            counts = {**dict.fromkeys(family.seeded, 0), **slot.labelled.get(family.stat, {})}
            for value, count in sorted(counts.items()):
                metric.add_metric([str(slot.index), value], count)
        yield metric
    for family in WORKER_HISTOGRAMS:
        metric = HistogramMetricFamily(family.metric, family.help, labels=["worker"])
        for slot in view.slots:
            hist = slot.histograms[family.stat]
            buckets, running = [], 0
            bounds = (*map(str, family.buckets), "+Inf")
            for bound, count in zip(bounds, hist["counts"], strict=True):
                running += count
                buckets.append((bound, running))
            metric.add_metric([str(slot.index)], buckets, hist["sum"])
        yield metric


def build_registry(aggregator: Aggregator, app: bool = True) -> CollectorRegistry:
    """greenserve's families, the master's process metrics, and (``app``) the app's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GreenserveCollector(aggregator))
    if app:
        registry.register(AppCollector(aggregator))
    ProcessCollector(registry=registry)  # the master's own CPU, memory and fds
    return registry


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def build_app(
    registry: CollectorRegistry, aggregator: Aggregator, stale_after: Callable[[], float | None]
) -> WsgiApp:
    """``/metrics`` (text, OpenMetrics or gzip as the scraper asks) and ``/healthz``.

    ``registry`` has every family; a scrape is served from greenserve's own families, encoded
    by prometheus_client, followed by the app's, encoded by ``render_app``. Only a ``name[]``
    filter goes through prometheus_client for all of them.
    """
    metrics_app = make_wsgi_app(registry)
    ours = build_registry(aggregator, app=False)

    def scrape(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("QUERY_STRING") or environ.get("REQUEST_METHOD") != "GET":
            return metrics_app(environ, start_response)
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        openmetrics = content_type.startswith("application/openmetrics-text")
        output = encoder(ours)
        app_text = render_app(aggregator.app_families()[0], openmetrics)
        if openmetrics:  # the app's families go before the end marker
            output = output[: -len(OM_EOF)] + app_text + OM_EOF
        else:
            output += app_text
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            output = gzip.compress(output)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [output]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return scrape(environ, start_response)
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
    """The HTTP endpoint, served from its own threads, on a socket it binds or one it adopts
    (a USR2 upgrade's, still open in the old master)."""

    def __init__(self, address: Address, app: WsgiApp, adopt: socket.socket | None = None) -> None:
        server = _ThreadingServer(
            (address.host, address.port), _QuietHandler, bind_and_activate=adopt is None
        )
        if adopt is not None:
            server.socket.close()
            server.socket = adopt  # already bound and listening
            server.server_address = adopt.getsockname()
            server.server_name, server.server_port = address.host, server.server_address[1]
            server.setup_environ()
        server.set_app(app)
        self._server = server
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

    def fileno(self) -> int:
        return self._server.fileno()

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def serve_metrics(
    settings: Settings, aggregator: Aggregator, log: Any, inherited: int | None = None
) -> MetricsServer | None:
    """``/metrics`` and ``/healthz`` on --metrics-bind; None when it is off. ``inherited``: the
    metrics socket of the master this one upgrades (USR2), adopted when it is bound to the same
    address (closed otherwise: the setting changed). An adopted socket is answered on only from
    ``start()``, once this master is ready: until then the old master answers there.

    Raises BindError (one line) when the address cannot be bound.
    """
    address = settings.metrics_bind
    adopt = None if inherited is None else socket.socket(fileno=inherited)
    if adopt is not None and not _same_address(adopt, address):
        adopt.close()
        adopt = None
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
        server = MetricsServer(address, app, adopt)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (another greenserve? give this one --metrics-bind HOST:PORT, or off)"
        raise BindError(f"cannot bind metrics {address}: {bind_reason(exc)}{hint}") from None
    if adopt is None:
        server.start()
    return server


def _same_address(sock: socket.socket, address: Address | None) -> bool:
    if address is None:
        return False
    host, port = sock.getsockname()[:2]
    return address.port in (0, port) and host in (
        address.host,
        "127.0.0.1" if address.host == "localhost" else address.host,
    )


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
