"""Whole exchanges with the ``conformance`` test app: requests in, the responses that must come out.

Each case is (name, request bytes, expected responses, after). The runner appends
``LAST`` to every request stream: when ``after`` is "open" the connection must still answer it
(its 200 ends the expected list); when "closed" the server must close before it. Each expected
response is a dict: ``status``; optional ``body`` (exact bytes), ``json`` (a subset of the
decoded body), ``absent`` (header names that must not be sent).

These are the framing defects once found by sending other servers' test material, one case at
least each, so a regression shows as a failing case whichever way the bytes are cut.
"""

from __future__ import annotations

from tests.http_corpus.corpus import chunked, req

LAST = b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
LAST_RESPONSE = {"status": 200, "json": {"path": "/last"}}
NO_FRAMING = ["content-length", "transfer-encoding"]

EXCHANGES: list[tuple[str, bytes, list[dict], str]] = [
    (
        "chunked upload is read whole (wsgi.input_terminated)",
        req("POST /echo HTTP/1.1", "Host: a", "Transfer-Encoding: chunked")
        + chunked(b"hello", b" world"),
        [{"status": 200, "json": {"body": "hello world", "input_terminated": True}}],
        "open",
    ),
    (
        "server software in the environ",
        req("GET /echo HTTP/1.1", "Host: a"),
        [{"status": 200, "json": {"server_software": "greenserve/0.1.0"}}],
        "open",
    ),
    (
        "204 sends no body and keeps the connection in step",
        req("GET /204 HTTP/1.1", "Host: a") + req("GET /echo HTTP/1.1", "Host: a"),
        [{"status": 204, "body": b"", "absent": NO_FRAMING}, {"status": 200}],
        "open",
    ),
    (
        "304 sends no body",
        req("GET /304 HTTP/1.1", "Host: a") + req("GET /echo HTTP/1.1", "Host: a"),
        [{"status": 304, "body": b"", "absent": ["transfer-encoding"]}, {"status": 200}],
        "open",
    ),
    (
        "HEAD sends no body",
        req("HEAD /echo HTTP/1.1", "Host: a") + req("GET /echo HTTP/1.1", "Host: a"),
        [{"status": 200, "body": b""}, {"status": 200, "json": {"method": "GET"}}],
        "open",
    ),
    (
        "iterable past its Content-Length is cut and the connection closed",
        req("GET /cl-over HTTP/1.1", "Host: a"),
        [{"status": 200, "body": b"abcdefgh"}],
        "closed",
    ),
    (
        "write() past its Content-Length is cut and the connection closed",
        req("GET /cl-over-write HTTP/1.1", "Host: a"),
        [{"status": 200, "body": b"abcdefgh"}],
        "closed",
    ),
    (
        "file_wrapper without a file descriptor past its Content-Length is cut",
        req("GET /cl-over-file HTTP/1.1", "Host: a"),
        [{"status": 200, "body": b"abcdefgh"}],
        "closed",
    ),
    (
        "a body short of its Content-Length closes the connection",
        req("GET /cl-short HTTP/1.1", "Host: a"),
        [{"status": 200, "body": b"abc"}],
        "closed",
    ),
    (
        "str in the iterable is a 500",
        req("GET /str HTTP/1.1", "Host: a"),
        [{"status": 500}],
        "closed",
    ),
    (
        "a response header name with a space is a 500",
        req("GET /bad-header-name HTTP/1.1", "Host: a"),
        [{"status": 500}],
        "closed",
    ),
    (
        "a response header value with CRLF is a 500, nothing injected",
        req("GET /bad-header-value HTTP/1.1", "Host: a"),
        [{"status": 500, "absent": ["x-injected", "x-a"]}],
        "closed",
    ),
    (
        "100 Continue for every request of a keep-alive connection",
        req("POST /echo HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 3")
        + b"abc"
        + req("POST /echo HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 3")
        + b"def",
        [
            {"status": 100},
            {"status": 200, "json": {"body": "abc"}},
            {"status": 100},
            {"status": 200, "json": {"body": "def"}},
        ],
        "open",
    ),
    (
        "a final response without reading: no 100 after it, and close",
        req("POST /401 HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 5"),
        [{"status": 401, "body": b"denied"}],
        "closed",
    ),
    (
        "HTTP/1.0 with Transfer-Encoding is answered, then closed",
        req("POST /echo HTTP/1.0", "Transfer-Encoding: chunked", "Connection: keep-alive")
        + chunked(b"old"),
        [{"status": 200, "json": {"body": "old"}}],
        "closed",
    ),
    (
        "pipelined garbage after a valid request is a 400",
        req("GET /echo HTTP/1.1", "Host: a") + b"\x16\x03\x01 GARBAGE\r\n\r\n",
        [{"status": 200}, {"status": 400}],
        "closed",
    ),
    (
        "pipelined unknown method after a valid request is a 501",
        req("GET /echo HTTP/1.1", "Host: a") + req("BREW /pot HTTP/1.1", "Host: a"),
        [{"status": 200}, {"status": 501}],
        "closed",
    ),
    (
        "pipelined garbage after a request with a body is a 400",
        req("POST /echo HTTP/1.1", "Host: a", "Content-Length: 4") + b"GET \x01\x02\r\n\r\n",
        [{"status": 200, "json": {"body": "GET "}}, {"status": 400}],
        "closed",
    ),
]


def check_exchange(raw: bytes, request: bytes, expected: list[dict], after: str) -> None:
    """Assert that ``raw``, everything the server sent, is exactly the expected exchange."""
    import json

    from tests.helpers import parse_responses

    heads = frozenset({0}) if request.startswith(b"HEAD ") else frozenset()  # HEAD comes first
    responses = parse_responses(raw, heads)
    wanted = [*expected, LAST_RESPONSE] if after == "open" else expected
    assert [r.status for r in responses] == [w["status"] for w in wanted], responses
    for response, want in zip(responses, wanted, strict=True):
        if "body" in want:
            assert response.body == want["body"], response
        if "json" in want:
            shown = json.loads(response.body)
            assert {k: shown.get(k) for k in want["json"]} == want["json"], shown
        for name in want.get("absent", []):
            assert name not in response.headers, response
