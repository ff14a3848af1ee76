"""A plain request's cycle in C (greenserve._cycle) against HttpConnection._respond and serve's
loop, which it stands in for.

The same requests go to the same app through one in-process connection twice, with C
(``http.RESPOND_PLAIN`` and ``http.SERVE_PLAIN``) and without it (the C head parser and response
stay on both times), and must give the same bytes, the same metrics and the same log events:
generated apps (statuses, headers, bodies of every kind, failures before and after the head, a
close() that raises) and requests (keep-alive, HEAD, HTTP/1.0, a body, Connection: close, a
client's request id), read one by one, two at a time or each in two reads.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import os
import re
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from greenserve.worker.protocols import http
from greenserve.worker.protocols.http_response import FileWrapper
from tests.helpers import ScriptedSocket, in_process_handler

C = http.CYCLE_C

pytestmark = pytest.mark.skipif(
    C is None and not os.environ.get("CI"),
    reason="greenserve._cycle is not built (no compiler at install)",
)

GET = b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n"
REQUESTS = {
    "get": GET,
    "head": b"HEAD /p HTTP/1.1\r\nHost: h\r\n\r\n",
    "http10": b"GET /p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "body": b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    "close": b"GET /p HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    "named": b"GET /p HTTP/1.1\r\nHost: h\r\nX-Request-ID: client-7\r\n\r\n",
    "forwarded": b"GET /p HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.18.0.9\r\n\r\n",
    "proto": b"GET /p HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.18.0.7, 127.0.0.1\r\n"
    b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: example.org\r\n\r\n",
    "rfc7239": b"GET /p HTTP/1.1\r\nHost: h\r\n"
    b'Forwarded: for="[2001:db8::1]:4711";proto=https;host=example.com\r\n\r\n',
}
# what differs run to run: the handler's random request-id prefix, the Date, durations
_ID = re.compile(rb"[0-9a-f]{12}-[0-9a-f]+")
_DATE = re.compile(rb"Date: [^\r]*")


def _same(value: Any) -> Any:
    """A logged exception by what it says, with the traceback it carries (each run raises its
    own instance); any other value as it is."""
    if isinstance(value, BaseException):
        assert value.__traceback__ is not None  # what the log's exc_info renders
        return repr(value)
    return value


class Closing:
    """A body with a close() (as werkzeug's ClosingIterator), which may raise."""

    def __init__(self, chunks: list[bytes], fails: bool) -> None:
        self.chunks, self.fails = chunks, fails

    def __iter__(self) -> Any:
        return iter(self.chunks)

    def close(self) -> None:
        if self.fails:
            raise RuntimeError("close failed")


def make_app(status: str, headers: list, body: str, chunks: list[bytes], fail: str) -> Any:
    def app(environ: dict, start_response: Any) -> Any:
        environ["wsgi.input"].read()
        if fail == "before":
            raise ValueError("app failed")
        # what a trusted proxy's forwarded headers change, in the bytes compared
        seen = " ".join(
            str(environ.get(key))
            for key in ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTP_HOST")
        )
        start_response(status, [*headers, ("X-Seen", seen)])
        if body == "list":
            return list(chunks)
        if body == "tuple":
            return tuple(chunks)
        if body == "closing":
            return Closing(list(chunks), fail == "close")
        if body == "file":
            return FileWrapper(io.BytesIO(b"".join(chunks)))

        def generate() -> Any:
            yield from chunks
            if fail == "during":
                raise ValueError("body failed")

        return generate()

    return app


@contextlib.contextmanager
def switched(on: bool) -> Any:
    """The C cycle and serve's C loop on (``http.RESPOND_PLAIN``, ``http.SERVE_PLAIN``), or off:
    every request through serve and _respond in Python."""
    original = http.RESPOND_PLAIN, http.SERVE_PLAIN
    http.RESPOND_PLAIN, http.SERVE_PLAIN = (C.respond, C.serve) if on else (None, None)
    try:
        yield
    finally:
        http.RESPOND_PLAIN, http.SERVE_PLAIN = original


def answered_in_c(app: Any, taken: list[int]) -> Any:
    """``app``, counting the calls that came from C: in ``taken[0]`` all of them (the caller's
    Python frame is then serve's, as C runs no frame of its own, else _run_app's), in
    ``taken[1]`` those from serve's loop in C (serve's frame is at its SERVE_PLAIN line)."""

    def counted(environ: dict, start_response: Any) -> Any:
        caller = sys._getframe(1)
        if caller.f_code.co_name != "_run_app":
            taken[0] += 1
            taken[1] += "SERVE_PLAIN(" in linecache.getline(
                caller.f_code.co_filename, caller.f_lineno
            )
        return app(environ, start_response)

    return counted


def run(
    app: Any,
    requests: list[bytes],
    cycle: bool,
    peer: tuple[str, int] = ("127.0.0.1", 40000),
    **changes: Any,
) -> tuple[Any, ...]:
    """One connection's requests: what was sent, the metrics and the log events, with what
    differs run to run taken out; and how many requests C answered itself, and of those how
    many in serve's loop."""
    taken = [0, 0]
    with switched(cycle), capture_logs() as events:
        handler = in_process_handler(answered_in_c(app, taken), ("--max-body", "1m"), **changes)
        sock = ScriptedSocket(list(requests))
        handler.handle(sock, peer)
    stats = handler.stats
    durations = handler.durations
    metrics = (
        dict(stats.http_requests),
        stats.requests_served,
        stats.handler_errors,
        sum(durations.counts),
        durations.sum > 0,
        stats.http_requests_in_flight,
    )
    logged = [
        {k: _same(v) for k, v in e.items() if k not in ("duration_ms", "request_id")}
        for e in events
    ]
    sent = _DATE.sub(b"Date: -", _ID.sub(b"ID", bytes(sock.sent)))
    return sent, metrics, logged, taken[0], taken[1]


STATUSES = st.sampled_from(["200 OK", "404 Not Found", "204 No Content", "304 Not Modified"])
HEADER_LINES = [("Content-Type", "text/plain"), ("Content-Length", "5"), ("Connection", "close"),
                ("X-Request-ID", "app"), ("Set-Cookie", "a=1")]  # fmt: skip
HEADERS = st.lists(st.sampled_from(HEADER_LINES), max_size=3)
CHUNKS = st.lists(st.sampled_from([b"hello", b"", b"x" * 40, b"y" * 17000]), max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=STATUSES,
    headers=HEADERS,
    body=st.sampled_from(["list", "tuple", "generator", "closing", "file"]),
    chunks=CHUNKS,
    fail=st.sampled_from(["", "", "before", "during", "close"]),
    kinds=st.lists(st.sampled_from(sorted(REQUESTS)), min_size=1, max_size=4),
    access_log=st.booleans(),
    reads=st.sampled_from(["each", "pairs", "halves"]),
)
def test_the_cycle_answers_as_respond_does(
    status, headers, body, chunks, fail, kinds, access_log, reads
):
    app = make_app(status, headers, body, chunks, fail)
    requests = [GET] + [REQUESTS[kind] for kind in kinds]  # the first is Python's anyway
    if reads == "pairs":  # pipelined: the loop leaves a batch to serve, which corks it
        requests = [GET] + [b"".join(requests[i : i + 2]) for i in range(1, len(requests), 2)]
    elif reads == "halves":  # a head over two reads: the loop leaves it to next_head
        requests = [GET] + [part for r in requests[1:] for part in (r[:20], r[20:])]
    in_c = run(app, requests, True, access_log=access_log)
    in_python = run(app, requests, False, access_log=access_log)
    assert in_c[:3] == in_python[:3]


@pytest.mark.parametrize("body", ["list", "tuple", "generator", "closing", "file"])
def test_plain_keep_alive_requests_are_the_cycles(body):
    """The first request of a connection makes its request-id cell in Python; the next
    plain ones are answered in C, and answered as Python answers them."""
    app = make_app("200 OK", [("Content-Type", "text/plain")], body, [b"hi", b"!"], "")
    sent, metrics, logged, taken, looped = run(app, [GET] * 5, True)
    assert taken == looped == 4
    assert sent.count(b"HTTP/1.1 200 OK\r\n") == 5 and metrics[:2] == ({"200": 5}, 5)
    assert run(app, [GET] * 5, False)[:3] == (sent, metrics, logged)


DECLINED = [("body", {}), ("close", {}), ("http10", {}), ("get", {"root_path": "/app"}),
            ("get", {"request_timeout": 30.0})]  # fmt: skip


@pytest.mark.parametrize(("kind", "changes"), DECLINED)
def test_what_the_cycle_declines_goes_to_respond(kind, changes):
    """A body, a closing or HTTP/1.0 connection, --root-path and --request-timeout are
    _respond's: neither the C cycle nor the loop answers them."""
    app = make_app("200 OK", [], "list", [b"ok"], "")
    requests = [GET, REQUESTS[kind]]
    in_c = run(app, requests, True, **changes)
    assert in_c[3] == 0
    assert in_c[:3] == run(app, requests, False, **changes)[:3]


@pytest.mark.parametrize("kind", ["forwarded", "proto", "rfc7239"])
@pytest.mark.parametrize("peer", ["127.0.0.1", "198.18.0.5"])
def test_forwarded_headers_are_applied_in_the_cycle_as_in_respond(kind, peer):
    """A trusted proxy's X-Forwarded-* and Forwarded headers (127.0.0.1 is trusted by default)
    are applied by the C cycle and loop through proxy.apply_forwarded, as _respond applies them;
    from a peer that is not trusted they are ignored, both ways. HAProxy's forwardfor adds them
    to every request, so they are the common case behind a proxy."""
    app = make_app("200 OK", [], "list", [b"ok"], "")
    requests = [GET, REQUESTS[kind], REQUESTS[kind]]
    in_c = run(app, requests, True, peer=(peer, 40000))
    assert in_c[3] == in_c[4] == 2
    assert in_c[:3] == run(app, requests, False, peer=(peer, 40000))[:3]
    seen = re.findall(rb"X-Seen: ([^\r]*)", in_c[0])
    if peer == "127.0.0.1":
        expected = {
            "forwarded": b"198.18.0.9  http h",  # REMOTE_PORT is "" for a forwarded client
            "proto": b"198.18.0.7  https example.org",
            "rfc7239": b"2001:db8::1  https example.com",
        }[kind]
        assert seen[1] == seen[2] == expected
    else:
        assert seen[1] == seen[0] == b"198.18.0.5 40000 http h"


def test_a_failure_in_the_cycle_is_answered_counted_and_logged_as_in_respond():
    """The app raises on a request the C cycle runs: a 500, handler_errors, app_error with
    the traceback, the connection closed; as _respond does it."""

    def app(environ: dict, start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/fail":
            raise ValueError("app failed")
        start_response("200 OK", [])
        return [b"ok"]

    failing = b"GET /fail HTTP/1.1\r\nHost: h\r\n\r\n"
    sent, metrics, logged, taken, looped = run(app, [GET, failing, GET], True)
    assert taken == looped == 1
    assert sent.count(b"HTTP/1.1 200 OK") == 1 and sent.count(b"HTTP/1.1 500 ") == 1
    assert metrics[2] == 1 and [e["event"] for e in logged].count("app_error") == 1
    assert (sent, metrics, logged) == run(app, [GET, failing, GET], False)[:3]


def test_the_request_id_is_the_apps_and_the_cells_in_the_cycle():
    """During the app the connection's cell holds the request's id (what its log lines carry),
    the id X-Request-ID answers with; after the request the cell holds none."""
    from greenserve.logs import REQUEST_ID

    cells = []

    def app(environ: dict, start_response: Any) -> list[bytes]:
        cell = REQUEST_ID.get()
        cells.append(cell)
        start_response("200 OK", [])
        return [f"{cell.id}|{environ['greenserve.request_id']}".encode()]

    handler = in_process_handler(app)
    sock = ScriptedSocket([GET, GET, REQUESTS["named"]])
    handler.handle(sock, ("127.0.0.1", 40000))
    answers = bytes(sock.sent).split(b"HTTP/1.1 200 OK")[1:]
    assert len(answers) == 3 and cells[0] is cells[1] is cells[2] and cells[0].id is None
    for answer in answers:
        header = re.search(rb"X-Request-ID: ([^\r]+)", answer).group(1)
        assert answer.endswith(header + b"|" + header)
    assert answers[2].endswith(b"client-7|client-7")  # 127.0.0.1 is a trusted proxy by default


def test_a_base_exception_passes_through_the_cycle_as_through_respond():
    """GreenletExit (a kill) raised by the app on a request the C cycle runs: not answered,
    the body's close() still called, the in-flight count back to zero; as in _respond."""
    import gevent

    closed = []

    class Body(Closing):
        def __iter__(self) -> Any:
            raise gevent.GreenletExit

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [])
        return [b"ok"] if environ["PATH_INFO"] == "/p" else Body([], False)

    killed = b"GET /kill HTTP/1.1\r\nHost: h\r\n\r\n"
    outcomes = []
    for on in (True, False):
        handler = in_process_handler(app)
        sock = ScriptedSocket([GET, killed, GET])
        with switched(on), pytest.raises(gevent.GreenletExit):
            handler.handle(sock, ("127.0.0.1", 40000))
        stats = handler.stats
        outcomes.append((bytes(sock.sent).count(b"HTTP/1.1 200"), stats.http_requests_in_flight))
    assert outcomes == [(1, 0), (1, 0)] and closed == [True, True]


def test_a_drain_during_a_request_in_the_cycle_ends_the_connection_as_in_respond():
    """A stop begun while the app runs (the handler drains): the answer says so and the
    connection serves no further request; the same bytes either way."""
    holder: list[Any] = []

    def app(environ: dict, start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/drain":
            holder[0].draining = True
        start_response("200 OK", [])
        return [b"ok"]

    draining = b"GET /drain HTTP/1.1\r\nHost: h\r\n\r\n"
    outcomes = []
    for on in (True, False):
        holder[:] = [handler := in_process_handler(app)]
        sock = ScriptedSocket([GET, draining, GET])
        with switched(on):
            handler.handle(sock, ("127.0.0.1", 40000))
        outcomes.append(_DATE.sub(b"Date: -", _ID.sub(b"ID", bytes(sock.sent))))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0].count(b"HTTP/1.1 200 OK") == 2


# -- serve's loop in C (http.SERVE_PLAIN) -----------------------------------------------------

SPLIT = [GET[:9], GET[9:]]  # one head over two reads: next_head's header clock, in Python
TIMED = b"GET /p HTTP/1.1\r\nHost: h\r\nX-Request-Start: t=1000000000.0\r\n\r\n"


@pytest.mark.parametrize(
    ("reads", "looped"),
    [
        ([GET, GET, GET], 2),
        ([GET, GET + GET, GET], 2),  # the batch's first is serve's (it corks), the last the loop's
        ([GET, *SPLIT, GET], 1),  # the split head goes back to next_head
        ([GET, TIMED, GET], 1),  # queue time is serve's
        ([GET, REQUESTS["body"], GET, REQUESTS["close"]], 1),
        ([GET, GET, b"BREW / HTTP/1.1\r\n\r\n", GET], 1),  # an error is queued: serve answers it
    ],
    ids=["plain", "pipelined", "split", "x-request-start", "body-and-close", "error"],
)
def test_the_loop_takes_plain_requests_and_hands_back_the_rest(reads, looped):
    """C runs serve's loop while each request is plain, and hands back what is not, still
    queued, for serve and next_head to run as before: the same bytes, metrics and logs."""
    app = make_app("200 OK", [("Content-Type", "text/plain")], "list", [b"hi"], "")
    with_c = run(app, reads, True)
    assert with_c[4] == looped
    assert with_c[:3] == run(app, reads, False)[:3]


def test_queue_time_and_the_inflight_limit_stay_serves():
    """X-Request-Start is timed, and --max-inflight sheds, by serve whether or not C runs the
    loop: the queue-time histogram and the 503 are the same both ways."""
    outcomes = []
    holder: list[Any] = []

    def app(environ: dict, start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/busy":
            holder[0].stats.http_requests_in_flight += 5  # as if other connections held it
        start_response("200 OK", [])
        return [b"ok"]

    for on in (True, False):
        busy = b"GET /busy HTTP/1.1\r\nHost: h\r\n\r\n"
        with switched(on):
            holder[:] = [handler := in_process_handler(app, ("--max-inflight", "3"))]
            sock = ScriptedSocket([GET, TIMED, GET, busy, GET])
            handler.handle(sock, ("127.0.0.1", 40000))
        sent = _DATE.sub(b"Date: -", _ID.sub(b"ID", bytes(sock.sent)))
        outcomes.append((sent, sum(handler.queue_times.counts), handler.stats.http_requests))
    assert outcomes[0] == outcomes[1]
    sent, queued, codes = outcomes[0]
    assert queued == 2 and sent.count(b" 503 ") == 1 and codes.get("503") == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("on", [True, False], ids=["c", "python"])
def test_a_kept_connection_is_parked_with_its_keepalive_deadline(on):
    """Between requests on a real socket the connection is PARKED, due at the keep-alive
    timeout from its first wait, as next_head sets it; an idle close ends it."""
    import socket
    import time

    import gevent
    from gevent import socket as gsocket

    from greenserve.worker.protocols.phase import PARKED
    from greenserve.worker.protocols.tcp import CountingSocket
    from tests.helpers import wait_until

    taken = [0, 0]
    app = answered_in_c(make_app("200 OK", [], "list", [b"ok"], ""), taken)
    handler = in_process_handler(app, keepalive_timeout=7.0)
    ours, theirs = socket.socketpair()
    sock = CountingSocket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=ours.detach())
    sock.accepted(time.monotonic())
    sock.out, sock.spill = None, False
    peer = gsocket.socket(fileno=theirs.detach())
    peer.settimeout(5)  # each read of an answer: TimeoutError rather than a hang
    with switched(on):
        server = gevent.spawn(handler.handle, sock, "")
        try:
            for _ in range(3):
                before = time.monotonic()
                peer.sendall(GET)
                answer = b""
                while not answer.endswith(b"ok"):
                    more = peer.recv(4096)
                    assert more, f"closed before the answer was whole: {answer!r}"
                    answer += more
                wait_until(lambda: sock.phase == PARKED, 5, "parked", sleep=gevent.sleep)
                assert before + 7.0 <= sock.deadline <= time.monotonic() + 7.0
            peer.shutdown(socket.SHUT_WR)
            server.get(timeout=5)
        finally:
            server.kill()
            peer.close()
    assert taken == ([2, 2] if on else [0, 0])
