"""A WSGI view that spends about 2 ms of CPU per request: the overload bench's app."""

from __future__ import annotations

import time
from typing import Any

BODY = b"done\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    until = time.perf_counter() + 0.002
    while time.perf_counter() < until:
        pass
    start_response("200 OK", HEADERS)
    return [BODY]
