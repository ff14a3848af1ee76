"""A 64 KiB response: the HTTP bench's case where writing dominates."""

from __future__ import annotations

from typing import Any

BODY = b"x" * 65536


def app(environ: dict, start_response: Any) -> list[bytes]:
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BODY)))]
    )
    return [BODY]
