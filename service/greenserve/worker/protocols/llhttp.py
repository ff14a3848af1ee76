"""llhttp (httptools) as greenserve runs it, and how its errors map to statuses."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import httptools

_TOKEN_METHOD = re.compile(rb"[A-Z][A-Z-]* ")


class HttpError(Exception):
    """A request we answer with ``status`` and then close."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def request_parser(callbacks: Any) -> httptools.HttpRequestParser:
    """llhttp as every request of greenserve is parsed: RFC 9112 7.1.1 allows whitespace (BWS)
    before a chunk extension's ";"; llhttp rejects it after the ";" and around "=" whatever the
    options (see docs/http.md)."""
    parser = httptools.HttpRequestParser(callbacks)
    parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
    return parser


def messages_completed(data: bytes) -> int:
    """How many whole requests a fresh parser finds at the start of ``data``."""
    counter = _MessageCounter()
    parser = request_parser(counter)
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(data)
    return counter.completed


class _MessageCounter:
    __slots__ = ("completed",)

    def __init__(self) -> None:
        self.completed = 0

    def on_message_complete(self) -> None:
        self.completed += 1


def as_http_error(exc: Exception, data: bytes) -> HttpError:
    """The status a parser error deserves; ``data`` starts where the failing request starts."""
    if isinstance(exc, httptools.HttpParserCallbackError):
        if isinstance(exc.__context__, HttpError):
            return exc.__context__
        return HttpError(400, str(exc))
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        if _TOKEN_METHOD.match(data):
            return HttpError(501, "method not implemented")
        return HttpError(400, "invalid method")
    message = str(exc)
    if "HTTP version" in message:
        return HttpError(505, message)
    # Includes "chunked" not being the final coding: RFC 9112 6.3 says 400.
    return HttpError(400, message)
