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
the SDK would give them) without the SDK's sampler, span object or attributes, and that span
and its context are made only if something asks for them (``_LazyRoots``). The decision and
that short path are one C call when ``greenserve._tracegate`` is built (``python_gate`` is the
same in Python). Counted with callgrind in one worker serving hello (``python -m
tests.bench.tracing --instructions``), tracing at 1% adds 2.9% to the worker's instructions per
request: the short path about 900 instructions (2,075 as a Python function), the sampled
spans with their export the rest. ``shutdown`` flushes what is buffered when the
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
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from greenserve import __version__, extensions
from greenserve.worker import otlp
from greenserve.worker.protocols.http_response import close_body

# The C gate's interface version this module expects (TRACEGATE_ABI in _tracegate.c).
TRACEGATE_ABI = 1
GATE: Any = extensions.load("_tracegate", TRACEGATE_ABI)

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
        sampled = self._sampled(app)
        var = _lazy_var()
        if var is None:  # another runtime context than the API's: the SDK decides every request
            return sampled
        # The same decision and short path in one C call (_tracegate.c), or in Python
        gate = GATE.Gate if GATE is not None else python_gate
        return gate(app, sampled, random.random, self.ratio, var, _PENDING, _Traced, _repend)

    def _sampled(self, app: Any) -> Callable[[dict[str, Any], Any], Any]:
        """The path of a request with a parent from the client or sampled as a root: the
        SDK's sampler decides, and a recording span gets the request's attributes."""
        tracer, attach, detach = self.tracer, context.attach, context.detach
        extract, set_span_in_context = propagate.extract, trace.set_span_in_context

        def sampled(environ: dict[str, Any], start_response: Any) -> Any:
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

        return sampled


def python_gate(
    app: Any,
    sampled: Callable[[dict[str, Any], Any], Any],
    rand: Callable[[], float],
    ratio: float,
    var: contextvars.ContextVar[Context],
    pending: Context,
    traced: type[_Traced],
    repend: Callable[[contextvars.ContextVar[Context]], None],
) -> Callable[[dict[str, Any], Any], Any]:
    """_tracegate.Gate in Python, for an install without the extension: the same arguments,
    the same behaviour. ``repend(var)`` puts ``pending`` back in ``var`` unless it is there."""

    def gate(environ: dict[str, Any], start_response: Any) -> Any:
        if "HTTP_TRACEPARENT" in environ or rand() < ratio:
            return sampled(environ, start_response)
        # An unsampled root: what the SDK's sampler would decide, without its cost. The
        # greenlet's context is left ``pending`` between requests (set once per connection)
        # and is put back only when the request made its root real (``_LazyRoots``).
        repend(var)
        try:
            body = app(environ, start_response)
        except BaseException:
            repend(var)
            raise
        if isinstance(body, list):  # produced already: no context needed to send it
            repend(var)
            return body
        return traced(body, None, var, repend)

    return gate


class _LazyRoots(ContextVarsRuntimeContext):
    """The API's runtime context, except that an unsampled root's Context and span are made
    when something first asks for the current context (the app's tracer, a propagator, a log
    correlation), not for every request: most requests never ask. It keeps the ContextVar of
    the runtime it replaces, so tokens issued before stay valid."""

    def __init__(self, var: contextvars.ContextVar[Context]) -> None:
        self._current_context = var

    def get_current(self) -> Context:
        current = self._current_context.get()
        if current is _PENDING:
            current = Context({_SPAN_KEY: _UnsampledRoot()})
            self._current_context.set(current)  # back to _PENDING when the request ends
        return current


_PENDING = Context()  # the current context of an unsampled root until something asks


def _lazy_var() -> contextvars.ContextVar[Context] | None:
    """The ContextVar behind the API's current context, once ``_LazyRoots`` serves it; None
    when the runtime context is not the API's standard one (a custom OTEL_PYTHON_CONTEXT).

    Measured in process (``timeit``, a hello app called directly, 2026-12-06), the wrapper's
    cost per unsampled request: 0.73 us with the API's attach and detach, 0.58 with the
    ContextVar set and reset directly, 0.27-0.28 with the context made on demand, 0.13 with the
    ContextVar set once per greenlet and only read per request (a set and a reset make a new
    context mapping and a Token each time: 120 ns of the 0.28)."""
    runtime = getattr(context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(var, contextvars.ContextVar):
        context._RUNTIME_CONTEXT = _LazyRoots(var)
        return var
    if isinstance(runtime, _LazyRoots):  # a second Tracing in this process (tests)
        return runtime._current_context
    return None


def _repend(var: contextvars.ContextVar[Context]) -> None:
    """Before and after an unsampled request (and at its body's close): the greenlet's context
    back to _PENDING if it was made real."""
    if var.get() is not _PENDING:
        var.set(_PENDING)


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
