"""Hello world, and the same with a prometheus_client Counter incremented per request: the cost
of an app's own metrics under greenserve (tests/bench/app_metrics.py)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

HELLO = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
REQUESTS = Counter("bench_requests", "Requests served.", ["route"])
ROOT = REQUESTS.labels("/")


def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", HEADERS)
    return [HELLO]


def counted(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    ROOT.inc()
    start_response("200 OK", HEADERS)
    return [HELLO]
