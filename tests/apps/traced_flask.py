"""A Flask app with its own OpenTelemetry spans, for the tracing tests."""

from __future__ import annotations

from flask import Flask, request
from opentelemetry import trace

app = Flask(__name__)
tracer = trace.get_tracer("shop")


@app.route("/order/<number>")
def order(number: str) -> str:
    with tracer.start_as_current_span("load-order") as span:
        span.set_attribute("shop.order", number)
    return f"order {number} {request.headers.get('X-Request-ID', '')}"


@app.route("/boom")
def boom() -> str:
    raise RuntimeError("boom")
