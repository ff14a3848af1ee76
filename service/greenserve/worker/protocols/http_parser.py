"""HTTP/1.1 request parsing: bytes in, events out; no socket, no clock.

httptools (llhttp, the parser of Node.js) rejects ambiguous framing (Content-Length with
Transfer-Encoding, duplicate Content-Length, bad chunk sizes, obs-fold, bad header names and
values); ``RequestParser`` adds the limits (414, 431), 400 for a missing, repeated or malformed
Host and for a request-target that is not origin-form, absolute-form or ``OPTIONS *`` or that
has a fragment, 501 for transfer codings other than chunked and for unknown methods, 505 for
versions other than 1.0 and 1.1, and the chunk-extension grammar llhttp lets through
(chunk_ext.py). Plain requests skip llhttp: _fasthead.c builds their environ in one call.

The connection (http.py) feeds it what it reads and acts on the events: it owns the socket,
the clock and the connection's phase.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httptools

from greenserve import extensions
from greenserve.worker.protocols.chunk_ext import ChunkLines, body_starts
from greenserve.worker.protocols.llhttp import (
    HttpError,
    as_http_error,
    messages_completed,
    request_parser,
)

MAX_REQUEST_LINE = 8190

MAX_HEADERS = 100

MAX_HEADER_FIELD = 8190

MAX_HEADER_BYTES = 65536
HISTORY_LIMIT = 65536  # request bytes kept across reads to place a parse error

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
_UNKNOWN = "\0 not cached"  # a str no environ key can be, compared by identity


# The C accelerator's interface version this module expects (see _fasthead.c).
FASTHEAD_ABI = 6
FASTHEAD: Any = extensions.load("_fasthead", FASTHEAD_ABI)
# parse_many(data, base_environ, events) -> how much of data it took (RequestParser.feed)
FAST_PARSE: Callable[[bytes, dict[str, Any], list[Any]], int] | None = (
    FASTHEAD.parse_many if FASTHEAD is not None else None
)


def _environ_key(name: bytes) -> str | None:
    """A name with "_" would collide with the dash form in HTTP_*: dropped, like nginx."""
    key = name.decode("latin-1").upper()
    result = None if "_" in key else key.replace("-", "_")
    if result is not None and result not in PLAIN_KEYS:
        result = "HTTP_" + result
    if len(_ENVIRON_KEYS) < _ENVIRON_KEYS_MAX:
        _ENVIRON_KEYS[name] = result
    return result


class Head:
    """A parsed and validated request line and header block."""

    __slots__ = (
        "chunked",
        "content_length",
        "environ",
        "expect_continue",
        "forwarded",
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
        # False: no Forwarded or X-Forwarded-* field came (the C parser knows; llhttp's path and
        # HTTP/2 leave True, and proxy.apply_forwarded looks)
        self.forwarded = True
        self.environ: dict[str, Any] | None = None  # built already (FAST_PARSE), else None


PythonHead = Head  # without the extension, and for the tests that compare the two
if FASTHEAD is not None:
    # The same fields in C, so that the C parser can return its heads whole (_fasthead.c);
    # the llhttp path makes its heads from the same class: one Head type either way.
    Head = FASTHEAD.Head  # type: ignore[misc]


def fast_head(data: bytes, base_environ: dict[str, Any]) -> Head | None:
    """The head of a plain request that is all of ``data``, its environ built in C from
    ``base_environ``; None for anything else (left to llhttp), or without the extension.
    FAST_PARSE, not FASTHEAD, is the switch: the tests turn the fast path off with it."""
    return FASTHEAD.parse(data, base_environ) if FAST_PARSE is not None else None


END = object()  # marks the end of a message in the event queue


class RejectedMethod:
    """A queued error whose status needs more of the request line than this read had:
    llhttp rejects a method after two bytes ("BR" of "BREW"), and only a whole token tells an
    unknown method (501) from noise (400). The connection reads on (see its next_head)."""

    __slots__ = ("error", "start")

    def __init__(self, error: Exception, start: bytes | None) -> None:
        self.error = error
        self.start = start  # the rejected request's bytes from its start; None: not known


class RequestParser:
    """A connection's request stream, fed the bytes it reads and never touching the socket.

    ``feed`` queues events in ``events``: a ``Head`` when a request head is whole (built in C
    for a plain request, else by llhttp's callbacks below), then body chunks (bytes), then END.
    A parse error is queued as an ``HttpError`` (or a ``RejectedMethod``), not raised: requests
    parsed before it in the same read (pipelining) are answered first, in order. Between
    events, ``head_open`` says a request has begun whose head is not whole yet.
    """

    __slots__ = (  # one per open connection, idle ones included
        "at_boundary",
        "base_environ",
        "chunk_lines",
        "chunked_heads",
        "completed",
        "events",
        "head",
        "head_open",
        "header_bytes",
        "history",
        "history_base",
        "llhttp",
        "parse",
        "untimed",
        "upgrade_tail",
        "upgrading",
        "valid_host",
    )

    def __init__(self, base_environ: dict[str, Any]) -> None:
        """``base_environ``: what the C parser builds each plain request's environ from."""
        self.base_environ = base_environ
        # A list, not a deque: it rarely holds more than a head and an END, and a deque's first
        # block is 64 slots (about 600 bytes) on every open connection, idle ones included.
        self.events: list[Any] = []
        self.head: Head | None = None
        self.header_bytes = 0
        # Whether the bytes fed next start a new request, and how many requests completed:
        # lets an error be traced back to the request it belongs to (``_rejected_request``).
        self.at_boundary = True
        self.completed = 0
        self.head_open = False  # a request has begun and its head is not whole yet
        self.untimed = False  # ... and its header clock has not started (``clock_due``)
        # llhttp is made on the first read the C fast path leaves to it (``start``): about
        # 0.9 KB that a connection sending only plain requests, or none yet, never needs.
        self.llhttp: httptools.HttpRequestParser | None = None
        self.parse: Any = None  # llhttp's own feed_data: no Python frame per read
        self.valid_host = b""  # the last Host value checked: keep-alive requests repeat it
        # Chunked heads completed in the current read, as (requests completed before it, its
        # index in events), for their size lines to be checked (chunk_ext.py); None when none.
        self.chunked_heads: list[tuple[int, int]] | None = None
        self.chunk_lines: ChunkLines | None = None  # a chunked body's size lines, across reads
        # Reads since the last request boundary (see _rejected_request); None past the limit.
        self.history: bytes | None = b""
        self.history_base = 0  # ``completed`` when history started
        self.upgrading = False  # an Upgrade head came: no HTTP after it on this connection
        self.upgrade_tail = b""  # bytes read past an Upgrade request's head

    def feed(self, data: bytes) -> None:
        """Parse one read's bytes into events."""
        if self.at_boundary and FAST_PARSE is not None:
            # Plain requests whole in this read, one or many (a pipelining client): each head
            # is cut at its blank line and its environ built in C (_fasthead.c); llhttp, still
            # at a message boundary, never sees them. What is left (a head C declines, a body,
            # a partial head) goes to llhttp from that boundary.
            taken = FAST_PARSE(data, self.base_environ, self.events)
            if taken:
                data = data[taken:]
                if not data:
                    return
        if self.chunk_lines is not None and not self._chunk_lines_pass(data):
            return
        parse = self.parse or self.start()
        try:
            parse(data)
        except httptools.HttpParserUpgrade as exc:
            # The connection stops being HTTP after this request: the app may take it over
            # (WebSockets), or answer it, and then it closes. Bytes after the head already
            # belong to the new protocol: kept for wsgi.websocket.
            self.upgrading = True
            if self.head is not None:
                self.head.upgrade = True
                offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                self.upgrade_tail = data[offset:]
        except httptools.HttpParserInvalidMethodError as exc:
            self.events.append(RejectedMethod(exc, self._rejected_request(data)))
        except httptools.HttpParserError as exc:
            self.events.append(as_http_error(exc, data))
        else:
            if self.chunked_heads is not None:
                self._check_chunked(data)
            if self.at_boundary:  # the common case: whole requests in each read
                self.history = b""
                self.history_base = self.completed
            elif self.history is not None:
                history = self.history + data
                self.history = history if len(history) <= HISTORY_LIMIT else None

    def clock_due(self) -> bool:
        """True once per begun head that must wait for more bytes: its --header-timeout counts
        from now. A head that came whole never needs it, and one begun behind a pipelined
        request must not run out while the app answers that request."""
        if self.untimed:
            self.untimed = False
            return True
        return False

    def start(self) -> Any:
        """llhttp for this connection, from its first read on or from a request boundary (the
        fast path only ever takes whole requests): a new parser is in the same state."""
        self.llhttp = request_parser(self)
        self.parse = self.llhttp.feed_data
        return self.parse

    def release(self) -> None:
        """The connection stops being HTTP (an Upgrade taken over): free llhttp's state, which
        otherwise lives as long as the WebSocket does. Feeding it afterwards raises."""
        self.llhttp = None
        self.parse = _released  # not None: a read must not start a new parser
        self.head = None
        self.history = None

    def _chunk_lines_pass(self, data: bytes) -> bool:
        """Check the size lines in a read of a chunked body under way, before llhttp sees it;
        False (and a 400 queued) for one RFC 9112 forbids and llhttp lets through."""
        lines = self.chunk_lines
        assert lines is not None
        try:
            lines.feed(data)
        except HttpError as exc:  # the reader of this body answers it, and the connection ends
            self.chunk_lines = None
            self.events.append(exc)
            return False
        if lines.done:
            self.chunk_lines = None
        return True

    def _check_chunked(self, data: bytes) -> None:
        """The size lines of the chunked requests whose heads this read completed, up to the
        end of the read; a 400 takes the place of everything queued after a bad one's head.

        A head behind more than HISTORY_LIMIT bytes of an earlier request cannot be placed
        (``history`` was dropped): its size lines are left to llhttp alone.
        """
        heads, self.chunked_heads = self.chunked_heads or [], None
        if self.history is None:
            return
        buffer = self.history + data
        ordinals = [completed - self.history_base for completed, _ in heads]
        # strict=False: a head a fresh parser cannot place (never seen) is left to llhttp
        for (_, index), start in zip(heads, body_starts(buffer, ordinals), strict=False):
            lines = ChunkLines()
            try:
                lines.feed(buffer[start:])
            except HttpError as exc:
                del self.events[index + 1 :]  # answered in place of its body, then the end
                self.events.append(exc)
                self.chunk_lines = None
                return
            self.chunk_lines = None if lines.done else lines

    def _rejected_request(self, data: bytes) -> bytes | None:
        """The bytes of the request llhttp rejected, from its start; None if that is unknown.

        httptools does not expose llhttp's error position, and a read may hold requests before
        the rejected one (pipelining) or begin inside one. ``history`` holds the reads since the
        last request boundary, so a fresh parser can find where the last complete request ended
        (a bisection over prefixes, only on this error path).
        """
        if self.history is None:
            return None
        buffer = self.history + data
        completed = self.completed - self.history_base
        low, high = 0, len(buffer) if completed else 0
        while low < high:
            middle = (low + high) // 2
            if messages_completed(buffer[:middle]) >= completed:
                high = middle
            else:
                low = middle + 1
        return buffer[low:]

    # -- llhttp's callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.head = Head()
        self.header_bytes = 0
        self.at_boundary = False
        self.head_open = self.untimed = True

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
        parser = self.llhttp
        assert parser is not None  # it is what called us
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
