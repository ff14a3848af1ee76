"""HTTP/1.1 connections for WSGI apps: one greenlet per connection runs ``HttpConnection.serve``.

The loop takes the next request head from the parser's queue (http_request.py), builds a PEP
3333 environ, calls the app and writes its response (http_response.py). Pipelined requests wait
in the queue; the sweeper's deadlines time out slow clients and, with --request-timeout, apps.

Ownership: the connection holds per-connection state (socket, parser, trust, the response in
progress); ``Input`` and ``Response`` hold one request's state and talk to the connection through
its public methods; ``HttpHandler`` holds what every connection of one listener shares.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

import gevent
import httptools

from greenserve import __version__
from greenserve.config import Settings
from greenserve.logs import REQUEST_ID
from greenserve.protocols.chunk_ext import ChunkLines, body_starts
from greenserve.protocols.http_request import (
    DRAIN_LIMIT,
    EMPTY_INPUT,
    END,
    FAST_PARSE,
    METHOD_PREFIX,
    PLAIN_KEYS,
    Head,
    HttpError,
    Input,
    RequestParser,
    as_http_error,
    fast_head,
    messages_completed,
)
from greenserve.protocols.http_response import REASONS, DateCache, FileWrapper, Response
from greenserve.protocols.queue_time import waited
from greenserve.protocols.tcp import CountingSocket
from greenserve.protocols.tcp import peer as _peer
from greenserve.protocols.turns import take_turn
from greenserve.protocols.websocket import WebSocket
from greenserve.proxy import apply_forwarded
from greenserve.stats import WorkerStats

RECV_SIZE = 65536

HISTORY_LIMIT = 65536  # request bytes kept across reads to place a parse error (see _feed)


TIMEOUT_GRACE = 1.0  # an app that swallowed its request timeout is stopped again this much later

_STATUS_KEYS = {code: str(code) for code in range(100, 600)}  # metric label per status

RETRY_AFTER = b"Retry-After: 1\r\n"  # a shed request: the load balancer may try again soon
SHED = {
    "inflight": "overloaded: too many requests in flight",
    "queue_time": "overloaded: the request waited too long before the app",
}

# RFC 6455 5.5.1: a client's Close frame, 1001 "going away" (masked, with a zero key), as a
# stop makes an app's own WebSocket library read it (tcp.Connections.end_upgraded)
GOING_AWAY = b"\x88\x8c\x00\x00\x00\x00\x03\xe9going away"


class RequestTimeout(BaseException):
    """Raised inside a request's greenlet when --request-timeout passes.

    A BaseException, like gevent.Timeout: an app's ``except Exception`` does not swallow it,
    while its ``finally`` blocks and context managers still run.
    """


class _Closed(Exception):
    """The client closed the connection (or the sweeper shut it)."""


class HttpConnection:
    """One client connection: requests in order, one at a time, until close."""

    # Slots: one of these lives as long as each idle keep-alive connection.
    __slots__ = (
        "address",
        "chunk_lines",
        "closing",
        "continue_sent",
        "events",
        "extra_environ",
        "handler",
        "history",
        "history_base",
        "parser",
        "response",
        "served",
        "sock",
        "timed_out",
        "trusted_peer",
        "upgrade_tail",
        "watched",
    )

    def __init__(self, handler: HttpHandler, sock: CountingSocket, address: Any) -> None:
        # Per-connection state
        self.handler = handler
        self.sock = sock
        # The socket the sweeper watches, whose deadline and state the connection sets several
        # times per request: under TLS, the CountingSocket beneath.
        self.watched: CountingSocket = sock.watched
        self.address = address
        self.parser = RequestParser(self.watched, handler.header_timeout)
        self.events = self.parser.events
        self.closing = False
        self.extra_environ: dict[str, str] | None = None  # TLS: the verified client certificate
        self.trusted_peer = False  # in --forwarded-allow-ips: its forwarded headers count
        self.upgrade_tail = b""  # bytes read past an Upgrade request's head
        self.chunk_lines: ChunkLines | None = None  # a chunked body's size lines, across reads
        # Reads since the last request boundary (see _rejected_request); None past the limit.
        self.history: bytes | None = b""
        self.history_base = 0  # parser.completed when history started
        # Per-request state
        self.response: Response | None = None
        self.continue_sent = False
        self.timed_out: str | None = None  # the app's stack when its request timed out
        self.served = 0  # requests started on this connection: tells a late timeout apart

    # -- reading -------------------------------------------------------------------------------

    def _feed(self, idle: bool = False) -> None:
        """Read from the socket into the parser; raises _Closed at end of stream.

        A parse error is queued as an event, not raised: requests parsed before it in the same
        read (pipelining) are answered first, in order.
        """
        sock = self.sock
        data = sock.recv_after_wait(RECV_SIZE) if idle else sock.recv(RECV_SIZE)
        if not data:
            raise _Closed
        parser = self.parser
        if parser.at_boundary and FAST_PARSE is not None:
            # A plain request, whole in this read: its environ is built in C (_fasthead.c), and
            # llhttp, still at a message boundary, never sees it.
            head = fast_head(data, self.handler.base_environ)
            if head is not None:
                watched = self.watched
                watched.deadline = 0.0  # as on_message_begin and on_headers_complete do
                watched.parked = False
                self.events.append(head)
                return
        if self.chunk_lines is not None and not self._chunk_lines_pass(data):
            return
        feed = parser.feed or parser.start()
        try:
            feed(data)
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
            self.events.append(as_http_error(exc, token))
        except httptools.HttpParserError as exc:
            self.events.append(as_http_error(exc, data))
        else:
            if parser.chunked_heads is not None:
                self._check_chunked(data)
            if parser.at_boundary:  # the common case: whole requests in each read
                self.history = b""
                self.history_base = parser.completed
            elif self.history is not None:
                history = self.history + data
                self.history = history if len(history) <= HISTORY_LIMIT else None

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
        parser = self.parser
        heads, parser.chunked_heads = parser.chunked_heads or [], None
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
        completed = self.parser.completed - self.history_base
        low, high = 0, len(buffer) if completed else 0
        while low < high:
            middle = (low + high) // 2
            if messages_completed(buffer[:middle]) >= completed:
                high = middle
            else:
                low = middle + 1
        return buffer[low:]

    def _method_token(self, data: bytes) -> bytes:
        """Enough of a rejected request line to tell an unknown method (501) from noise (400).

        llhttp rejects a method as soon as no known one can match, possibly after two bytes
        ("BR" of "BREW"): read on, bounded, while the bytes still look like a method token.
        """
        while METHOD_PREFIX.fullmatch(data):
            try:
                more = self.sock.recv(64)
            except OSError:
                break
            if not more:
                break
            data += more
        return data

    def next_head(self) -> Head | None:
        parser = self.parser
        while True:
            while self.events:
                event = self.events.pop(0)
                if event.__class__ is Head:
                    return event
                if isinstance(event, HttpError):
                    raise event
            if parser.head_open:
                # A request has begun, its head not whole: its header clock starts at the first
                # wait for the rest. A head that came whole never needs it, and one begun behind
                # a pipelined request must not run out while the app answers that request.
                if parser.untimed:
                    parser.start_header_clock()
            else:
                # Parked: waiting for a next request, so a drain may end the connection. A new
                # one may have its first request in flight: a drain gives it a moment instead of
                # closing it at once, which failed that request (seen under load in restarts).
                # It stays parked until a request begins (RequestParser.on_message_begin).
                self.watched.parked = True
                self.watched.fresh = self.served == 0
            try:
                self._feed(idle=self.served > 0)
            except _Closed:
                return None

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
                self.watched.deadline = time.monotonic() + timeout
            try:
                self._feed()
            except _Closed:
                raise ConnectionError("client closed during the request body") from None
            finally:
                self.watched.deadline = 0.0
        event = self.events.pop(0)
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
                self.watched.deadline = time.monotonic() + keepalive
            try:
                head = self.next_head()
            except HttpError as exc:
                self.send_error(exc.status, str(exc))
                return
            if head is None:
                return
            if head.content_length is not None and head.content_length > handler.max_body:
                self.send_error(413, "request body too large", head=head)
                return
            if handler.max_inflight and stats.http_requests_in_flight >= handler.max_inflight:
                self.shed(head, "inflight")
                return
            # Queue time, before any per-request object (a shed must cost as little as it can);
            # most keep-alive requests have neither a header nor an accept to measure from, and
            # pay one dict lookup (the C parser built the environ; llhttp's path kept the header).
            environ = head.environ
            start = head.request_start if environ is None else environ.get("HTTP_X_REQUEST_START")
            if start is not None or self.served == 0:
                queued = self._queued(start)
                if queued is not None:
                    handler.queue_times.observe(queued)
                    if handler.max_queue_time and queued > handler.max_queue_time:
                        self.shed(head, "queue_time")
                        return
            # A WebSocket session is no request in flight: it would hold the limit for hours.
            counted = not head.upgrade
            stats.http_requests_in_flight += counted
            try:
                keep = self._respond(head)
            finally:
                stats.http_requests_in_flight -= counted
                # an idle keep-alive connection keeps no request: the app's header list, ids
                self.response = None
            if not keep:
                return
            # Fairness (protocols/turns.py): only a request already read needs a step back;
            # reading the next one waits through the hub anyway (TLS: see TlsSocket._read).
            # The END of a request whose body the app never read is still queued: no request.
            events = self.events
            while events and events[0] is END:
                del events[0]
            if events:
                take_turn()

    def send_error(
        self,
        status: int,
        detail: str,
        request_id: str = "",
        head: Head | None = None,
        duration: float = 0.0,
        extra: bytes = b"",
    ) -> None:
        """greenserve's own answer (a parse error, a limit, a failed app), then the connection
        closes; counted and access-logged like any response, with a request id."""
        handler = self.handler
        request_id = request_id or handler.new_request_id()
        body = f"{status} {REASONS.get(status, '')}: {detail}\n".encode()
        response = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n".encode()
            + b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            + b"X-Request-ID: "
            + request_id.encode()
            + b"\r\n"
            + extra
            + b"Content-Length: %d" % len(body)
            + handler.date.end()
            + body
        )
        with contextlib.suppress(OSError):  # the client may already be gone
            self.sock.sendall(response)
        head = head or self.parser.head  # a head begun before the error, if any
        self._answered(head, None, status, len(body), duration, request_id, error=detail)

    def shed(self, head: Head, reason: str) -> None:
        """Overload (--max-inflight, --max-queue-time): 503 at once, before the body is read
        and without the app, and the connection closes (the body is left unread)."""
        shed = self.handler.stats.http_requests_shed
        shed[reason] = shed.get(reason, 0) + 1
        self.send_error(503, SHED[reason], head=head, extra=RETRY_AFTER)

    def _queued(self, header: str | None) -> float | None:
        """Seconds this request waited before the app, or None when it is not known: a trusted
        proxy's X-Request-Start, else the time since accept for a connection's first request."""
        if header is not None:
            ignored = self.handler.stats.request_start_ignored
            reason = "untrusted"  # anyone can send it: only --forwarded-allow-ips is believed
            if self.trusted_peer:
                wait = waited(header, time.time())
                if isinstance(wait, float):
                    return wait
                reason = wait
            ignored[reason] = ignored.get(reason, 0) + 1
        if self.served == 0:
            return time.monotonic() - self.watched.accepted_at
        return None

    def _answered(
        self,
        head: Head | None,
        environ: dict[str, Any] | None,
        status: int,
        sent: int,
        duration: float,
        request_id: str,
        **extra: Any,
    ) -> None:
        """A response written outside the common path: counted on /metrics and, with
        --access-log, logged, so the two always agree. (``_respond``'s own path inlines the
        same two steps: one Python call less per request.)"""
        self.handler.count(status, duration)
        if self.handler.access_log:
            self._access(head, environ, status, sent, duration, request_id, **extra)

    def _access(
        self,
        head: Head | None,
        environ: dict[str, Any] | None,
        status: int,
        sent: int,
        duration: float,
        request_id: str,
        **extra: Any,
    ) -> None:
        """One access-log line (--access-log): every response, whoever wrote it."""
        if environ is None and head is not None:
            environ = head.environ  # a plain head's, built in C before it was refused
        if environ is not None:
            path, query = environ["PATH_INFO"], environ["QUERY_STRING"]
            agent, referer = environ.get("HTTP_USER_AGENT"), environ.get("HTTP_REFERER")
        else:  # no environ yet: what the parser had of the request
            path = head.path.decode("latin-1") if head is not None else None
            query = head.query.decode("latin-1") if head is not None else None
            agent = referer = None
        self.handler.log.info(
            "request",
            method=head.method.decode("latin-1") if head is not None and head.method else None,
            path=path,
            query=query,
            status=status,
            bytes=sent,
            duration_ms=round(duration * 1000, 3),
            peer=_peer(self.address),
            user_agent=agent,
            referer=referer,
            request_id=request_id,
            **extra,
        )

    def _respond(self, head: Head) -> bool:
        """Run the app for one request; True when the connection may serve another."""
        handler = self.handler
        started = time.perf_counter()
        if head.request_id and self.trusted_peer:
            request_id = head.request_id  # only a trusted proxy names the request
        else:
            request_id = handler.new_request_id()
        # A request without a body (most) shares one empty, finished input: nothing to read,
        # nothing to keep per request.
        if head.content_length is None and not head.chunked:
            body = EMPTY_INPUT
        else:
            body = Input(self, head)
        self.response = writer = Response(self, self.handler, head, request_id)
        self.continue_sent = False
        environ = handler.environ(head, body, self.address)
        # in the environ now: a long request (a WebSocket) need not keep both; a list, for the
        # trailer fields of a chunked body, which llhttp reports as headers after this point
        head.headers = []
        environ["HTTP_X_REQUEST_ID"] = environ["greenserve.request_id"] = request_id
        if self.extra_environ:
            environ.update(self.extra_environ)
        if self.trusted_peer:
            apply_forwarded(environ, handler.forwarded_allow)
        self.served += 1
        context = REQUEST_ID.set(request_id)
        upgraded_at = (0, 0)
        if head.upgrade:
            upgraded_at = (self.watched.rx, self.watched.tx)
            # What Flask-Sock, simple-websocket and python-socketio (gevent mode) look for: the
            # connection's socket, to answer the handshake and speak WebSocket on it themselves.
            environ["gunicorn.socket"] = self.sock
            self.parser.release()  # no HTTP after this request: its END is already queued
            self.history = None
            self.watched.upgraded = True
            if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
                self.watched.upgraded = "websocket"  # a stop speaks to its library in frames
                websocket = WebSocket(
                    self.sock,
                    environ,
                    handler.stats,
                    handler.websockets,
                    handler.ws_max_message,
                    early=self.upgrade_tail,
                )
                environ["wsgi.websocket"] = websocket
        elif handler.request_timeout:  # a connection taken over is no request any more
            self.watched.request_deadline = time.monotonic() + handler.request_timeout
            # set per request, not per connection: no bound method kept by each idle one
            self.watched.expire = self._expire
        try:
            keep = self._run_app(head, body, writer, environ)
        except RequestTimeout:
            keep = False
        finally:
            websocket = environ.get("wsgi.websocket")
            if websocket is not None:
                websocket.finish()
            if handler.request_timeout:
                self.watched.request_deadline = 0.0
                self.watched.expire = None
            REQUEST_ID.reset(context)
        duration = time.perf_counter() - started
        if self.timed_out is not None:
            self._timed_out(head, environ, writer, duration, request_id)
            return False
        if keep is None:  # taken over, failed (answered), or cut short
            self._unfinished(head, environ, writer, duration, request_id, upgraded_at)
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
            self._access(head, environ, writer.status_code, writer.body_sent, duration, request_id)
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

    def _unfinished(
        self,
        head: Head,
        environ: dict[str, Any],
        writer: Response,
        duration: float,
        request_id: str,
        upgraded_at: tuple[int, int],
    ) -> None:
        """Account for a request ``_run_app`` did not finish: a connection taken over (one line
        per WebSocket session as it ends), or a response cut short after its head went out."""
        handler = self.handler
        if head.upgrade and not writer.status:
            websocket = environ.get("wsgi.websocket")
            if websocket is not None and not websocket.started:
                websocket = None  # offered, not used: the app answered on gunicorn.socket
            refused = websocket.refused if websocket is not None else 0
            if refused:  # the handshake was answered with an error status
                self._answered(head, environ, refused, 0, duration, request_id)
            if not refused and handler.access_log:
                watched = self.watched
                handler.log.info(
                    "websocket",
                    path=environ["PATH_INFO"],
                    kind="wsgi.websocket" if websocket is not None else "app",
                    duration_ms=round(duration * 1000, 3),
                    bytes_received=watched.rx - upgraded_at[0],
                    bytes_sent=watched.tx - upgraded_at[1],
                    close_code=websocket.close_code if websocket is not None else None,
                    peer=_peer(self.address),
                    request_id=request_id,
                )
        elif writer.headers_sent:
            self._answered(
                head, environ, writer.status_code, writer.body_sent, duration, request_id
            )

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
                self.send_error(exc.status, str(exc), writer.request_id, head)
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
                self.send_error(exc.status, str(exc), writer.request_id, head)
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
            self.send_error(500, "the application raised an exception", writer.request_id, head)
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
        greenlet = self.watched.greenlet
        if greenlet is None or greenlet.dead:
            return
        if self.timed_out is None:
            frame = greenlet.gr_frame  # where the app waits, before the exception unwinds it
            self.timed_out = "".join(traceback.format_stack(frame)) if frame else ""
            self.watched.request_deadline = time.monotonic() + TIMEOUT_GRACE
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
                504,
                "the application did not answer within --request-timeout",
                request_id,
                head,
                duration,
            )
        else:
            self._answered(
                head, environ, writer.status_code, writer.body_sent, duration, request_id
            )


class HttpHandler:
    """The connection handler for ``--protocol http``: ``handle(sock, address)`` for a WSGI app."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        *,
        stats: WorkerStats,
        log: Any,
        server_address: Any,
    ) -> None:
        """``server_address``: the listener's (SERVER_NAME, SERVER_PORT), or a unix path."""
        self.app = app
        # Copied to attributes once: the hot path reads them per request.
        self.request_timeout = settings.request_timeout
        self.tls = tls = settings.certfile is not None
        self.forwarded_allow = settings.forwarded_allow_ips  # proxy.Trusted
        self.ws_max_message = settings.ws_max_message
        self.root_path = root_path = settings.root_path
        self.max_body = settings.max_body
        self.header_timeout = settings.header_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.access_log = settings.access_log
        self.max_inflight = settings.max_inflight  # 0: off
        self.max_queue_time = settings.max_queue_time  # 0: off
        self.queue_times = stats.histograms["http_queue_seconds"]
        self.websockets: set[WebSocket] = set()  # open wsgi.websocket objects (1001 on stop)
        # Request ids: unique per worker process, cheap (no uuid per request), never reused.
        self.id_prefix = os.urandom(6).hex()
        self.id_counter = 0
        self.stats = stats
        self.log = log
        self.draining = False
        self.date = DateCache()
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

    def handle(self, sock: CountingSocket, address: Any) -> None:
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
        environ = head.environ
        if environ is None:
            environ = self._parsed_environ(head)
        else:  # built by FAST_PARSE from base_environ: the request's part
            head.environ = None  # the Head outlives the request (Response.head): not the environ
        root = self.root_path
        if root:
            path_info = environ["PATH_INFO"]
            if path_info == root or path_info.startswith(root + "/"):
                # the proxy kept the prefix: SCRIPT_NAME has it, PATH_INFO the rest
                environ["PATH_INFO"] = path_info[len(root) :]
        environ["REMOTE_ADDR"] = str(address[0]) if address else ""
        environ["REMOTE_PORT"] = str(address[1]) if address else ""
        environ["wsgi.input"] = body
        return environ

    def _parsed_environ(self, head: Head) -> dict[str, Any]:
        """The request's part of the environ from a head llhttp parsed (what _fasthead.parse
        builds for the plain ones)."""
        environ = dict(self.base_environ)
        path = head.path
        method = head.method
        environ["REQUEST_METHOD"] = _METHODS.get(method) or method.decode("latin-1")
        if _PERCENT in path:  # an int: see http_request._HASH
            path = unquote_to_bytes(path)
        path_info = environ["PATH_INFO"] = path.decode("latin-1")
        query = head.query
        environ["QUERY_STRING"] = query.decode("latin-1") if query else ""
        url = head.url
        # most targets are a bare path: its text is already decoded
        environ["RAW_URI"] = path_info if url is path else url.decode("latin-1")
        environ["SERVER_PROTOCOL"] = "HTTP/1.1" if head.version == "1.1" else "HTTP/" + head.version
        chunked = head.chunked
        for key, value in head.headers:
            if key is None or (chunked and key == "HTTP_TRANSFER_ENCODING"):
                # a name that is dropped (see http_request._environ_key); a chunked body
                # reaches the app de-chunked, with a CONTENT_LENGTH
                continue
            text = value.decode("latin-1")
            if key in environ and key not in PLAIN_KEYS:
                environ[key] = environ[key] + "," + text
            else:
                environ[key] = text
        return environ


_PERCENT = ord("%")
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
