"""Hello world, and the same with a prometheus_client Counter incremented per request: the cost
of an app's own metrics under greenserve (tests/bench/app_metrics.py). ``mutex_counted`` makes
its Counter with prometheus_client's own MutexValue, what a worker used before
greenserve._appvalue (greenserve/metrics/appvalue.py), to show that difference in one run."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, values

HELLO = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
REQUESTS = Counter("bench_requests", "Requests served.", ["route"])
ROOT = REQUESTS.labels("/")
_worker_value, values.ValueClass = values.ValueClass, values.MutexValue
MUTEX_ROOT = Counter("bench_mutex_requests", "Requests served.", ["route"]).labels("/")
values.ValueClass = _worker_value


def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", HEADERS)
    return [HELLO]


def counted(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    ROOT.inc()
    start_response("200 OK", HEADERS)
    return [HELLO]


def mutex_counted(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    MUTEX_ROOT.inc()
    start_response("200 OK", HEADERS)
    return [HELLO]
