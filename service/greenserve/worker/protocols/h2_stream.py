"""One HTTP/2 stream: a request whose app runs in a greenlet of its own.

A stream is the BodySource of its request's ``wsgi.input`` (http_body.Input, as for HTTP/1.1):
DATA frames queue here and the client's flow-control window is opened only as the app reads
them, so an upload is never buffered past the window. Its ``StreamResponse`` sends the app's
headers and body through the connection (h2_connection.py), which owns the h2 state machine,
the socket and the flow-control waits.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gevent import get_hub
from gevent.event import Event
from hpack import NeverIndexedHeaderTuple

from greenserve.logs import REQUEST_ID, RequestIdCell
from greenserve.proxy import apply_forwarded
from greenserve.worker.protocols.http_body import EMPTY_INPUT, Input
from greenserve.worker.protocols.http_parser import END, Head
from greenserve.worker.protocols.http_response import (
    REASONS,
    SERVER,
    FileWrapper,
    check_field,
    check_restart,
    close_body,
    status_code,
)
from greenserve.worker.protocols.llhttp import HttpError
from greenserve.worker.protocols.queue_time import queue_wait
from greenserve.worker.protocols.request_timeout import TIMEOUT_GRACE, RequestTimeout

if TYPE_CHECKING:
    from greenserve.worker.protocols.h2_connection import Http2Connection

# RFC 9113 8.2.2: fields that only mean something to one HTTP/1.1 connection.
CONNECTION_FIELDS = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
)
_NO_BODY_STATUS = frozenset((*range(100, 200), 204, 304))


class StreamGone(ConnectionError):
    """The stream was reset (by the client, a limit or a lost connection): nothing more to
    send on it."""


class Stream:
    """One request on an HTTP/2 connection, from its HEADERS to the end of its response."""

    __slots__ = (
        "body_done",
        "chunks",
        "connection",
        "error",
        "gone",
        "greenlet",
        "head",
        "readable",
        "received",
        "response",
        "stack",
        "stream_id",
        "timer",
        "unread",
        "window",
    )

    def __init__(
        self, connection: Http2Connection, stream_id: int, head: Head, ended: bool
    ) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.head = head
        self.body_done = ended  # the client's END_STREAM came
        self.chunks: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length)
        self.unread = 0  # flow-controlled bytes queued, not yet read by the app
        self.received = 0
        # One event for both waits (a stream's greenlet waits for body or for window, never
        # both; each wait checks its own condition again): an Event is a tenth of the
        # stream's set-up cost.
        self.readable = self.window = Event()
        self.gone = 0  # an error code once the stream was reset or its connection lost
        self.greenlet: Any = None
        self.response: StreamResponse | None = None
        self.timer: Any = None
        self.stack: str | None = None
        self.error: tuple[int, str] | None = None  # a request refused before the app

    # -- from the connection's reader --------------------------------------------------------

    def data(self, data: bytes, flow: int) -> None:
        self.chunks.append((data, flow))
        self.unread += flow
        self.readable.set()

    def end_body(self) -> None:
        self.body_done = True
        self.readable.set()

    def reset(self, code: int) -> None:
        """The stream ended from outside: reads and writes raise StreamGone from now on."""
        self.gone = code or -1
        self.readable.set()
        self.window.set()

    # -- wsgi.input's source (http_body.BodySource) ------------------------------------------

    def next_body_event(self, body: Input) -> Any:
        connection = self.connection
        while not self.chunks:
            if self.body_done:
                return END
            if self.gone:
                raise StreamGone("the stream was reset during the request body")
            self.readable.clear()
            timeout = connection.server.body_timeout or None
            if not self.readable.wait(timeout):
                # nginx's client_body_timeout, as for HTTP/1.1: a body that stops short
                connection.reset_stream(self, "stall")
                raise StreamGone("the client stopped sending the request body")
        data, flow = self.chunks.popleft()
        self.unread -= flow
        connection.acknowledge(self.stream_id, flow)
        body.received += len(data)
        if body.received > connection.handler.max_body:
            raise HttpError(413, "request body too large")
        return data

    # -- the stream's greenlet ---------------------------------------------------------------

    def run(self) -> None:
        connection = self.connection
        handler = connection.handler
        head = self.head
        started = time.perf_counter()
        trusted = connection.trusted_peer
        request_id = head.request_id if head.request_id and trusted else handler.new_request_id()
        writer = self.response = StreamResponse(self, request_id)
        environ: dict[str, Any] | None = None
        stats = handler.stats
        stats.http_requests_in_flight += 1
        stats.http2_streams_active += 1
        context = REQUEST_ID.set(RequestIdCell(request_id))  # a greenlet per stream
        try:
            error = self.error or self._refusal(head, trusted)
            if error is not None:
                self.answer_error(*error)
                return
            if head.content_length is None and not head.chunked:
                body = EMPTY_INPUT
            else:
                body = Input(self, head)
            environ = handler.environ(head, body, connection.base)
            head.headers = []
            environ["HTTP_X_REQUEST_ID"] = environ["greenserve.request_id"] = request_id
            environ["wsgi.early_hints"] = writer.early_hints
            if connection.extra_environ:
                environ.update(connection.extra_environ)
            if trusted:
                apply_forwarded(environ, handler.forwarded_allow)
            if head.chunked:  # no content-length: read whole, as for a chunked HTTP/1.1 body
                body.buffer, body.done = body.read(), True
                environ["CONTENT_LENGTH"] = str(len(body.buffer))
            if handler.request_timeout:
                self.timer = get_hub().loop.timer(handler.request_timeout)
                self.timer.start(self._expire)
            self._call_app(environ, writer)
        except HttpError as exc:
            if not writer.headers_sent and not self.gone:
                self.answer_error(exc.status, str(exc))
            else:
                connection.reset_stream(self, "")
        except RequestTimeout:
            self._timed_out(environ, writer, time.perf_counter() - started)
        except ConnectionError:  # reset, short, or the connection went: nothing more to send
            connection.reset_stream(self, "")
        except Exception:
            stats.handler_errors += 1
            handler.log.error(
                "app_error",
                method=head.method.decode("latin-1"),
                path=environ.get("PATH_INFO") if environ else None,
                exc_info=True,
            )
            if writer.headers_sent:
                connection.reset_stream(self, "")
            elif not self.gone:
                self.answer_error(500, "the application raised an exception")
        finally:
            if self.timer is not None:
                self.timer.stop()
                self.timer.close()
            REQUEST_ID.reset(context)
            stats.http_requests_in_flight -= 1
            stats.http2_streams_active -= 1
            connection.stream_done(self)
            # The stream and its writer, and the stream and its greenlet (whose run is the
            # stream's), refer to each other: left so, every stream's objects waited for the
            # cyclic GC, and it ran often enough to cost 9-18% of HTTP/2 hello per CPU-second
            # (the gap to a gen0 threshold of 10,000, three interleaved runs).
            self.response = self.greenlet = None
        if writer.headers_sent:  # finished, or cut short after its head went out
            writer.duration = time.perf_counter() - started
            handler.account_stream(connection.address, environ, writer)

    def _refusal(self, head: Head, trusted: bool) -> tuple[int, str] | None:
        """greenserve's own answer before the app (a limit), or None."""
        handler = self.connection.handler
        if head.content_length is not None and head.content_length > handler.max_body:
            return 413, "request body too large"
        stats = handler.stats
        if handler.max_inflight and stats.http_requests_in_flight > handler.max_inflight:
            stats.http_requests_shed["inflight"] = stats.http_requests_shed.get("inflight", 0) + 1
            return 503, "overloaded: too many requests in flight"
        if head.request_start is not None:
            queued = queue_wait(head.request_start, trusted, stats.request_start_ignored, None)
            if queued is not None:
                handler.queue_times.observe(queued)
                if handler.max_queue_time and queued > handler.max_queue_time:
                    shed = stats.http_requests_shed
                    shed["queue_time"] = shed.get("queue_time", 0) + 1
                    return 503, "overloaded: the request waited too long before the app"
        return None

    def _call_app(self, environ: dict[str, Any], writer: StreamResponse) -> None:
        result: Any = None
        try:
            result = self.connection.handler.app(environ, writer.start_response)
            if isinstance(result, (list, tuple)):
                writer.finish(b"".join(result))
                return
            for chunk in result if not isinstance(result, FileWrapper) else iter(result):
                writer.write(chunk)
            writer.finish(b"")
        finally:
            if result is not None:
                close_body(result)

    def answer_error(self, status: int, detail: str) -> None:
        """greenserve's own response on this stream (a limit, a failed app), accounted."""
        writer = self.response
        assert writer is not None
        body = f"{status} {REASONS.get(status, '')}: {detail}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if status == 503:
            headers.append(("Retry-After", "1"))
        writer.reset_for_error()
        writer.start_response(f"{status} {REASONS.get(status, 'Error')}", headers)
        writer.error = detail
        with contextlib.suppress(StreamGone):
            writer.finish(body)

    def _expire(self) -> None:
        """--request-timeout passed: the app's greenlet gets RequestTimeout; one that swallowed
        it is stopped TIMEOUT_GRACE later."""
        greenlet = self.greenlet
        if greenlet is None or greenlet.dead:
            return
        if self.stack is None:
            frame = greenlet.gr_frame
            self.stack = "".join(traceback.format_stack(frame)) if frame else ""
            self.timer.stop()
            self.timer = get_hub().loop.timer(TIMEOUT_GRACE)
            self.timer.start(self._expire)
            greenlet.throw(RequestTimeout)
        else:
            greenlet.kill(RequestTimeout, block=False)

    def _timed_out(self, environ: Any, writer: StreamResponse, duration: float) -> None:
        connection = self.connection
        handler = connection.handler
        handler.stats.http_request_timeouts += 1
        handler.log.warning(
            "request_timeout",
            method=self.head.method.decode("latin-1"),
            path=environ["PATH_INFO"] if environ else None,
            elapsed_s=round(duration, 3),
            timeout_s=handler.request_timeout,
            request_id=writer.request_id,
            response_started=writer.headers_sent,
            stack=self.stack or "",
        )
        if writer.headers_sent:
            connection.reset_stream(self, "timeout")
        elif not self.gone:
            self.answer_error(504, "the application did not answer within --request-timeout")


class StreamResponse:
    """``start_response`` and ``write`` for one stream: fields, then DATA frames as the
    client's window allows. What the accounting reads matches http_response.Response."""

    __slots__ = (
        "body_sent",
        "duration",
        "error",
        "fields",
        "finished",
        "head",
        "headers_sent",
        "length",
        "no_body",
        "request_id",
        "status_code",
        "stream",
        "truncated",
    )

    def __init__(self, stream: Stream, request_id: str) -> None:
        self.stream = stream
        self.head = stream.head
        self.request_id = request_id
        self.no_body = stream.head.method == b"HEAD"
        self.reset_for_error()
        self.headers_sent = False
        self.body_sent = 0
        self.truncated = 0
        self.duration = 0.0

    def reset_for_error(self) -> None:
        self.status_code = 0
        self.fields: list[tuple[bytes, bytes]] = []
        self.length: int | None = None
        self.finished = False
        self.error = ""

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        check_restart(exc_info, bool(self.status_code), self.headers_sent)
        code = status_code(status)
        fields = [(b":status", b"%d" % code)]
        request_id = True
        for name, value in headers:
            check_field(name, value)
            lowered = name.lower()
            if lowered in CONNECTION_FIELDS:
                continue
            if lowered == "content-length":
                self.length = int(value)
            elif lowered == "x-request-id":
                request_id = False
            fields.append((lowered.encode("latin-1"), value.encode("latin-1")))
        if request_id:
            # unique per response: kept out of HPACK's table, where it would only evict
            fields.append(NeverIndexedHeaderTuple(b"x-request-id", self.request_id.encode()))
        date = self.stream.connection.handler.date.date()
        fields += ((b"date", date), (b"server", SERVER))
        self.status_code, self.fields = code, fields
        if code in _NO_BODY_STATUS:
            self.no_body = True
        return self.write

    def early_hints(self, headers: list[tuple[str, str]]) -> None:
        """``wsgi.early_hints``: a 103 with these fields (Link: preload) before the answer."""
        if self.headers_sent or self.stream.gone:
            return
        fields = [(b":status", b"103")]
        for name, value in headers:
            check_field(name, value)
            fields.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        self.stream.connection.send_fields(self.stream, fields, end=False)

    def write(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"the application wrote {type(data).__name__}, not bytes")
        if not data:
            return
        self._send(data, end=False)

    def finish(self, data: bytes) -> None:
        """The last of the body (maybe empty) and END_STREAM; headers too if not yet sent. A
        body shorter than its Content-Length is reset instead: the client must not take it
        for the whole (HTTP/1.1 closes the connection for the same reason)."""
        if not self.status_code:
            raise AssertionError("the application did not call start_response")
        length = self.length
        if length is not None and not self.no_body and self.body_sent + len(data) < length:
            self._send(data, end=False)
            raise StreamGone("the body ended short of its Content-Length")
        self._send(data, end=True)
        self.finished = True

    def _send(self, data: bytes, end: bool) -> None:
        connection = self.stream.connection
        if self.no_body:
            data = b""
        elif self.length is not None and self.body_sent + len(data) > self.length:
            keep = max(self.length - self.body_sent, 0)
            self.truncated += len(data) - keep
            data = data[:keep]
        if not self.headers_sent:
            if not self.status_code:
                raise AssertionError("the application did not call start_response")
            fields = self.fields
            if end and self.length is None and not self.no_body:
                fields.append((b"content-length", b"%d" % len(data)))
            self.headers_sent = True
            connection.send_fields(self.stream, fields, end=end and not data)
            if not data:
                return
        if data or end:
            self.body_sent += len(data)
            connection.send_body(self.stream, data, end)
