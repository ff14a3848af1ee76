"""HTTP/1.1 requests: parsing and validating a request head, and the body an app reads.

httptools (llhttp, the parser of Node.js) rejects ambiguous framing (Content-Length with
Transfer-Encoding, duplicate Content-Length, bad chunk sizes, obs-fold, bad header names and
values); ``RequestParser`` adds the limits (414, 431, 413), 400 for a missing, repeated or
malformed Host and for a request-target that is not origin-form, absolute-form or ``OPTIONS *``
or that has a fragment, 501 for transfer codings other than chunked and for unknown methods, 505
for versions other than 1.0 and 1.1 (chunk extensions: chunk_ext.py). Its callbacks only queue
events (a head, body chunks, END); ``Input`` (the app's ``wsgi.input``) pulls body events from its
connection on demand.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httptools

from greenserve.protocols.tcp import CountingSocket

if TYPE_CHECKING:  # the connection that owns this request (no import at run time: no cycle)
    from greenserve.protocols.http import HttpConnection


MAX_REQUEST_LINE = 8190

MAX_HEADERS = 100

MAX_HEADER_FIELD = 8190

MAX_HEADER_BYTES = 65536
DRAIN_LIMIT = 1 << 20  # unread body we are willing to discard to keep a connection alive

_TOKEN_METHOD = re.compile(rb"[A-Z][A-Z-]* ")

METHOD_PREFIX = re.compile(rb"[A-Z][A-Z-]{0,30}")

# RFC 9112 3.2 / RFC 3986 3.2.2: host [ ":" port ], the host a reg-name or an IP literal.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")

# A client's X-Request-ID is used when it is short and printable (it goes into every log line).
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,200}")

# One byte looked up as an int: ``35 in data`` is a memchr (20 ns); ``b"#" in data`` goes
# through the buffer protocol first (135 ns, measured with timeit on Python 3.11).
_HASH = ord("#")

# The environ keys of the fields the parser checks or acts on.
_FRAMING_KEYS = frozenset(
    (
        "HTTP_HOST",
        "HTTP_TRANSFER_ENCODING",
        "CONTENT_LENGTH",
        "HTTP_EXPECT",
        "HTTP_X_REQUEST_ID",
        "HTTP_X_REQUEST_START",
        "HTTP_CONNECTION",
        "HTTP_PROXY_CONNECTION",
    )
)

PLAIN_KEYS = frozenset(("CONTENT_TYPE", "CONTENT_LENGTH"))  # PEP 3333: no HTTP_ prefix

# Header name (as the client spelled it) -> environ key, or None for a name that is dropped.
# Clients send the same few names on every request: each is worked out once, in on_header,
# and the parser's own checks and the environ both go by the key.
_ENVIRON_KEYS: dict[bytes, str | None] = {}
_ENVIRON_KEYS_MAX = 1024
_UNKNOWN = object()


# The C accelerator's interface version this module expects (see _fasthead.c). A build older
# than its source (an editable install not rebuilt) is ignored rather than trusted.
FASTHEAD_ABI = 2


def _load_fasthead() -> Any:
    """The greenserve._fasthead module, or None: not built (no compiler at install), stale, or
    turned off with GREENSERVE_NO_EXTENSIONS=1 (the same switch idea as aiohttp's)."""
    if os.environ.get("GREENSERVE_NO_EXTENSIONS"):
        return None
    try:
        from greenserve import _fasthead  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _fasthead if getattr(_fasthead, "ABI", None) == FASTHEAD_ABI else None


FASTHEAD = _load_fasthead()
FAST_PARSE = FASTHEAD.parse if FASTHEAD is not None else None


def _environ_key(name: bytes) -> str | None:
    """A name with "_" would collide with the dash form in HTTP_*: dropped, like nginx."""
    key = name.decode("latin-1").upper()
    result = None if "_" in key else key.replace("-", "_")
    if result is not None and result not in PLAIN_KEYS:
        result = "HTTP_" + result
    if len(_ENVIRON_KEYS) < _ENVIRON_KEYS_MAX:
        _ENVIRON_KEYS[name] = result
    return result


class HttpError(Exception):
    """A request we answer with ``status`` and then close."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class Head:
    """A parsed and validated request line and header block."""

    __slots__ = (
        "chunked",
        "content_length",
        "environ",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "request_id",
        "request_start",
        "upgrade",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.request_id = ""  # a valid X-Request-ID from the client, else empty
        self.request_start: str | None = None  # X-Request-Start (llhttp path; C: the environ)
        self.upgrade = False  # Upgrade: the app may take the connection over
        self.url = b""
        self.path = b"/"
        self.query = b""
        self.headers: list[tuple[str | None, bytes]] = []  # (environ key, value) per field
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.expect_continue = False
        self.environ: dict[str, Any] | None = None  # built already (FAST_PARSE), else None


def fast_head(data: bytes, base_environ: dict[str, Any]) -> Head | None:
    """The head of a plain request that is all of ``data``, its environ built in C from
    ``base_environ``; None for anything else (left to llhttp), or without the extension."""
    parsed = FAST_PARSE(data, base_environ) if FAST_PARSE is not None else None
    if parsed is None:
        return None
    head = Head()
    head.environ, head.method, head.url, head.request_id, head.keep_alive = parsed
    return head


END = object()  # marks the end of a message in the event queue


class RequestParser:
    """httptools callbacks: enforce limits, validate heads, queue heads, body chunks and ends."""

    __slots__ = (  # one per open connection, idle ones included
        "at_boundary",
        "chunked_heads",
        "completed",
        "events",
        "feed",
        "head",
        "head_open",
        "header_bytes",
        "header_timeout",
        "parser",
        "sock",
        "untimed",
        "valid_host",
    )

    def __init__(self, sock: CountingSocket, header_timeout: float) -> None:
        self.sock = sock
        self.header_timeout = header_timeout
        # A list, not a deque: it rarely holds more than a head and an END, and a deque's first
        # block is 64 slots (about 600 bytes) on every open connection, idle ones included.
        self.events: list[Any] = []
        self.head: Head | None = None
        self.header_bytes = 0
        # Whether the bytes fed next start a new request, and how many requests completed:
        # lets an error be traced back to the request it belongs to (HttpConnection._feed).
        self.at_boundary = True
        self.completed = 0
        self.head_open = False  # a request has begun and its head is not whole yet
        self.untimed = False  # ... and its header clock has not started
        # llhttp is made on the first read the C fast path leaves to it (``start``): about
        # 0.9 KB that a connection sending only plain requests, or none yet, never needs.
        self.parser: httptools.HttpRequestParser | None = None
        self.feed: Any = None  # the parser's own feed_data: no Python frame per read
        self.valid_host = b""  # the last Host value checked: keep-alive requests repeat it
        # Chunked heads completed in the current read, as (requests completed before it, its
        # index in events), for their size lines to be checked (chunk_ext.py); None when none.
        self.chunked_heads: list[tuple[int, int]] | None = None

    def start(self) -> Any:
        """llhttp for this connection, from its first read on or from a request boundary (the
        fast path only ever takes whole requests): a new parser is in the same state."""
        self.parser = request_parser(self)
        self.feed = self.parser.feed_data
        return self.feed

    def release(self) -> None:
        """The connection stops being HTTP (an Upgrade taken over): free llhttp's state, which
        otherwise lives as long as the WebSocket does. Feeding it afterwards raises."""
        self.parser = None
        self.feed = _released  # not None: a read must not start a new parser
        self.head = None

    def on_message_begin(self) -> None:
        self.head = Head()
        self.header_bytes = 0
        self.at_boundary = False
        self.head_open = self.untimed = True
        self.sock.parked = False

    def start_header_clock(self) -> None:
        """--header-timeout counts from now (see HttpConnection.next_head)."""
        self.untimed = False
        if self.header_timeout:
            self.sock.deadline = time.monotonic() + self.header_timeout

    def on_url(self, url: bytes) -> None:
        assert self.head is not None
        self.head.url += url
        if len(self.head.url) > MAX_REQUEST_LINE:
            raise HttpError(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self.head
        assert head is not None
        size = len(name) + len(value)  # called once per header: each len counts
        total = self.header_bytes = self.header_bytes + size + 4
        if size > MAX_HEADER_FIELD or total > MAX_HEADER_BYTES:
            raise HttpError(431, "header field too large")
        headers = head.headers
        if len(headers) >= MAX_HEADERS:
            raise HttpError(431, "too many header fields")
        key = _ENVIRON_KEYS.get(name, _UNKNOWN)
        if key is _UNKNOWN:
            key = _environ_key(name)
        # llhttp trims leading whitespace only; RFC 9110 5.5 excludes trailing OWS too.
        headers.append((key, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        head = self.head
        assert head is not None
        parser = self.parser
        self.sock.deadline = 0.0
        self.head_open = self.untimed = False
        keep_alive = head.keep_alive = parser.should_keep_alive()
        if not keep_alive:
            head.version = _supported_version(parser)  # a 505 comes before any header's error
        head.method = parser.get_method()
        hosts = 0
        expect = connection = False
        try:
            for key, value in head.headers:
                if key not in _FRAMING_KEYS:
                    continue  # most headers: one set lookup, not six comparisons
                if key == "HTTP_HOST":
                    hosts += 1
                    if hosts > 1:
                        raise HttpError(400, "repeated Host header")
                    if value != self.valid_host:
                        if not _HOST.fullmatch(value):
                            raise HttpError(400, "invalid Host header")
                        self.valid_host = value
                elif key == "HTTP_TRANSFER_ENCODING":
                    codings = [c.strip() for c in value.lower().split(b",")]
                    if codings != [b"chunked"]:
                        raise HttpError(501, f"transfer coding {value.decode('latin-1')!r}")
                    head.chunked = True
                elif key == "CONTENT_LENGTH":
                    head.content_length = int(value)
                elif key == "HTTP_EXPECT":
                    expect = expect or value.lower() == b"100-continue"
                elif key == "HTTP_X_REQUEST_ID":
                    if _REQUEST_ID.fullmatch(value):
                        head.request_id = value.decode("ascii")
                elif key == "HTTP_X_REQUEST_START":
                    head.request_start = value.decode("latin-1")
                else:
                    connection = True  # Connection or Proxy-Connection
        except HttpError:
            if keep_alive:
                head.version = _supported_version(parser)
            raise
        if keep_alive:
            # llhttp keeps HTTP/1.1 alive unless told to close, and 0.9, 1.0 and 2.0 only when
            # a Connection or Proxy-Connection header asks for it: without one this is 1.1, and
            # get_http_version (a str.format: 0.4 us of a 2.6 us parse) is not needed.
            head.version = _supported_version(parser) if connection else "1.1"
        version = head.version
        if head.chunked and version == "1.0":
            head.keep_alive = False  # RFC 9112 6.1: the framing is suspect; close after it
        head.expect_continue = expect and version == "1.1"
        if not hosts and version == "1.1":
            raise HttpError(400, "HTTP/1.1 request without Host")  # RFC 9112 3.2
        url = head.url
        if url[:1] == b"/" and _HASH not in url:  # origin-form, by far the most common
            path, _, head.query = url.partition(b"?")
            head.path = path
        else:
            _split_target(head)
        events = self.events
        events.append(head)
        if head.chunked:
            if self.chunked_heads is None:
                self.chunked_heads = []
            self.chunked_heads.append((self.completed, len(events) - 1))

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.at_boundary = True
        self.completed += 1
        self.events.append(END)


def _released(data: bytes) -> None:
    raise RuntimeError("the connection stopped being HTTP (released)")


def _supported_version(parser: httptools.HttpRequestParser) -> str:
    """The request's HTTP version, or 505 for one other than 1.0 and 1.1."""
    version = parser.get_http_version()
    if version not in ("1.1", "1.0"):
        raise HttpError(505, f"HTTP/{version} is not supported")
    return version


def _split_target(head: Head) -> None:
    """PATH_INFO and QUERY_STRING from the request-target, or 400 (RFC 9112 3.2)."""
    url = head.url
    if _HASH in url:
        # RFC 9112 3.2: neither origin-form nor absolute-form has a fragment (nginx and h11
        # answer 400 too); curl, requests, browsers and wrk drop it before sending.
        raise HttpError(400, "fragment in request-target")
    if url[:1] == b"/":  # origin-form, by far the most common
        path, _, head.query = url.partition(b"?")
        head.path = path
    elif url == b"*":
        if head.method != b"OPTIONS":
            raise HttpError(400, "the asterisk form is only for OPTIONS")
        head.path = b"*"
    else:  # absolute-form: keep only the path
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise HttpError(400, "invalid request-target") from None
        if not parsed.schema or not parsed.host:
            raise HttpError(400, "invalid request-target")
        head.path, head.query = parsed.path or b"/", parsed.query or b""


def request_parser(callbacks: Any) -> httptools.HttpRequestParser:
    """llhttp as every request of greenserve is parsed: RFC 9112 7.1.1 allows whitespace (BWS)
    before a chunk extension's ";"; llhttp rejects it after the ";" and around "=" whatever the
    options (see the README)."""
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


class Input:
    """``wsgi.input``: the request body, streamed from the socket as the app reads it.

    ``done`` is True once the end of the body was reached; ``buffer`` holds what was read from
    the socket but not yet by the app.
    """

    __slots__ = ("buffer", "connection", "done", "head", "received")

    def __init__(self, connection: HttpConnection, head: Head) -> None:
        self.connection = connection
        self.head = head
        self.buffer = b""
        self.done = head.content_length == 0 or (head.content_length is None and not head.chunked)
        self.received = 0

    def _more(self) -> bool:
        """Pull the next body chunk into the buffer; False at the end of the body."""
        if self.done:
            return False
        chunk = self.connection.next_body_event(self)
        if chunk is END:
            self.done = True
            return False
        self.buffer += chunk
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._more():
                pass
            data, self.buffer = self.buffer, b""
            return data
        while len(self.buffer) < size and self._more():
            pass
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            limit = size if size is not None and size >= 0 else None
            if end >= 0 and (limit is None or end < limit):
                data, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
                return data
            if limit is not None and len(self.buffer) >= limit:
                data, self.buffer = self.buffer[:limit], self.buffer[limit:]
                return data
            if not self._more():
                data, self.buffer = self.buffer, b""
                return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines, total = [], 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def discard(self) -> int:
        """Drop what the app did not read, up to DRAIN_LIMIT; returns what was dropped."""
        discarded = len(self.buffer)
        self.buffer = b""
        while discarded <= DRAIN_LIMIT and self._more():
            discarded += len(self.buffer)
            self.buffer = b""
        return discarded

    @property
    def complete(self) -> bool:
        return self.done and not self.buffer


# A head with no length and no chunking: the input is at its end from the start. Shared by
# every request without a body; nothing in it changes.
EMPTY_INPUT = Input(None, Head())  # type: ignore[arg-type]
