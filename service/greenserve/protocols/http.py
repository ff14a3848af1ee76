"""HTTP/1.1 for WSGI apps on httptools (llhttp, the parser of Node.js).

One greenlet per connection runs ``HttpConnection.serve``: the parser's callbacks only queue
events (request head, body chunks, end of message); the loop turns a head into a PEP 3333 environ
and calls the app, whose ``wsgi.input`` pulls body events on demand, reading more from the socket
only when the app asks for more body. Pipelined requests simply wait in the queue.

Strictness: llhttp rejects ambiguous framing (Content-Length with Transfer-Encoding, duplicate
Content-Length, bad chunk sizes, obs-fold, bad header names and values); ``_Parser`` adds the
limits (414, 431, 413), 400 for a missing, repeated or malformed Host and for a request-target
that is not origin-form, absolute-form or ``OPTIONS *``, 501 for transfer codings other than
chunked and for unknown methods, 505 for versions other than 1.0 and 1.1, and timeouts through
the connection sweeper's deadlines.

Framing of responses (each rule keeps a pooled keep-alive connection in step; see the README):
no body on HEAD, 1xx, 204 and 304; never more bytes than the app's Content-Length (the rest is
cut, logged, counted, and the connection closed); a body shorter than its Content-Length closes
the connection; an error before the first byte is on the wire becomes a 500.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote_to_bytes

import gevent
import httptools
from gevent import socket as gsocket

from greenserve import __version__
from greenserve.logs import REQUEST_ID
from greenserve.protocols.tcp import peer as _peer
from greenserve.protocols.websocket import WebSocket
from greenserve.proxy import apply_forwarded
from greenserve.stats import WorkerStats

MAX_REQUEST_LINE = 8190
MAX_HEADERS = 100
MAX_HEADER_FIELD = 8190
MAX_HEADER_BYTES = 65536
RECV_SIZE = 65536
HISTORY_LIMIT = 65536  # request bytes kept across reads to place a parse error (see _feed)
DRAIN_LIMIT = 1 << 20  # unread body we are willing to discard to keep a connection alive
SMALL_BODY = 16384  # headers and a body up to this size go out in one write
SERVER = b"greenserve"

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_TOKEN_METHOD = re.compile(rb"[A-Z][A-Z-]* ")
_METHOD_PREFIX = re.compile(rb"[A-Z][A-Z-]{0,30}")
# RFC 9110 5.6.2 token: a response header name must be one, or the header block is ambiguous.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 5.5: no control characters in a field value except horizontal tab.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 3.2 / RFC 3986 3.2.2: host [ ":" port ], the host a reg-name or an IP literal.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")
# A client's X-Request-ID is used when it is short and printable (it goes into every log line).
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,200}")
TIMEOUT_GRACE = 1.0  # an app that swallowed its request timeout is stopped again this much later
_FRAMING_HEADERS = frozenset(
    (b"host", b"transfer-encoding", b"content-length", b"expect", b"x-request-id")
)
_STATUS_KEYS = {code: str(code) for code in range(100, 600)}  # metric label per status
_NO_BODY_STATUS = frozenset((*range(100, 200), 204, 304))  # RFC 9110 6.4.1


class HttpError(Exception):
    """A request we answer with ``status`` and then close."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class RequestTimeout(BaseException):
    """Raised inside a request's greenlet when --request-timeout passes.

    A BaseException, like gevent.Timeout: an app's ``except Exception`` does not swallow it,
    while its ``finally`` blocks and context managers still run.
    """


class _Closed(Exception):
    """The client closed the connection (or the sweeper shut it)."""


class _DateCache:
    """The Date header, formatted once per second rather than once per response."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = 0
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = formatdate(now, usegmt=True).encode()
        return self.value


class Head:
    """A parsed and validated request line and header block."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "request_id",
        "upgrade",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.request_id = ""  # a valid X-Request-ID from the client, else empty
        self.upgrade = False  # Upgrade: the app may take the connection over
        self.url = b""
        self.path = b"/"
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.expect_continue = False


END = object()  # marks the end of a message in the event queue


class _Parser:
    """httptools callbacks: enforce limits, validate heads, queue heads, body chunks and ends."""

    def __init__(self, sock: Any, header_timeout: float) -> None:
        self.sock = sock
        self.header_timeout = header_timeout
        self.events: deque[Any] = deque()
        self.head: Head | None = None
        self.header_bytes = 0
        # Whether the bytes fed next start a new request, and how many requests completed:
        # lets an error be traced back to the request it belongs to (HttpConnection._feed).
        self.at_boundary = True
        self.completed = 0
        self.parser = _request_parser(self)
        self.feed = self.parser.feed_data  # the parser's own method: no Python frame per read
        self.valid_host = b""  # the last Host value checked: keep-alive requests repeat it

    def on_message_begin(self) -> None:
        self.head = Head()
        self.header_bytes = 0
        self.at_boundary = False
        self.sock.parked = False
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
        self.header_bytes += len(name) + len(value) + 4
        if len(name) + len(value) > MAX_HEADER_FIELD or self.header_bytes > MAX_HEADER_BYTES:
            raise HttpError(431, "header field too large")
        if len(head.headers) >= MAX_HEADERS:
            raise HttpError(431, "too many header fields")
        # llhttp trims leading whitespace only; RFC 9110 5.5 excludes trailing OWS too.
        head.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        head = self.head
        assert head is not None
        parser = self.parser
        self.sock.deadline = 0.0
        head.version = parser.get_http_version()
        if head.version not in ("1.1", "1.0"):
            raise HttpError(505, f"HTTP/{head.version} is not supported")
        head.method = parser.get_method()
        head.keep_alive = parser.should_keep_alive()
        hosts = 0
        for name, value in head.headers:
            lowered = name.lower()
            if lowered not in _FRAMING_HEADERS:
                continue  # most headers: one set lookup, not five comparisons
            if lowered == b"host":
                hosts += 1
                if hosts > 1:
                    raise HttpError(400, "repeated Host header")
                if value != self.valid_host:
                    if not _HOST.fullmatch(value):
                        raise HttpError(400, "invalid Host header")
                    self.valid_host = value
            elif lowered == b"transfer-encoding":
                codings = [c.strip() for c in value.lower().split(b",")]
                if codings != [b"chunked"]:
                    raise HttpError(501, f"transfer coding {value.decode('latin-1')!r}")
                head.chunked = True
                if head.version == "1.0":
                    # RFC 9112 6.1: the framing of such a message is suspect; close after it.
                    head.keep_alive = False
            elif lowered == b"content-length":
                head.content_length = int(value)
            elif lowered == b"expect" and value.lower() == b"100-continue":
                head.expect_continue = head.version == "1.1"
            elif lowered == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                head.request_id = value.decode("ascii")
        if not hosts and head.version == "1.1":
            raise HttpError(400, "HTTP/1.1 request without Host")  # RFC 9112 3.2
        url = head.url
        if url[:1] == b"/" and b"#" not in url:  # origin-form, by far the most common
            path, _, head.query = url.partition(b"?")
            head.path = path
        else:
            _split_target(head)
        self.events.append(head)

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.at_boundary = True
        self.completed += 1
        self.events.append(END)


def _split_target(head: Head) -> None:
    """PATH_INFO and QUERY_STRING from the request-target, or 400 (RFC 9112 3.2)."""
    url = head.url
    if url[:1] == b"/":  # origin-form, by far the most common
        path, _, query = url.partition(b"?")
        head.path, head.query = path.partition(b"#")[0], query
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


class FileWrapper:
    """``wsgi.file_wrapper``: lets the server send a file with ``sendfile``."""

    def __init__(self, filelike: Any, block_size: int = 65536) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        while True:
            block = self.filelike.read(self.block_size)
            if not block:
                return
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class HttpConnection:
    """One client connection: requests in order, one at a time, until close."""

    def __init__(self, handler: HttpHandler, sock: Any, address: Any) -> None:
        # Per-connection state
        self.handler = handler
        self.sock = sock
        self.address = address
        self.parser = _Parser(sock, handler.header_timeout)
        self.events = self.parser.events
        self.closing = False
        self.extra_environ: dict[str, str] | None = None  # TLS: the verified client certificate
        self.trusted_peer = False  # in --forwarded-allow-ips: its forwarded headers count
        self.upgrade_tail = b""  # bytes read past an Upgrade request's head
        sock.expire = self._expire
        # Reads since the last request boundary (see _rejected_request); None past the limit.
        self.history: bytes | None = b""
        self.history_base = 0  # parser.completed when history started
        # Per-request state
        self.response: Response | None = None
        self.continue_sent = False
        self.timed_out: str | None = None  # the app's stack when its request timed out
        self.served = 0  # requests started on this connection: tells a late timeout apart

    # -- reading -------------------------------------------------------------------------------

    def _feed(self) -> None:
        """Read from the socket into the parser; raises _Closed at end of stream.

        A parse error is queued as an event, not raised: requests parsed before it in the same
        read (pipelining) are answered first, in order.
        """
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise _Closed
        parser = self.parser
        try:
            parser.feed(data)
        except httptools.HttpParserUpgrade as exc:
            # The connection stops being HTTP after this request: the app may take it over
            # (WebSockets: see _run_app), or answer it, and then it closes. Bytes after the
            # head already belong to the new protocol: kept for wsgi.websocket.
            self.closing = True
            if parser.head is not None:
                parser.head.upgrade = True
                offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                self.upgrade_tail = data[offset:]
        except httptools.HttpParserInvalidMethodError as exc:
            rejected = self._rejected_request(data)
            token = self._method_token(rejected) if rejected is not None else b""
            self.events.append(_as_http_error(exc, token))
        except httptools.HttpParserError as exc:
            self.events.append(_as_http_error(exc, data))
        else:
            if parser.at_boundary:  # the common case: whole requests in each read
                self.history = b""
                self.history_base = parser.completed
            elif self.history is not None:
                history = self.history + data
                self.history = history if len(history) <= HISTORY_LIMIT else None

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
        completed = self.parser.completed - self.history_base
        low, high = 0, len(buffer) if completed else 0
        while low < high:
            middle = (low + high) // 2
            if _messages_completed(buffer[:middle]) >= completed:
                high = middle
            else:
                low = middle + 1
        return buffer[low:]

    def _method_token(self, data: bytes) -> bytes:
        """Enough of a rejected request line to tell an unknown method (501) from noise (400).

        llhttp rejects a method as soon as no known one can match, possibly after two bytes
        ("BR" of "BREW"): read on, bounded, while the bytes still look like a method token.
        """
        while _METHOD_PREFIX.fullmatch(data):
            try:
                more = self.sock.recv(64)
            except OSError:
                break
            if not more:
                break
            data += more
        return data

    def next_head(self) -> Head | None:
        while True:
            while self.events:
                event = self.events.popleft()
                if event.__class__ is Head:
                    return event
                if isinstance(event, HttpError):
                    raise event
            # Parked: waiting for a next request, so a drain may end the connection. A new one
            # may have its first request in flight: a drain gives it a moment instead of closing
            # it at once, which failed that request (seen under load during restarts).
            self.sock.parked = True
            self.sock.fresh = self.served == 0
            try:
                self._feed()
            except _Closed:
                return None
            finally:
                self.sock.parked = False

    def next_body_event(self, body: Input) -> Any:
        """The next body chunk (bytes) or END, reading from the socket as needed."""
        if body.head.expect_continue and not self.continue_sent:
            response = self.response
            # RFC 9110 10.1.1: 100 only while no final response has started.
            if response is None or not response.headers_sent:
                self.continue_sent = True
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        timeout = self.handler.header_timeout
        while not self.events:
            # Each wait for more body has the header timeout too (nginx's client_body_timeout):
            # a body that stops short of its Content-Length must not hold a greenlet for good.
            if timeout:
                self.sock.deadline = time.monotonic() + timeout
            try:
                self._feed()
            except _Closed:
                raise ConnectionError("client closed during the request body") from None
            finally:
                self.sock.deadline = 0.0
        event = self.events.popleft()
        if isinstance(event, HttpError):
            raise event
        if event is not END:
            body.received += len(event)
            if body.received > self.handler.max_body:
                raise HttpError(413, "request body too large")
        return event

    # -- serving -------------------------------------------------------------------------------

    def serve(self) -> None:
        handler = self.handler
        stats = handler.stats
        keepalive = handler.keepalive_timeout
        while not self.closing:
            if keepalive:
                self.sock.deadline = time.monotonic() + keepalive
            try:
                head = self.next_head()
            except HttpError as exc:
                self.send_error(exc.status, str(exc))
                return
            if head is None:
                return
            if head.content_length is not None and head.content_length > handler.max_body:
                self.send_error(413, "request body too large")
                return
            stats.http_requests_in_flight += 1
            try:
                keep = self._respond(head)
            finally:
                stats.http_requests_in_flight -= 1
            if not keep:
                return

    def send_error(self, status: int, detail: str, request_id: str = "") -> None:
        body = f"{status} {REASONS.get(status, '')}: {detail}\n".encode()
        response = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n".encode()
            + b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            + (b"X-Request-ID: " + request_id.encode() + b"\r\n" if request_id else b"")
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n"
            + b"Date: "
            + self.handler.date.get()
            + b"\r\nServer: "
            + SERVER
            + b"\r\n\r\n"
            + body
        )
        self.handler.count(status, 0.0)
        with contextlib.suppress(OSError):  # the client may already be gone
            self.sock.sendall(response)

    def _respond(self, head: Head) -> bool:
        """Run the app for one request; True when the connection may serve another."""
        handler = self.handler
        started = time.perf_counter()
        if head.request_id and self.trusted_peer:
            request_id = head.request_id  # only a trusted proxy names the request
        else:
            request_id = handler.new_request_id()
        body = Input(self, head)
        self.response = writer = Response(self, head, request_id)
        self.continue_sent = False
        environ = handler.environ(head, body, self.address)
        environ["HTTP_X_REQUEST_ID"] = environ["greenserve.request_id"] = request_id
        if self.extra_environ:
            environ.update(self.extra_environ)
        if self.trusted_peer:
            apply_forwarded(environ, handler.forwarded_allow)
        self.served += 1
        context = REQUEST_ID.set(request_id)
        if head.upgrade:
            # What Flask-Sock, simple-websocket and python-socketio (gevent mode) look for: the
            # connection's socket, to answer the handshake and speak WebSocket on it themselves.
            environ["gunicorn.socket"] = self.sock
            self.sock.upgraded = True
            if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
                websocket = WebSocket(
                    self.sock, environ, handler.stats, handler.websockets, handler.ws_max_message
                )
                websocket.early = self.upgrade_tail
                environ["wsgi.websocket"] = websocket
        elif handler.request_timeout:  # a connection taken over is no request any more
            self.sock.request_deadline = time.monotonic() + handler.request_timeout
        try:
            keep = self._run_app(head, body, writer, environ)
        except RequestTimeout:
            keep = False
        finally:
            websocket = environ.get("wsgi.websocket")
            if websocket is not None:
                websocket.finish()
            if handler.request_timeout:
                self.sock.request_deadline = 0.0
            REQUEST_ID.reset(context)
        duration = time.perf_counter() - started
        if self.timed_out is not None:
            self._timed_out(head, environ, writer, duration, request_id)
            return False
        if keep is None:  # the app failed; the error was answered or the connection is lost
            return False
        handler.count(writer.status_code, duration)
        if writer.truncated:
            handler.stats.handler_errors += 1
            handler.log.warning(
                "response_truncated",
                method=head.method.decode("latin-1"),
                path=environ["PATH_INFO"],
                content_length=writer.length,
                dropped_bytes=writer.truncated,
                request_id=request_id,
            )
        if handler.access_log:
            handler.log.info(
                "request",
                method=head.method.decode("latin-1"),
                path=environ["PATH_INFO"],
                query=environ["QUERY_STRING"],
                status=writer.status_code,
                bytes=writer.body_sent,
                duration_ms=round(duration * 1000, 3),
                peer=_peer(self.address),
                user_agent=environ.get("HTTP_USER_AGENT"),
                referer=environ.get("HTTP_REFERER"),
                request_id=request_id,
            )
        if not writer.keep_alive or handler.draining:
            return False
        # An unread body must be discarded before the next request can be parsed.
        if body.done and not body.buffer:  # the whole body was read (the common case)
            return True
        if head.expect_continue and not self.continue_sent:
            # The client was never told to send its body: it may send it after its own timeout
            # or never. Either way the next bytes cannot be told apart from a next request.
            return False
        return body.discard() <= DRAIN_LIMIT and body.complete

    def _run_app(
        self, head: Head, body: Input, writer: Response, environ: dict[str, Any]
    ) -> bool | None:
        """Call the app and send its response; None when it failed (already answered)."""
        handler = self.handler
        if head.chunked:
            # Read a chunked body whole (bounded by --max-body) and give the app its length, as
            # nginx does before proxying: Django and Bottle read CONTENT_LENGTH bytes only, and
            # Bottle would de-chunk an input that advertised Transfer-Encoding a second time.
            try:
                body.buffer, body.done = body.read(), True
            except HttpError as exc:
                self.send_error(exc.status, str(exc))
                return None
            except ConnectionError:
                return None
            environ["CONTENT_LENGTH"] = str(len(body.buffer))
        result: Iterable[bytes] | None = None
        try:
            result = handler.app(environ, writer.start_response)
            if head.upgrade and not writer.status:
                # The app took the connection over (it answered the Upgrade itself on
                # gunicorn.socket and never called start_response): nothing more is ours to send.
                handler.stats.connections_upgraded += 1
                return None
            if isinstance(result, (list, tuple)):
                writer.expected = len(result[0]) if len(result) == 1 else sum(map(len, result))
            if not (isinstance(result, FileWrapper) and writer.try_sendfile(result)):
                for chunk in result:
                    writer.write(chunk)
            writer.finish()
        except HttpError as exc:  # raised while the app read its body (413)
            if not writer.headers_sent:
                self.send_error(exc.status, str(exc))
            return None
        except (ConnectionError, _Closed):
            return None
        except Exception:
            if self.timed_out is not None:
                return None  # a consequence of the timeout (the socket was shut): reported there
            if head.upgrade and not writer.status:
                # How Flask-Sock ends a connection it took over under gunicorn (StopIteration):
                # the WebSocket is closed, and no HTTP response may follow it.
                handler.stats.connections_upgraded += 1
                return None
            handler.stats.handler_errors += 1
            handler.log.error(
                "app_error",
                method=head.method.decode("latin-1"),
                path=environ.get("PATH_INFO"),
                exc_info=True,
            )
            if writer.headers_sent:
                return None  # half a response is out: only closing can signal the failure
            self.send_error(500, "the application raised an exception", writer.request_id)
            return None
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    handler.log.error("app_close_error", exc_info=True)
        return True

    def _expire(self) -> None:
        """Called by the connection sweeper when --request-timeout passes (see tcp.IdleSweeper).

        The first call raises RequestTimeout where the app waits; if the app swallows it and is
        still running TIMEOUT_GRACE later, its socket is shut (its next write fails) and the
        exception comes again. The throw is scheduled on the hub, as gevent's own kill is: a
        throw from the sweeper's greenlet would leave the sweeper suspended.
        """
        greenlet = self.sock.greenlet
        if greenlet is None or greenlet.dead:
            return
        if self.timed_out is None:
            frame = greenlet.gr_frame  # where the app waits, before the exception unwinds it
            self.timed_out = "".join(traceback.format_stack(frame)) if frame else ""
            self.sock.request_deadline = time.monotonic() + TIMEOUT_GRACE
        else:
            with contextlib.suppress(OSError):
                self.sock.shutdown(2)
        gevent.get_hub().loop.run_callback(self._throw, greenlet, self.served)

    def _throw(self, greenlet: Any, served: int) -> None:
        if self.served == served and not greenlet.dead:  # still the same request
            greenlet.throw(RequestTimeout)

    def _timed_out(
        self,
        head: Head,
        environ: dict[str, Any],
        writer: Response,
        duration: float,
        request_id: str,
    ) -> None:
        """Report a request stopped by --request-timeout: 504 if nothing was sent, else close."""
        handler = self.handler
        handler.stats.http_request_timeouts += 1
        handler.log.warning(
            "request_timeout",
            method=head.method.decode("latin-1"),
            path=environ["PATH_INFO"],
            elapsed_s=round(duration, 3),
            timeout_s=handler.request_timeout,
            request_id=request_id,
            response_started=writer.headers_sent,
            stack=self.timed_out,
        )
        self.timed_out = None
        if not writer.headers_sent:
            self.send_error(
                504, "the application did not answer within --request-timeout", request_id
            )
        else:
            handler.count(writer.status_code, duration)


# Apps send the same few headers again and again: each is validated and encoded once.
_VALID_HEADERS: dict[tuple[str, str], bytes] = {}
_VALID_HEADERS_MAX = 1024


def _valid_header(name: str, value: str) -> bytes:
    if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
        raise ValueError(f"invalid response header {name!r}: {value!r}")
    line = f"{name}: {value}".encode("latin-1")
    if len(_VALID_HEADERS) < _VALID_HEADERS_MAX:
        _VALID_HEADERS[(name, value)] = line
    return line


def _request_parser(callbacks: Any) -> httptools.HttpRequestParser:
    """llhttp as every request of greenserve is parsed: RFC 9112 7.1.1 allows whitespace (BWS)
    before a chunk extension's ";"; llhttp rejects it after the ";" and around "=" whatever the
    options (see the README)."""
    parser = httptools.HttpRequestParser(callbacks)
    parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
    return parser


def _messages_completed(data: bytes) -> int:
    """How many whole requests a fresh parser finds at the start of ``data``."""
    counter = _MessageCounter()
    parser = _request_parser(counter)
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(data)
    return counter.completed


class _MessageCounter:
    __slots__ = ("completed",)

    def __init__(self) -> None:
        self.completed = 0

    def on_message_complete(self) -> None:
        self.completed += 1


class Response:
    """``start_response`` and ``write`` for one request, and the framing of its body."""

    __slots__ = (
        "body_sent",
        "chunked",
        "connection",
        "expected",
        "head",
        "headers",
        "headers_sent",
        "keep_alive",
        "length",
        "no_body",
        "request_id",
        "sock",
        "status",
        "status_code",
        "truncated",
    )

    def __init__(self, connection: HttpConnection, head: Head, request_id: str) -> None:
        self.connection = connection
        self.request_id = request_id
        self.sock = connection.sock
        self.head = head
        self.status = b""
        self.status_code = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.chunked = False
        self.length: int | None = None
        self.keep_alive = head.keep_alive and not connection.closing
        self.body_sent = 0
        self.truncated = 0  # bytes the app wrote past its own Content-Length, not sent
        self.no_body = head.method == b"HEAD"
        self.expected: int | None = None  # total body length when the result is a list

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status:
            raise AssertionError("start_response called twice without exc_info")
        code = int(status[:3])
        if not 100 <= code <= 999 or status[3:4] not in ("", " "):
            raise ValueError(f"invalid status {status!r}")
        self.status, self.status_code, self.headers = status.encode("latin-1"), code, headers
        if code in _NO_BODY_STATUS:
            self.no_body = True
        return self.write

    def _head_bytes(self) -> bytes:
        """The status line and header block; raises on anything that cannot go on the wire."""
        if not self.status:
            raise AssertionError("the application did not call start_response")
        lines = [b"HTTP/1.1 " + self.status]
        request_id: str | None = self.request_id
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == "x-request-id":
                request_id = None  # the app set its own
            elif lowered == "content-length":
                self.length = int(value)
                if self.length < 0:
                    raise ValueError(f"negative Content-Length {value!r}")
                continue  # written once below, with the framing decision
            if lowered == "connection":
                if value.lower() == "close":
                    self.keep_alive = False
                continue
            if lowered == "transfer-encoding":
                continue  # framing is ours
            line = _VALID_HEADERS.get((name, value))
            if line is None:
                line = _valid_header(name, value)
            lines.append(line)
        code = self.status_code
        if code < 200 or code == 204:
            self.length = None  # RFC 9110 8.6: no Content-Length on 1xx and 204
        elif self.length is None and self.no_body:
            if self.expected and self.head.method == b"HEAD":  # what a GET would get
                self.length = self.expected
                lines.append(b"Content-Length: " + str(self.length).encode())
        elif self.length is None:
            if self.expected is not None:
                self.length = self.expected  # the whole body is known (a list, or finished)
                lines.append(b"Content-Length: " + str(self.length).encode())
            elif self.head.version == "1.1":
                self.chunked = True
                lines.append(b"Transfer-Encoding: chunked")
            else:
                self.keep_alive = False  # HTTP/1.0 without a length: the close ends the body
        elif self.length is not None:
            lines.append(b"Content-Length: " + str(self.length).encode())
        if self.connection.handler.draining:
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"Connection: close")
        elif self.head.version == "1.0":
            lines.append(b"Connection: keep-alive")
        if request_id is not None:
            lines.append(b"X-Request-ID: " + request_id.encode())
        lines.append(b"Date: " + self.connection.handler.date.get())
        lines.append(b"Server: " + SERVER)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def write(self, data: bytes) -> None:
        """The WSGI ``write`` callable, and each chunk of an iterable result."""
        if data.__class__ is not bytes and not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"the application wrote {type(data).__name__}, not bytes")
        if not data:
            return
        if not self.headers_sent:
            if len(data) <= SMALL_BODY and not self.no_body:
                # headers and a small body in one write (the hot path: _start inlined)
                head = self._head_bytes()
                self.sock.sendall(head + self._frame(data))
                self.headers_sent = True
                return
            if self.no_body:
                self._start(data)
                return
            self._start()
        elif self.no_body:
            return
        self.sock.sendall(self._frame(data))

    def _start(self, data: bytes = b"") -> None:
        """Send the header block, with ``data`` after it; until this, a 500 is still possible."""
        head = self._head_bytes()
        if data and not self.no_body:
            head += self._frame(data)
        self.sock.sendall(head)
        self.headers_sent = True

    def _frame(self, data: bytes) -> bytes:
        length = self.length
        if length is not None and self.body_sent + len(data) > length:
            # PEP 3333: never more than the declared length; the excess would be read as the
            # start of the next response by a client or proxy that reuses the connection.
            keep = max(0, length - self.body_sent)
            self.truncated += len(data) - keep
            self.keep_alive = False
            data = data[:keep]
        self.body_sent += len(data)
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def finish(self) -> None:
        if not self.headers_sent:
            if self.expected is None:
                self.expected = 0  # nothing was written: an empty body
            self._start()
            if self.length and not self.no_body:
                self.keep_alive = False  # a declared body never sent: framing is lost
        elif self.no_body:
            pass
        elif self.length is not None and self.body_sent != self.length:
            self.keep_alive = False  # the app's Content-Length was wrong: framing is lost
        elif self.chunked:
            self.sock.sendall(b"0\r\n\r\n")

    def try_sendfile(self, wrapper: FileWrapper) -> bool:
        """Send a file with os.sendfile when its length is known; False to fall back."""
        filelike = wrapper.filelike
        try:
            fd = filelike.fileno()
            offset = filelike.tell()
            size = os.fstat(fd).st_size - offset
            # A socket with no plaintext descriptor (TLS: protocols/tls.py) cannot sendfile:
            # the file then goes through write() like any iterable.
            out = self.sock.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        if self.no_body or (self.length is None and self.head.version != "1.1"):
            return False
        if not any(name.lower() == "content-length" for name, _ in self.headers):
            self.headers = [*self.headers, ("Content-Length", str(size))]
        self._start()
        remaining = self.length if self.length is not None else size
        while remaining > 0:
            try:
                sent = os.sendfile(out, fd, offset, min(remaining, 1 << 20))
            except BlockingIOError:
                gsocket.wait_write(out)
                continue
            if sent == 0:
                break
            offset += sent
            remaining -= sent
            self.body_sent += sent
            self.sock.tx += sent
        return True


class HttpHandler:
    """The connection handler for ``--protocol http``: ``handle(sock, address)`` for a WSGI app."""

    def __init__(
        self,
        app: Any,
        *,
        stats: WorkerStats,
        log: Any,
        server_address: tuple[str, int],
        max_body: int,
        header_timeout: float,
        keepalive_timeout: float,
        access_log: bool,
        request_timeout: float = 0.0,
        tls: bool = False,
        forwarded_allow: Any = None,
        root_path: str = "",
        ws_max_message: int = 16 << 20,
    ) -> None:
        self.app = app
        self.request_timeout = request_timeout
        # Request ids: unique per worker process, cheap (no uuid per request), never reused.
        self.tls = tls
        self.forwarded_allow = forwarded_allow  # proxy.Trusted, or None: trust no one
        self.ws_max_message = ws_max_message
        self.websockets: set[WebSocket] = set()  # open wsgi.websocket objects (1001 on stop)
        self.root_path = root_path
        self.id_prefix = os.urandom(6).hex()
        self.id_counter = 0
        self.stats = stats
        self.log = log
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.access_log = access_log
        self.draining = False
        self.date = _DateCache()
        self.durations = stats.histograms["http_request_duration_seconds"]
        if isinstance(server_address, str):  # a unix socket: PEP 3333 wants both set anyway
            host, port = "localhost", 80
        else:
            host, port = server_address[:2]
        self.base_environ = {
            "SCRIPT_NAME": root_path,
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
            "SERVER_SOFTWARE": f"greenserve/{__version__}",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if tls else "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            # wsgi.input returns b"" at the end of the body, with or without Content-Length:
            # Werkzeug (Flask) reads a chunked body only when this says so.
            "wsgi.input_terminated": True,
        }

    def handle(self, sock: Any, address: Any) -> None:
        """One connection (a bound method for the same reason as TcpProtocol.handle)."""
        connection = HttpConnection(self, sock, address)
        trusted = self.forwarded_allow
        if trusted is not None and address and address[0] in trusted:
            connection.trusted_peer = True
        if self.tls:
            connection.extra_environ = sock.client_environ()
        connection.serve()

    def ping_websockets(self) -> None:
        for websocket in list(self.websockets):
            websocket.ping()

    def close_websockets(self) -> None:
        """A graceful stop: every open WebSocket gets a Close 1001 (going away); its app sees
        the peer's reply and ends within --graceful-timeout."""
        for websocket in list(self.websockets):
            websocket.close(1001, "going away")

    def new_request_id(self) -> str:
        self.id_counter += 1
        return f"{self.id_prefix}-{self.id_counter:x}"

    def count(self, status: int, duration: float) -> None:
        codes = self.stats.http_requests
        key = _STATUS_KEYS.get(status) or str(status)
        codes[key] = codes.get(key, 0) + 1
        self.durations.observe(duration)
        self.stats.requests_served += 1

    def environ(self, head: Head, body: Input, address: Any) -> dict[str, Any]:
        environ = dict(self.base_environ)
        path = head.path
        environ["REQUEST_METHOD"] = head.method.decode("latin-1")
        if b"%" in path:
            path = unquote_to_bytes(path)
        path_info = path.decode("latin-1")
        root = self.root_path
        if root and (path_info == root or path_info.startswith(root + "/")):
            path_info = path_info[len(root) :]  # the proxy kept the prefix: SCRIPT_NAME has it
        environ["PATH_INFO"] = path_info
        environ["QUERY_STRING"] = head.query.decode("latin-1")
        environ["RAW_URI"] = head.url.decode("latin-1")
        environ["SERVER_PROTOCOL"] = "HTTP/" + head.version
        environ["REMOTE_ADDR"] = str(address[0]) if address else ""
        environ["REMOTE_PORT"] = str(address[1]) if address else ""
        environ["wsgi.input"] = body
        for name, value in head.headers:
            key = name.decode("latin-1").upper()
            if "_" in key:
                continue  # would collide with the dash form in HTTP_*: dropped, like nginx
            key = key.replace("-", "_")
            if head.chunked and key == "TRANSFER_ENCODING":
                continue  # the body reaches the app de-chunked, with a CONTENT_LENGTH
            text = value.decode("latin-1")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = text
                continue
            key = "HTTP_" + key
            environ[key] = environ[key] + "," + text if key in environ else text
        return environ


def _as_http_error(exc: Exception, data: bytes) -> HttpError:
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
