"""greenserve's OTLP span encoding against the library's, message by message."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from greenserve.worker import otlp

SCALARS = {
    "s": "héllo",
    "empty": "",
    "yes": True,
    "no": False,
    "one": 1,
    "zero": 0,
    "negative": -5,
    "big": (1 << 63) - 1,
    "small": -(1 << 63),
    "pi": 3.25,
    "fzero": 0.0,
    "long": "x" * 300,  # a length of two varint bytes
}
SEQUENCES = {"names": ("a", "b"), "flags": [True, False], "ints": (1, 2), "floats": [0.5]}


def _spans(resource: Resource | None = None, limits: SpanLimits | None = None) -> list:
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=resource or Resource.create({"service.name": "t"}), span_limits=limits
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("greenserve", "9.9", schema_url="https://opentelemetry.io/s/1")
    other = provider.get_tracer("app")
    remote = SpanContext(
        0xABC,
        0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "v1"), ("other", "x")]),
    )
    parent_ctx = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    with tracer.start_as_current_span("GET", parent_ctx, SpanKind.SERVER, SCALARS) as server:
        server.set_attributes(SEQUENCES)
        server.set_status(Status(StatusCode.ERROR, "boom"))
        server.add_event("hit", {"n": 1, "what": "ok"})
        server.add_event("")
        with other.start_as_current_span(
            "db", kind=SpanKind.CLIENT, links=[Link(remote, {"l": 2})]
        ) as child:
            child.record_exception(ValueError("bad"))
            child.set_status(Status(StatusCode.OK))
        for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
            other.start_span("", kind=kind).end()
    return list(memory.get_finished_spans())


def _same(spans: list) -> None:
    ours = ExportTraceServiceRequest.FromString(otlp.Encoder().request(spans))
    assert ours == encode_spans(spans)


def test_every_field_and_value_kind_encodes_as_the_library_does() -> None:
    spans = _spans()
    assert len(spans) == 5
    _same(spans)


def test_the_attribute_cache_gives_the_same_bytes_the_second_time() -> None:
    spans, encoder = _spans(), otlp.Encoder()
    first = encoder.request(spans)
    assert encoder.request(spans) == first
    assert ExportTraceServiceRequest.FromString(first) == encode_spans(spans)


def test_a_true_and_a_one_under_one_key_are_kept_apart_in_the_cache() -> None:
    encoder = otlp.Encoder()
    encoded = [encoder.attributes(b"\x4a", {"k": v}) for v in (True, 1, 1.0, "1", True)]
    assert len(set(encoded)) == 4 and encoded[0] == encoded[-1]


def test_two_resources_and_dropped_counts() -> None:
    limits = SpanLimits(max_span_attributes=2, max_events=1, max_links=0)
    spans = _spans(Resource.create({"r": 1}), limits) + _spans(Resource({"r": 2}, "https://s"))
    assert any(s.dropped_attributes and s.dropped_events for s in spans)
    _same(spans)


def test_a_value_the_library_refuses_goes_to_the_library(caplog: pytest.LogCaptureFixture) -> None:
    (span,) = _spans()[:1]
    span._attributes = dict(span.attributes, huge=1 << 70)  # past int64: the library drops it
    with pytest.raises(otlp.Unencodable):
        otlp.Encoder().request([span])
    otlp.install()
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    with caplog.at_level(logging.ERROR):
        encoded = trace_exporter.encode_spans([span])
    assert encoded == encode_spans([span])  # the library's own message
    assert "huge" in caplog.text


def test_install_puts_the_encoder_in_the_exporter_once() -> None:
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    assert otlp.install() and otlp.install()
    spans = _spans()
    data = trace_exporter.encode_spans(spans).SerializePartialToString()
    assert ExportTraceServiceRequest.FromString(data) == encode_spans(spans)


def test_spans_made_outside_the_sdk_tracer_encode_too() -> None:
    (sdk_span,) = _spans()[:1]
    bare = ReadableSpan(
        name="made",
        context=sdk_span.get_span_context(),
        parent=None,
        resource=sdk_span.resource,
        attributes={"a": 1, "b": ("x",)},
        events=(Event("e", {"k": "v"}, timestamp=5),),
        links=(),
        kind=SpanKind.SERVER,
        status=Status(StatusCode.UNSET),
        start_time=1,
        end_time=2,
    )
    _same([bare, sdk_span])
