"""OpenTelemetry (``--otel``, the ``greenserve[otel]`` extra): a server span per HTTP request.

The SDK is set up here, in each worker after it started: its span processor runs a thread and
holds locks, which a fork would copy half-taken (opentelemetry-python-contrib #676, #2086), so
the master never imports it. The exporter is OTLP over HTTP, configured by the standard
``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` variables; the propagators by
``OTEL_PROPAGATORS`` (W3C trace context and baggage by default).

Each request's span follows the stable HTTP semantic conventions. A ``traceparent`` from the
client is its parent; the span is the current one while the app runs and while its body is
iterated, so the app's own spans nest under it. Sampling is parent-based with
``--otel-sample-ratio`` for roots. A root request that is not sampled takes a short path: fresh
ids in a non-recording span (so the app's spans and outgoing calls see an unsampled parent, as
the SDK would give them) without the SDK's sampler, span object or attributes; the per-request
cost of tracing at 1% is mostly this path's. ``shutdown`` flushes what is buffered when the
worker exits (stop, HUP, TTOU, a recycle); a worker killed by SIGKILL loses its buffer.
"""

from __future__ import annotations

import contextvars
import os
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from greenserve import __version__
from greenserve.worker import otlp
from greenserve.worker.protocols.http_response import close_body

FLUSH_MILLIS = 5000  # a stopping worker waits at most this long for its spans to go out
_SERVER = SpanKind.SERVER
_UNSAMPLED = trace.TraceFlags(0)


class _EnvironGetter(Getter[dict[str, Any]]):
    """Propagation headers from a WSGI environ (``traceparent`` is ``HTTP_TRACEPARENT``)."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return [value] if value is not None else None

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


_GETTER = _EnvironGetter()
# The context key under which the API keeps the current span, found through the API (it is a
# generated name): a one-entry Context made directly costs 0.16 us, set_span_in_context 0.33.
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, Context())))
_bits = random.getrandbits


class _UnsampledRoot(NonRecordingSpan):
    """A root request's span that was not sampled. Its ids are drawn when something asks
    (a child span, an outgoing traceparent, a log's trace id): 0.4 us a request saved."""

    def __init__(self) -> None:  # no SpanContext yet
        self._context: Any = None

    def get_span_context(self) -> SpanContext:
        if self._context is None:
            self._context = SpanContext(_bits(128), _bits(64), False, _UNSAMPLED)
        return self._context


class Tracing:
    """One worker's tracer provider and the middleware that makes the server spans."""

    def __init__(self, settings: Any) -> None:
        attributes: dict[str, Any] = {"service.instance.id": f"{os.getpid()}"}
        if "OTEL_SERVICE_NAME" not in os.environ:
            attributes["service.name"] = (settings.app or "greenserve").partition(":")[0]
        self.ratio = settings.otel_sample_ratio
        self.provider = TracerProvider(
            resource=Resource.create(attributes),
            sampler=ParentBased(TraceIdRatioBased(self.ratio)),
        )
        otlp.install()  # the exporter's batches encoded to bytes directly (otlp.py says why)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(self.provider)  # the app's own tracers get this provider
        self.tracer = self.provider.get_tracer("greenserve", __version__)

    def shutdown(self) -> None:
        """Export what is buffered, then stop the processor (the worker is exiting)."""
        self.provider.force_flush(FLUSH_MILLIS)
        self.provider.shutdown()

    def wrap(self, app: Any) -> Any:
        tracer, ratio, rand = self.tracer, self.ratio, random.random
        attach, detach = context.attach, context.detach
        extract, set_span_in_context = propagate.extract, trace.set_span_in_context
        set_root, reset_root = _context_var()

        def traced(environ: dict[str, Any], start_response: Any) -> Any:
            if "HTTP_TRACEPARENT" not in environ and rand() >= ratio:
                # an unsampled root: what the SDK's sampler would decide, without its cost
                token = set_root(Context({_SPAN_KEY: _UnsampledRoot()}))
                try:
                    body = app(environ, start_response)
                except BaseException:
                    reset_root(token)
                    raise
                if isinstance(body, list):  # produced already: no context needed to send it
                    reset_root(token)
                    return body
                return _Traced(body, None, token, reset_root)
            parent = extract(environ, getter=_GETTER)
            span = tracer.start_span(environ["REQUEST_METHOD"], parent, _SERVER)
            recording = span.is_recording()
            if recording:
                span.set_attributes(_request_attributes(environ))
            token = attach(set_span_in_context(span, parent))

            def capture(status: str, headers: Any, exc_info: Any = None) -> Any:
                if recording:
                    _status(span, status)
                return start_response(status, headers, exc_info)

            try:
                body = app(environ, capture)
            except BaseException as exc:
                if recording:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    span.set_attribute("error.type", type(exc).__qualname__)
                span.end()
                detach(token)
                raise
            return _Traced(body, span, token, detach)

        return traced


def _context_var() -> tuple[Callable[[Any], Any], Callable[[Any], None]]:
    """How the unsampled path makes its context current and restores the previous one: the
    API's own ContextVar when its runtime context is the standard one (two calls fewer each
    way: the wrapper cost 0.73 us a request, now 0.63), else its attach and detach."""
    runtime = getattr(context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if isinstance(var, contextvars.ContextVar):
        return var.set, var.reset
    return context.attach, context.detach


class _Traced:
    """The app's body, iterated with the request's span current; the span ends at close."""

    __slots__ = ("body", "detach", "span", "token")

    def __init__(
        self, body: Iterable[bytes], span: Any, token: Any, detach: Callable[[Any], None]
    ) -> None:
        self.body, self.span, self.token, self.detach = body, span, token, detach

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close_body(self.body)
        finally:
            if self.span is not None:
                self.span.end()
            self.detach(self.token)


def _request_attributes(environ: dict[str, Any]) -> dict[str, Any]:
    """The stable HTTP server span attributes (semantic conventions 1.2x, ``http``)."""
    attributes: dict[str, Any] = {
        "http.request.method": environ["REQUEST_METHOD"],
        "url.path": environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
        "url.scheme": environ.get("wsgi.url_scheme", "http"),
        "server.address": environ.get("SERVER_NAME", ""),
        "network.protocol.version": environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2],
        "greenserve.request_id": environ.get("greenserve.request_id", ""),
    }
    if environ.get("QUERY_STRING"):
        attributes["url.query"] = environ["QUERY_STRING"]
    port = environ.get("SERVER_PORT")
    if port and port.isdigit():
        attributes["server.port"] = int(port)
    if environ.get("REMOTE_ADDR"):
        attributes["client.address"] = environ["REMOTE_ADDR"]
    if environ.get("HTTP_USER_AGENT"):
        attributes["user_agent.original"] = environ["HTTP_USER_AGENT"]
    return attributes


def _status(span: Any, status: str) -> None:
    code = status.split(" ", 1)[0]
    if not code.isdigit():
        return
    span.set_attribute("http.response.status_code", int(code))
    if int(code) >= 500:  # a server span's error is a 5xx only (4xx is the client's)
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR))
