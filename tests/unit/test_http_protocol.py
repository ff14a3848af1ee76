"""The HTTP layer in process: bytes in through a scripted socket, bytes out, no sockets at all."""

from __future__ import annotations

import json
import time
import zlib

import pytest

from tests.apps.greenserve_testapps import conformance
from tests.helpers import SPLIT_MODES, parse_responses, serve_in_process, split
from tests.http_corpus.corpus import MALFORMED, VALID, chunked, req
from tests.http_corpus.exchanges import EXCHANGES, LAST, check_exchange


@pytest.fixture(autouse=True, params=["c", "python"])
def both_paths(request, monkeypatch):
    """Every case twice: with the C fast paths (greenserve._fasthead, greenserve._response,
    greenserve._cycle and its serve loop) and without them, the path a machine without a
    compiler runs."""
    if request.param == "python":
        from greenserve.worker.protocols import http, http_handler, http_parser, http_response

        monkeypatch.setattr(http, "RESPOND_PLAIN", None)
        monkeypatch.setattr(http, "SERVE_PLAIN", None)
        monkeypatch.setattr(http_parser, "FAST_PARSE", None)
        monkeypatch.setattr(http, "Response", http_response.PythonResponse)
        monkeypatch.setattr(http_handler, "DateCache", http_response.PythonDateCache)


def run(request: bytes, mode: str = "whole", app=conformance, **options):
    return serve_in_process(app, split(request, mode, zlib.crc32(request)), **options)


class TestExchanges:
    """Every exchange of the response-framing corpus, whole, byte by byte and split at random."""

    @pytest.mark.parametrize("mode", SPLIT_MODES)
    @pytest.mark.parametrize(
        ("name", "request_bytes", "expected", "after"), EXCHANGES, ids=[e[0] for e in EXCHANGES]
    )
    def test_exchange(self, name, request_bytes, expected, after, mode):
        raw, _ = run(request_bytes + LAST, mode)
        check_exchange(raw, request_bytes, expected, after)


class TestRequestCorpus:
    """The request corpus in process, in every split mode: valid requests reach the app,
    malformed ones get a status. (Over real sockets it runs in one mode: test_http.py.)"""

    @pytest.mark.parametrize("mode", SPLIT_MODES)
    @pytest.mark.parametrize(
        ("name", "request_bytes", "expected"), VALID, ids=[v[0] for v in VALID]
    )
    def test_valid(self, name, request_bytes, expected, mode):
        """Byte by byte too: a chunked body's trailer then arrives after the environ is built."""
        from tests.apps.greenserve_testapps import environ_echo

        head = request_bytes.startswith(b"HEAD ")
        raw, _ = run(request_bytes, mode, app=environ_echo)
        finals = [
            r for r in parse_responses(raw, frozenset({0} if head else ())) if r.status >= 200
        ]
        assert finals[0].status == 200, raw[:200]
        if not head:
            environ = json.loads(finals[0].body)
            assert {key: environ.get(key) for key in expected} == expected

    @pytest.mark.parametrize("mode", SPLIT_MODES)
    @pytest.mark.parametrize(
        ("name", "request_bytes", "status"), MALFORMED, ids=[m[0] for m in MALFORMED]
    )
    def test_malformed(self, name, request_bytes, status, mode):
        raw, _ = run(request_bytes, mode)
        assert raw.startswith(f"HTTP/1.1 {status} ".encode()), raw[:200]
        assert b"Connection: close" in raw.split(b"\r\n\r\n")[0]


class TestResponseRules:
    """Rules that need a look at logs or at bytes the stream parser hides."""

    def test_truncation_is_logged_and_counted(self):
        raw, events = run(req("GET /cl-over HTTP/1.1", "Host: a"))
        assert raw.endswith(b"\r\n\r\nabcdefgh")
        [event] = [e for e in events if e["event"] == "response_truncated"]
        assert event["dropped_bytes"] == 2 and event["content_length"] == 8

    def test_interim_status_as_final_has_no_body_and_no_length(self):
        raw, _ = run(req("GET /103 HTTP/1.1", "Host: a", "Connection: close"))
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 103 ") and body == b""
        assert b"Content-Length" not in head and b"Transfer-Encoding" not in head

    def test_no_100_continue_after_the_final_response(self):
        request = req("POST /401 HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 5")
        raw, _ = run(request + b"hello" + LAST)
        assert b"100 Continue" not in raw
        assert [r.status for r in parse_responses(raw)] == [401]

    def test_a_failed_request_is_access_logged_as_itself(self):
        """The 500 greenserve answers for an app that raised, and the 413 for a chunked body
        over --max-body: the access line names the request (path, query, user agent, referer)
        and the time it took, as the app's own responses do. The 500 comes second on its
        connection, the request _cycle.c takes."""

        def app(environ, start_response):
            if environ["PATH_INFO"] == "/boom":
                time.sleep(0.02)  # the app's own work before it fails
                raise RuntimeError("boom")
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]

        ok = req("GET /ok HTTP/1.1", "Host: a", "User-Agent: ua-1")
        boom = req("GET /boom?x=1 HTTP/1.1", "Host: a", "User-Agent: ua-2", "Referer: http://r/")
        raw, events = run(ok + boom, app=app, access_log=True)
        assert [r.status for r in parse_responses(raw)] == [200, 500]
        lines = [e for e in events if e["event"] == "request"]
        seen = [(e["status"], e["path"], e["query"], e["user_agent"], e["referer"]) for e in lines]
        assert seen == [(200, "/ok", "", "ua-1", None), (500, "/boom", "x=1", "ua-2", "http://r/")]
        assert lines[1]["duration_ms"] >= 20
        assert lines[1]["error"] == "the application raised an exception"
        assert lines[1]["request_id"] == parse_responses(raw)[1].headers["x-request-id"]

        upload = req(
            "POST /up?y=2 HTTP/1.1", "Host: a", "User-Agent: ua-3", "Transfer-Encoding: chunked"
        )
        raw, events = run(upload + chunked(b"x" * 600, b"y" * 600), access_log=True, max_body=1000)
        assert [r.status for r in parse_responses(raw)] == [413]
        (line,) = [e for e in events if e["event"] == "request"]
        assert (line["path"], line["query"], line["user_agent"]) == ("/up", "y=2", "ua-3")

    def test_a_body_refused_before_the_app_is_access_logged_with_its_fields(self):
        """A declared body over --max-body is answered 413 before any environ exists: the line
        still has the path, query, user agent and referer the parser read."""
        upload = req(
            "POST /up?y=2 HTTP/1.1",
            "Host: a",
            "User-Agent: ua-4",
            "Referer: http://r/",
            "Content-Length: 5000",
        )
        raw, events = run(upload, access_log=True, max_body=1000)
        assert [r.status for r in parse_responses(raw)] == [413]
        (line,) = [e for e in events if e["event"] == "request"]
        seen = (line["path"], line["query"], line["user_agent"], line["referer"])
        assert seen == ("/up", "y=2", "ua-4", "http://r/")

    def test_500_for_an_error_before_any_byte(self):
        raw, events = run(req("GET /str HTTP/1.1", "Host: a"))
        assert raw.startswith(b"HTTP/1.1 500 ")
        assert any(e["event"] == "app_error" for e in events)

    @pytest.mark.parametrize(
        "status", ["200 OK\r\nX-Injected: 1", "20 OK", "200OK", "1000 Big", "200 O\x00K", b"200 OK"]
    )
    def test_invalid_status_is_a_500_every_time(self, status):
        """Validated once and then remembered: only valid statuses are remembered."""

        def app(environ, start_response):
            start_response(status, [("Content-Length", "2")])
            return [b"ok"]

        one = req("GET / HTTP/1.1", "Host: a")
        for _ in range(2):
            raw, events = run(one, app=app)
            assert raw.startswith(b"HTTP/1.1 500 "), raw[:100]
            assert b"X-Injected" not in raw
            assert any(e["event"] == "app_error" for e in events)

    def test_chunk_extension_whitespace_limits_of_llhttp(self):
        """Documented in docs/http.md: BWS before ";" is accepted, BWS after it is not."""
        before = req("POST /echo HTTP/1.1", "Host: a", "Transfer-Encoding: chunked")
        raw, _ = run(before + b"5 ;a=b\r\nhello\r\n0\r\n\r\n" + LAST)
        assert [r.status for r in parse_responses(raw)] == [200, 200]
        raw, _ = run(before + b"5; a=b\r\nhello\r\n0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 ")

    def test_app_headers_are_cached_but_framing_and_ids_are_not(self):
        """Header lines are remembered between responses; the ones with a meaning are not."""

        def app(environ, start_response):
            length = "2" if environ["PATH_INFO"] == "/short" else "5"
            start_response(
                "200 OK",
                [("X-Request-ID", "mine"), ("Content-Length", length), ("X-Same", "1")],
            )
            return [b"hello"[: int(length)]]

        one = req("GET /long HTTP/1.1", "Host: a")
        raw, _ = run(one + one + req("GET /short HTTP/1.1", "Host: a") + LAST, app=app)
        responses = parse_responses(raw)
        assert [r.body for r in responses] == [b"hello", b"hello", b"he", b"hello"]
        for response in responses[:3]:  # (a repeated header would read "mine,<our id>")
            assert response.headers["x-request-id"] == "mine"
            assert response.headers["x-same"] == "1"

    def test_chunked_body_with_many_pieces(self):
        body = chunked(*[b"x" * 1000] * 50)
        request = req("POST /echo HTTP/1.1", "Host: a", "Transfer-Encoding: chunked") + body
        raw, _ = run(request + LAST, "random-split")
        responses = parse_responses(raw)
        assert [r.status for r in responses] == [200, 200]
        assert b'"body": "' + b"x" * 50000 + b'"' in responses[0].body


class TestShedding:
    """--max-queue-time on both paths (the C head parser and llhttp): a stale X-Request-Start
    from a trusted peer is a 503 before the app; a fresh one is served."""

    def test_stale_and_fresh(self):
        import time

        stale = f"t={int((time.time() - 5) * 1e6)}"
        fresh = f"t={int(time.time() * 1e6)}"
        for start, status in ((stale, 503), (fresh, 200)):
            # Connection: close and an extra header: heads both paths take or leave alike
            request = req("GET /p HTTP/1.1", "Host: a", f"X-Request-Start: {start}")
            raw, events = run(request, max_queue_time=1.0, access_log=True)
            assert raw.startswith(f"HTTP/1.1 {status} ".encode()), raw[:100]
            [line] = [e for e in events if e["event"] == "request"]
            assert line["path"] == "/p" and line["status"] == status, line
            if status == 503:
                assert b"Retry-After: 1" in raw and b"Connection: close" in raw


def test_every_per_request_key_of_the_base_environ_is_the_requests_own():
    """wsgi_environ.PER_REQUEST sits in the base environ with a placeholder (room for a
    request's keys): each request overwrites every one of them, on both parsers' paths."""
    from greenserve.worker.protocols.wsgi_environ import PER_REQUEST

    seen: list[dict] = []

    def app(environ, start_response):
        seen.append({key: environ[key] for key in PER_REQUEST})
        start_response("200 OK", [("Content-Length", "0")])
        return []

    run(b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\n\r\n", app=app)
    (shown,) = seen
    assert shown.pop("wsgi.input").read() == b""
    assert callable(shown.pop("wsgi.early_hints")) and shown.pop("greenserve.request_id")
    assert shown == {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/a", "QUERY_STRING": "b=1", "RAW_URI": "/a?b=1",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (("127.0.0.1", 40000), ("127.0.0.1", "40000")),
        (("::1", 5, 0, 0), ("::1", "5")),
        ("", ("", "")),  # a Unix socket's peer that bound no path
        ("/run/client.sock", ("/run/client.sock", "")),  # one that did: not its first letters
    ],
)
def test_each_request_of_a_connection_has_its_peer_and_nothing_of_the_one_before(address, expected):
    """The connection's base environ (its peer's address, once per connection) is copied per
    request: what an app writes into one request's environ is not in the next one's."""
    seen: list[tuple[str, str, str | None]] = []

    def app(environ, start_response):
        seen.append((environ["REMOTE_ADDR"], environ["REMOTE_PORT"], environ.get("x.mark")))
        environ["REMOTE_ADDR"] = "changed by the app"
        environ["x.mark"] = "set by the app"
        start_response("200 OK", [("Content-Length", "0")])
        return []

    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    serve_in_process(app, [request, request, chunked], address=address)
    assert seen == [(*expected, None)] * 3
