"""A Flask app instrumented as its users instrument it: prometheus_flask_exporter, and its own
prometheus_client metrics on the default registry. No PROMETHEUS_MULTIPROC_DIR, no change for
greenserve."""

from __future__ import annotations

import os

from flask import Flask
from prometheus_client import Counter, Gauge, Histogram
from prometheus_flask_exporter import PrometheusMetrics

app = Flask(__name__)
metrics = PrometheusMetrics(app)

ORDERS = Counter("shop_orders", "Orders placed.", ["kind"])
BASKET = Histogram("shop_basket_items", "Items per order.", buckets=(1, 5, 10))
IN_FLIGHT = Gauge("shop_in_flight", "Requests being served by this worker.")
PID = Gauge("shop_worker_pid", "The worker's pid, per worker.")
PID.set(os.getpid())


@app.get("/order/<kind>")
def order(kind: str) -> dict:
    with IN_FLIGHT.track_inprogress():
        ORDERS.labels(kind).inc()
        BASKET.observe(3)
        return {"pid": os.getpid()}


@app.get("/value-class")
def value_class() -> dict:
    """What the worker made this app's metrics with (greenserve.metrics.appvalue)."""
    made = type(PID._value)  # an unlabelled metric: looking adds no series
    return {"made_with": f"{made.__module__}.{made.__qualname__}"}
