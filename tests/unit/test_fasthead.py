"""The C fast path (greenserve._fasthead) against the llhttp path it stands in for.

A head the fast path takes must be one the llhttp path accepts, with the same Head fields and
the same environ; everything else must be declined (None), never answered differently. Checked
on the request corpus, on every byte in every position of a plain head, and on generated heads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httptools
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenserve.config import load
from greenserve.metrics.stats import WorkerStats
from greenserve.worker.protocols import http_parser
from greenserve.worker.protocols.http_body import EMPTY_INPUT
from greenserve.worker.protocols.http_handler import HttpHandler
from greenserve.worker.protocols.http_parser import (
    FAST_PARSE,
    FASTHEAD_ABI,
    Head,
    RequestParser,
    fast_head,
)
from greenserve.worker.protocols.llhttp import HttpError, as_http_error
from tests.http_corpus.corpus import MALFORMED, VALID
from tests.http_corpus.exchanges import EXCHANGES

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "service" / "greenserve" / "_fasthead.c"
ADDRESS = ("127.0.0.1", 40000)
SLOTS = http_parser.PythonHead.__slots__
FIELDS = [
    name for name in SLOTS if name not in ("environ", "forwarded", "headers", "path", "query")
]
FORWARDED_KEYS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO",
                  "HTTP_X_FORWARDED_HOST")  # fmt: skip

needs_extension = pytest.mark.skipif(
    FAST_PARSE is None and not os.environ.get("CI"),
    reason="greenserve._fasthead is not built (no compiler at install)",
)


def handler(root_path: str = "") -> HttpHandler:
    settings_ = load(["--protocol", "http"], {}).with_changes(root_path=root_path)
    return HttpHandler(
        lambda environ, start_response: [],
        settings_,
        stats=WorkerStats(),
        log=structlog.get_logger(),
        server_address=("127.0.0.1", 8000),
    )


def llhttp_head(data: bytes) -> Head | HttpError | None:
    """What the llhttp path makes of ``data``: a Head, the error answered, or None (more to
    read)."""
    parser = RequestParser({})  # no socket, no clock: bytes in, events out
    try:
        parser.start()(data)
    except httptools.HttpParserUpgrade:
        return parser.head
    except httptools.HttpParserError as exc:
        return as_http_error(exc, data)
    for event in parser.events:
        if isinstance(event, (Head, HttpError)):
            return event
    return None


def compare(data: bytes, root_path: str = "") -> bool:
    """Assert the fast path agrees with llhttp on ``data``; True when it took the head."""
    served = handler(root_path)
    base = served.connection_environ(ADDRESS)
    fast = fast_head(data, base)
    if fast is None:
        return False
    slow = llhttp_head(data)
    assert isinstance(slow, Head), f"fast path took {data!r}; llhttp gives {slow!r}"
    assert {f: getattr(fast, f) for f in FIELDS} == {f: getattr(slow, f) for f in FIELDS}
    # llhttp's path leaves it True (apply_forwarded then looks); C's False means none came
    assert fast.forwarded == any(key in fast.environ for key in FORWARDED_KEYS)
    assert slow.forwarded is True
    assert served.environ(fast, EMPTY_INPUT, base) == served.environ(slow, EMPTY_INPUT, base)
    return True


def test_the_extension_is_current_and_ci_has_it() -> None:
    """The ABI in the C source is the one Python asks for; under CI the build must exist (a
    silent fallback would leave the fast path untested)."""
    match = re.search(r"#define FASTHEAD_ABI (\d+)", SOURCE.read_text())
    assert match and int(match.group(1)) == FASTHEAD_ABI
    if os.environ.get("CI"):
        assert FAST_PARSE is not None, "greenserve._fasthead was not built"


@needs_extension
def test_the_c_head_is_the_python_head() -> None:
    """One Head class for both parsers: the C one has the Python one's fields and defaults,
    each settable, and a list of its own for ``headers`` (made when first read)."""
    assert Head is http_parser.FASTHEAD.Head
    made, python = Head(), http_parser.PythonHead()
    assert {f: getattr(made, f) for f in SLOTS} == {f: getattr(python, f) for f in SLOTS}
    other = Head()
    made.headers.append(("HTTP_A", b"b"))
    assert other.headers == [] and made.headers == [("HTTP_A", b"b")]
    for field in SLOTS:
        setattr(made, field, 7)
        assert getattr(made, field) == 7
    parsed = fast_head(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", {})
    assert parsed.__class__ is Head and parsed.headers == [] and parsed.content_length is None
    with pytest.raises(TypeError):
        Head(1)


@needs_extension
@pytest.mark.parametrize(
    ("field", "rewritten"),
    [("X-Forwarded-For: 203.0.113.9", "203.0.113.9"), ("forwarded: for=203.0.113.9", "203.0.113.9"),
     ("X-Forwarded-Proto: https", "127.0.0.1"), ("X-Real-IP: 203.0.113.9", "127.0.0.1")],
)  # fmt: skip
def test_a_trusted_peers_forwarded_fields_are_applied_on_the_c_path(field, rewritten) -> None:
    """A head without a forwarded field skips apply_forwarded; one with any of them does not."""
    from tests.apps.greenserve_testapps import environ_echo_remote
    from tests.helpers import serve_in_process

    data = f"GET / HTTP/1.1\r\nHost: h\r\n{field}\r\n\r\n".encode()
    assert fast_head(data, {}).forwarded is (field != "X-Real-IP: 203.0.113.9")
    raw, _ = serve_in_process(environ_echo_remote, [data])  # 127.0.0.1: trusted by default
    assert f'"REMOTE_ADDR": "{rewritten}"'.encode() in raw, raw


def test_the_switch_turns_it_off() -> None:
    code = "from greenserve.worker.protocols.http_parser import FAST_PARSE; print(FAST_PARSE)"
    env = {**os.environ, "GREENSERVE_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None", out.stderr


def test_without_the_extension_the_python_path_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.apps.greenserve_testapps import environ_echo
    from tests.helpers import serve_in_process

    monkeypatch.setattr(http_parser, "FAST_PARSE", None)
    raw, _ = serve_in_process(environ_echo, [b"GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n"])
    assert raw.startswith(b"HTTP/1.1 200 ") and b'"PATH_INFO": "/a"' in raw


@needs_extension
class TestAgreement:
    def test_the_plain_requests_of_wrk_curl_and_browsers_are_taken(self) -> None:
        heads = [
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n",
            b"GET /a%20b?x=1&y=%41 HTTP/1.1\r\nHost: h\r\nUser-Agent: c\r\nAccept: */*\r\n\r\n",
            b"HEAD /x HTTP/1.1\r\nhost: h\r\nConnection: close\r\n\r\n",
            b"DELETE /x HTTP/1.1\r\nHOST: h\r\nConnection: Keep-Alive\r\nX-Request-ID: r-1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: h\r\nAccept: a\r\naccept: b\r\nContent-Type: t\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: h\r\nX_Dropped: 1\r\nCookie: a=1; b=2 \t\r\n\r\n",
            b"OPTIONS /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",  # IP literal: declined, still agreed
        ]
        taken = [compare(head) for head in heads]
        assert taken == [True] * 6 + [False]

    def test_root_path_is_stripped_the_same(self) -> None:
        assert compare(b"GET /app/x%2Fy HTTP/1.1\r\nHost: h\r\n\r\n", root_path="/app")

    @pytest.mark.parametrize(
        "data",
        [d for _, d, _ in VALID] + [d for _, d, _ in MALFORMED] + [e[1] for e in EXCHANGES],
    )
    def test_corpus(self, data: bytes) -> None:
        compare(data)

    @pytest.mark.parametrize("where", ["method", "target", "query", "name", "value", "version"])
    def test_every_byte_everywhere(self, where: str) -> None:
        taken = 0
        for byte in range(256):
            b = bytes([byte])
            parts = {
                "method": b"G" + b + b"T /p HTTP/1.1\r\nHost: h\r\n\r\n",
                "target": b"GET /p" + b + b"q HTTP/1.1\r\nHost: h\r\n\r\n",
                "query": b"GET /p?" + b + b" HTTP/1.1\r\nHost: h\r\n\r\n",
                "name": b"GET /p HTTP/1.1\r\nHost: h\r\nX-" + b + b"a: v\r\n\r\n",
                "value": b"GET /p HTTP/1.1\r\nHost: h" + b + b"\r\nX-A: v" + b + b"w\r\n\r\n",
                "version": b"GET /p HTTP/1." + b + b"\r\nHost: h\r\n\r\n",
            }
            taken += compare(parts[where])
        assert taken  # the plain form of each is taken: the sweep compared something


# Pieces a generated head is made of: the fields the llhttp path acts on, in any case, with
# values that are valid, invalid or on a limit, and noise.
NAMES = st.sampled_from(
    [
        "Host", "host", "HOST", "Connection", "Proxy-Connection", "Content-Length",
        "Transfer-Encoding", "Expect", "Upgrade", "X-Request-ID", "Content-Type", "Accept",
        "X_Under", "X-A", "Cookie", "Te", "", " Host", "Host ", "Ho\tst", "Forwarded",
        "x-forwarded-for", "X-Forwarded-Proto", "X-FORWARDED-HOST", "X_Forwarded_For",
    ]
)  # fmt: skip
SAMPLE_VALUES = [
    "", "h", "h:80", "h:", "[::1]", "a b", "close", "keep-alive", "Keep-Alive",
    "close, keep-alive", "upgrade", "websocket", "chunked", "0", "5", "100-continue",
    "x" * 200, "x" * 201, " v ", "\tv", "v\x00", "v\x7f", "caf\xe9", "a,b", "a;b=c",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(SAMPLE_VALUES),
    st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=12),
)
TARGETS = st.one_of(
    st.sampled_from(["/", "/p?q", "/a%2", "/a%zz", "/%41%42", "*", "http://h/p", "/#f", "//"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7F), max_size=10).map(
        lambda t: "/" + t
    ),
)


@needs_extension
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get"]),
    target=TARGETS,
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "]),
    fields=st.lists(st.tuples(NAMES, VALUES), max_size=6),
    tail=st.sampled_from([b"", b"", b"x", b"GET / HTTP/1.1\r\n"]),
)
def test_generated_heads(
    method: str, target: str, version: str, fields: list[tuple[str, str]], tail: bytes
) -> None:
    lines = [f"{method} {target} {version}"] + [f"{name}: {value}" for name, value in fields]
    compare("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + tail)


def test_fast_head_is_none_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_parser, "FAST_PARSE", None)
    assert fast_head(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", {}) is None


# -- what an idle connection keeps -----------------------------------------------------------------


def connection_after(chunks: list[bytes]) -> Any:
    """An HttpConnection that served ``chunks`` to the end of the stream (hello app)."""
    from greenserve.worker import apps
    from greenserve.worker.protocols.http import HttpConnection
    from tests.helpers import ScriptedSocket

    served = handler()
    served.app = apps.hello
    sock = ScriptedSocket(chunks)
    connection = HttpConnection(served, sock, ADDRESS)
    connection.serve()
    assert bytes(sock.sent).count(b"HTTP/1.1 200 ") == len(chunks)
    return connection


@needs_extension
def test_plain_requests_never_make_llhttp_and_leave_nothing_behind() -> None:
    """llhttp (about 0.9 KB) is made only when a read needs it; after a request the connection
    holds neither its Response nor its environ."""
    plain = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    connection = connection_after([plain, plain])
    assert connection.parser.llhttp is None
    assert connection.response is None


@needs_extension
@pytest.mark.parametrize(
    ("reads", "taken"),
    [
        ([b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"], 1),
        ([b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"] * 3, 3),
        ([b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", b"GET /b HTTP/1.1\r\nHo"], 1),
        ([b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", b"POST /p HTTP/1.1\r\nHost: h\r\n"
          b"Content-Length: 2\r\n\r\nab", b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"], 1),
        ([b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
          b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"], 0),
        ([b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
          b"GET /never HTTP/1.1\r\nHost: h\r\n\r\n"], 1),
    ],
)  # fmt: skip
def test_parse_many_takes_the_plain_heads_at_the_start(reads: list[bytes], taken: int) -> None:
    """Each head it takes is the one parse() makes of that head alone; the offset is where
    llhttp goes on (after Connection: close, the end: the rest is never served)."""
    data = b"".join(reads)
    events: list[Any] = []
    offset = FAST_PARSE(data, {"base": 1}, events)
    assert len(events) == taken
    for event, alone in zip(events, reads, strict=False):
        made = fast_head(alone, {"base": 1})
        assert (event.environ, event.url, event.keep_alive) == (
            made.environ, made.url, made.keep_alive,
        )  # fmt: skip
    closing = taken and not events[-1].keep_alive
    assert offset == (len(data) if closing else len(b"".join(reads[:taken])))


@needs_extension
def test_pipelined_plain_heads_are_taken_in_c_one_by_one() -> None:
    """A pipelining client's read holds many heads: each plain one is cut at its blank line
    and parsed in C, as if it had come alone."""
    from greenserve.worker import apps
    from greenserve.worker.protocols.http import HttpConnection
    from tests.helpers import ScriptedSocket

    served = handler()
    served.app = apps.hello
    sock = ScriptedSocket([b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % n for n in range(16))])
    connection = HttpConnection(served, sock, ADDRESS)
    connection.serve()
    assert bytes(sock.sent).count(b"HTTP/1.1 200 ") == 16
    assert connection.parser.llhttp is None


def test_pipelined_heads_and_what_c_declines_are_answered_in_order() -> None:
    """A body, a partial head, a Connection: close among pipelined requests: the rest goes to
    llhttp from the boundary where C stopped, and nothing after the close is served."""
    from tests.helpers import parse_responses, serve_in_process

    def echo_path(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode() + b" " + body]

    get = b"GET /%s HTTP/1.1\r\nHost: h\r\n\r\n"
    post = b"POST /post HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    close = b"GET /close HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    stream = get % b"a" + get % b"b" + post + get % b"c" + close + get % b"never"
    for chunks in ([stream], [stream[:40], stream[40:]], [stream[:-10], stream[-10:]]):
        sent, _ = serve_in_process(echo_path, chunks)
        bodies = [r.body for r in parse_responses(sent)]
        assert bodies == [b"/a ", b"/b ", b"/post hello", b"/c ", b"/close "], chunks


def test_a_request_the_fast_path_declines_makes_llhttp() -> None:
    posted = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
    connection = connection_after([posted, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"])
    assert connection.parser.llhttp is not None
    assert connection.response is None


def test_a_released_parser_is_not_made_again() -> None:
    parser = RequestParser({})  # no socket, no clock: bytes in, events out
    parser.release()
    with pytest.raises(RuntimeError, match="released"):
        parser.feed(b"GET / HTTP/1.1\r\n")
