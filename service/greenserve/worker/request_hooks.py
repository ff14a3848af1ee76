"""pre_request and post_request: the app wrapped, only when one of them is set.

Wrapping instead of a check in the HTTP handler keeps the request path free of hooks when none
is declared (not even an attribute test per request). ``req`` and ``resp`` carry the names
gunicorn's objects have (``req.method``, ``req.path``, ``resp.status_code``, ``resp.sent``), so
hooks moved from a gunicorn.conf.py work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from greenserve.hooks import Hooks
from greenserve.worker.protocols.http_response import close_body

FAILED_BODY = b"Internal Server Error\n"
FAILED_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(FAILED_BODY))),
]


class HookRequest:
    """The request as pre_request and post_request see it (read from the environ)."""

    __slots__ = ("headers", "method", "path", "query", "uri", "version")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.method = environ.get("REQUEST_METHOD", "")
        self.path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        self.query = environ.get("QUERY_STRING", "")
        self.uri = environ.get("RAW_URI") or (self.path + ("?" + self.query if self.query else ""))
        self.version = _version(environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
        self.headers = [
            (key[5:].replace("_", "-"), value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        for key, name in (("CONTENT_TYPE", "CONTENT-TYPE"), ("CONTENT_LENGTH", "CONTENT-LENGTH")):
            if environ.get(key):
                self.headers.append((name, environ[key]))


def _version(protocol: str) -> tuple[int, int]:
    major, _, minor = protocol.partition("/")[2].partition(".")
    return (int(major or 1), int(minor or 0)) if major.isdigit() else (1, 1)


class HookResponse:
    """What the app answered: its status line, headers and the body bytes it produced."""

    __slots__ = ("headers", "sent", "status")

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.sent = 0

    @property
    def status_code(self) -> int:
        code = self.status.split(" ", 1)[0]
        return int(code) if code.isdigit() else 0


class _Finished:
    """The app's body, counted, with post_request called once the server closes it."""

    __slots__ = ("body", "done", "resp")

    def __init__(self, body: Iterable[bytes], resp: HookResponse, done: Callable[[], object]):
        self.body, self.resp, self.done = body, resp, done

    def __iter__(self) -> Iterator[bytes]:
        resp = self.resp
        for chunk in self.body:
            resp.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close_body(self.body)
        finally:
            self.done()


def with_request_hooks(app: Any, hooks: Hooks, worker: Any) -> Any:
    """``app`` itself if neither hook is set, else ``app`` with them around each request."""
    pre, post = hooks.get("pre_request"), hooks.get("post_request")
    if pre is None and post is None:
        return app

    def hooked(environ: dict[str, Any], start_response: Any) -> Any:
        req = HookRequest(environ)
        if pre is not None and not hooks.call("pre_request", worker, req):
            start_response("500 Internal Server Error", FAILED_HEADERS)
            return [FAILED_BODY]
        if post is None:
            return app(environ, start_response)
        resp = HookResponse()

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            resp.status, resp.headers = status, headers
            return start_response(status, headers, exc_info)

        body = app(environ, capture)
        return _Finished(body, resp, lambda: hooks.call("post_request", worker, req, environ, resp))

    return hooked
