"""HTTP/1.1 connections for WSGI apps: one greenlet per connection runs ``HttpConnection.serve``.

The connection reads from its socket and feeds the parser (http_parser.py), which queues request
heads, body chunks and errors; it moves the connection through its phases (phase.py), builds a
PEP 3333 environ (wsgi_environ.py), calls the app and writes its response (http_response.py).

Ownership: the connection holds per-connection state (socket, parser, trust, the response in
progress) and is the only writer of its phase; ``Input`` and ``Response`` hold one request's
state and talk to the connection through its public methods; ``HttpHandler`` holds what every
connection of one listener shares, and accounts for every response (metrics, access log).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gevent import getcurrent
from gevent.exceptions import InvalidSwitchError

from greenserve import extensions
from greenserve.logs import REQUEST_ID, RequestIdCell
from greenserve.metrics.stats import Histogram, WorkerStats
from greenserve.proxy import apply_forwarded
from greenserve.worker.protocols import http_parser
from greenserve.worker.protocols.http_accounting import STATUS_KEYS
from greenserve.worker.protocols.http_answers import OwnAnswers
from greenserve.worker.protocols.http_body import DRAIN_LIMIT, EMPTY_INPUT, Input
from greenserve.worker.protocols.http_parser import (
    END,
    METHOD_PREFIX,
    Head,
    RejectedMethod,
    RequestParser,
)
from greenserve.worker.protocols.http_response import (
    FileWrapper,
    Response,
    early_hints_bytes,
)
from greenserve.worker.protocols.llhttp import HttpError, as_http_error
from greenserve.worker.protocols.phase import APP, BODY, FRESH, HEAD, PARKED, UPGRADED, WEBSOCKET
from greenserve.worker.protocols.queue_time import queue_wait
from greenserve.worker.protocols.request_timeout import RequestClock, RequestTimeout
from greenserve.worker.protocols.tcp import CountingSocket
from greenserve.worker.protocols.tcp import peer as _peer
from greenserve.worker.protocols.turns import take_turn
from greenserve.worker.protocols.upgrades import Taken, app_kind
from greenserve.worker.protocols.websocket import WebSocket

if TYPE_CHECKING:
    from greenserve.worker.protocols.http_handler import HttpHandler

RECV_SIZE = 65536

_PLAIN = (list, tuple)  # bodies with no close() of their own, which could take its time

# RFC 6455 5.5.1: a client's Close frame, 1001 "going away" (masked, with a zero key), as a
# stop makes an app's own WebSocket library read it (tcp.Connections.end_upgraded)
GOING_AWAY = b"\x88\x8c\x00\x00\x00\x00\x03\xe9going away"


class _Http2Preface(Exception):
    """A connection's first bytes are HTTP/2's preface (h2c with prior knowledge)."""

    def __init__(self, data: bytes) -> None:
        super().__init__("HTTP/2 preface")
        self.data = data


H2_PREFACE_START = b"PRI * HTTP/2.0\r\n"

# A plain request's _respond in C (_cycle.c), which declines anything else, and serve's loop
# while requests are plain: the switches the tests turn off (None) to run them in Python.
CYCLE_ABI = 3
CYCLE_C: Any = extensions.load("_cycle", CYCLE_ABI)
RESPOND_PLAIN: Any = CYCLE_C.respond if CYCLE_C is not None else None
SERVE_PLAIN: Any = CYCLE_C.serve if CYCLE_C is not None else None


class HttpConnection(OwnAnswers):
    """One client connection: requests in order, one at a time, until close."""

    # Slots: one of these lives as long as each idle keep-alive connection.
    __slots__ = (
        "address",
        "base",
        "clock",
        "continue_sent",
        "events",
        "extra_environ",
        "handler",
        "parser",
        "request_cell",
        "response",
        "served",
        "sock",
        "trusted_peer",
        "watched",
    )

    def __init__(self, handler: HttpHandler, sock: CountingSocket, address: Any) -> None:
        # Per-connection state
        self.handler = handler
        self.sock = sock
        # The socket the sweeper watches, whose phase the connection sets several times per
        # request: under TLS, the CountingSocket beneath.
        self.watched: CountingSocket = sock.watched
        self.address = address
        # The requests' environ base with this peer's address and wsgi.early_hints (bound
        # once, not per request; cleared once the connection has ended: HttpHandler.handle)
        self.base = base = handler.connection_environ(address)
        base["wsgi.early_hints"] = self.send_early_hints
        self.parser = RequestParser(base)
        self.events = self.parser.events
        self.extra_environ: dict[str, str] | None = None  # TLS: the verified client certificate
        self.trusted_peer = False  # in --forwarded-allow-ips: its forwarded headers count
        self.clock: RequestClock | None = None  # --request-timeout, from the first request on
        # Per-request state
        self.response: Response | None = None
        self.request_cell: RequestIdCell | None = None  # in the greenlet's context (logs.py)
        self.continue_sent = False
        self.served = 0  # requests started on this connection
        self.failure = None  # an answer _failed sent, not yet counted (http_answers.py)

    # -- reading -------------------------------------------------------------------------------

    def _method_token(self, data: bytes) -> bytes:
        """Enough of a rejected request line to tell an unknown method (501) from noise (400):
        read on, bounded, while the bytes still look like a method token."""
        while METHOD_PREFIX.fullmatch(data):
            try:
                more = self.sock.recv(64)
            except OSError:
                break
            if not more:
                break
            data += more
        return data

    def next_head(self, keepalive: float) -> Head | None:
        """The next request's head, waiting for it as long as the phase allows; None at the
        end of the stream. ``keepalive``: how long a connection with no request begun may
        wait (0: for ever), counted from the first wait (a head already read reads no clock)."""
        parser = self.parser
        watched = self.watched
        keepalive_deadline = -1.0
        while True:
            while self.events:
                event = self.events.pop(0)
                if event.__class__ is Head:
                    watched.enter(APP)
                    return event
                if event.__class__ is RejectedMethod:
                    start = event.start
                    raise as_http_error(event.error, self._method_token(start) if start else b"")
                if isinstance(event, HttpError):
                    raise event
            if not parser.head_open:
                # Parked: waiting for a next request, so a drain may end the connection. A new
                # one may have its first request in flight: a drain gives it a moment instead of
                # closing it at once, which failed that request (seen under load in restarts).
                if keepalive_deadline < 0.0:
                    keepalive_deadline = time.monotonic() + keepalive if keepalive else 0.0
                watched.enter(PARKED if self.served else FRESH, keepalive_deadline)
            elif parser.clock_due():
                timeout = self.handler.header_timeout
                watched.enter(HEAD, time.monotonic() + timeout if timeout else 0.0)
            # read here, not in a method of its own: one Python frame less per request
            sock = self.sock
            if self.served:
                data = sock.recv_after_wait(RECV_SIZE)
            else:
                data = sock.recv(RECV_SIZE)
                if data[:16] == H2_PREFACE_START and self.handler.http2 is not None:
                    raise _Http2Preface(data)
            if not data:
                return None
            parser.feed(data)

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
            self.watched.enter(BODY, time.monotonic() + timeout if timeout else 0.0)
            try:
                data = self.sock.recv(RECV_SIZE)
            finally:
                self.watched.enter(APP)
            if not data:
                raise ConnectionError("client closed during the request body")
            self.parser.feed(data)
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
        keepalive = float(handler.keepalive_timeout)  # (a float: what SERVE_PLAIN takes)
        parser = self.parser
        sock = self.sock
        corks = sock.__class__ is CountingSocket  # plaintext (TlsSocket writes its own way)
        while not parser.upgrading:
            # From the second request on, C runs this loop while each request is plain, and
            # hands back (True) what it declines, still queued, before touching it.
            if SERVE_PLAIN is not None and self.served and not SERVE_PLAIN(self, keepalive):
                return
            try:
                head = self.next_head(keepalive)
            except HttpError as exc:
                self.send_error(exc.status, str(exc))
                return
            except _Http2Preface as preface:
                if not handler.http2.prior_knowledge_from(self, preface.data):
                    self.send_error(400, "HTTP/2 without TLS is accepted only from trusted proxies")
                return
            if head is None:
                return
            http2 = handler.http2
            if head.upgrade and http2 is not None and http2.upgrade_from(self, head):
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
                queued = queue_wait(
                    start,
                    self.trusted_peer,
                    stats.request_start_ignored,
                    self.watched.accepted_at if self.served == 0 else None,
                )
                if queued is not None:
                    handler.queue_times.observe(queued)
                    if handler.max_queue_time and queued > handler.max_queue_time:
                        self.shed(head, "queue_time")
                        return
            # A WebSocket session is no request in flight: it would hold the limit for hours.
            counted = not head.upgrade
            stats.http_requests_in_flight += counted
            # Pipelined requests already read (a head behind this one's END): their responses
            # go out in one write (CountingSocket.cork), unless an app yields to the hub first.
            events = self.events
            if corks and len(events) > 1 and events[1].__class__ is Head and not head.upgrade:
                sock.cork()
            keep = False
            try:
                answer = RESPOND_PLAIN(self, head) if RESPOND_PLAIN is not None else NotImplemented
                keep = self._respond(head) if answer is NotImplemented else answer
            finally:
                stats.http_requests_in_flight -= counted
                # an idle keep-alive connection keeps no request: the app's header list, ids
                self.response = None
                if corks and sock.out is not None:  # (TLS holds no writes: no ``out``)
                    self._send_held(head, keep)
            if not keep:
                return
            # Fairness (protocols/turns.py): only a request already read needs a step back;
            # reading the next one waits through the hub anyway (TLS: see TlsSocket._read).
            # The END of a request whose body the app never read is still queued: no request.
            while events and events[0] is END:
                del events[0]
            if events:
                take_turn(self.watched)

    def _send_held(self, head: Head, keep: bool) -> None:
        """serve's end of a request on a plain socket whose writes are held (``sock.out``: a
        corked batch, an Outbox): the last answer goes with the FIN; a batch's goes when the
        batch ends."""
        sock = self.sock
        if not keep and type(sock.out) is list and self._all_read(head):
            # the last answer on this connection, held by _run_app: out with the FIN
            held, sock.out = b"".join(sock.out), None
            with contextlib.suppress(OSError):
                sock.send_last(held)
        if sock.out is not None:
            events = self.events
            while events and events[0] is END:
                del events[0]
            if not keep or not events or events[0].__class__ is not Head:
                with contextlib.suppress(OSError):  # the client went: reads end it
                    sock.uncork()

    def send_early_hints(self, headers: list[tuple[str, str]]) -> None:
        """``wsgi.early_hints``: a 103 Early Hints (RFC 8297) before the response, on HTTP/1.1
        (an HTTP/1.0 client would take it for the answer)."""
        response = self.response
        if response is None or response.headers_sent or response.head.version != "1.1":
            return
        self.sock.sendall(early_hints_bytes(headers))

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
        self.response = writer = Response(
            self.sock, self.parser.upgrading, handler, head, request_id
        )
        self.continue_sent = False
        environ = handler.environ(head, body, self.base)
        # in the environ now: a long request (a WebSocket) need not keep both; a list, for the
        # trailer fields of a chunked body, which llhttp reports as headers after this point
        # (a head parsed in C has the empty list it was made with)
        if head.headers:
            head.headers = []
        environ["HTTP_X_REQUEST_ID"] = environ["greenserve.request_id"] = request_id
        if self.extra_environ:
            environ.update(self.extra_environ)
        if self.trusted_peer and head.forwarded:
            apply_forwarded(environ, handler.forwarded_allow)
        self.served += 1
        cell = self.request_cell
        if cell is None:
            cell = self.request_cell = RequestIdCell()
            REQUEST_ID.set(cell)  # once per connection: its greenlet's context is its own
        cell.id = request_id
        upgraded_at = (0, 0)
        clock = None
        if head.upgrade:  # a connection taken over is no request any more: no request clock
            upgraded_at = (self.watched.rx, self.watched.tx)
            self._upgrade(environ)
            handler.upgrades.begin(Taken(self.watched, writer, environ))
        elif handler.request_timeout:
            clock = self.clock = self.clock or RequestClock(self.sock, handler.request_timeout)
            clock.start()
        try:
            keep = self._run_app(head, body, writer, environ)
        except RequestTimeout:
            keep = False
        finally:
            if head.upgrade:
                websocket = environ.get("wsgi.websocket")
                if websocket is not None:
                    websocket.finish()
                    websocket.drain()
                handler.upgrades.end(self.watched)
            if clock is not None:
                clock.stop()
            cell.id = None
        duration = time.perf_counter() - started
        stack = clock.reported() if clock is not None else None
        if stack is not None:
            self._timed_out(head, environ, writer, duration, stack)
            return False
        if keep is None:  # taken over, failed (answered), or cut short
            self._unfinished(head, environ, writer, duration, upgraded_at)
            return False
        handler.responded(self.address, environ, writer, duration)
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

    def _upgrade(self, environ: dict[str, Any]) -> None:
        """An Upgrade request: the app may take the connection over."""
        # What Flask-Sock, simple-websocket and python-socketio (gevent mode) look for: the
        # connection's socket, to answer the handshake and speak WebSocket on it themselves.
        environ["gunicorn.socket"] = self.sock
        self.parser.release()  # no HTTP after this request: its END is already queued
        self.base.clear()  # nor another environ: 832 bytes less per WebSocket
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            self.watched.enter(UPGRADED)
            return
        self.watched.enter(WEBSOCKET)  # a stop speaks to its library in frames
        handler = self.handler
        environ["wsgi.websocket"] = WebSocket(
            self.sock,
            environ,
            handler.stats,
            handler.websockets,
            handler.ws_max_message,
            early=self.parser.upgrade_tail,
            send_buffer=handler.ws_send_buffer,
            send_timeout=handler.ws_send_timeout,
        )

    def _answered_as_far_as_sent(
        self, head: Head, environ: dict[str, Any], writer: Response, duration: float
    ) -> None:
        """A response cut short after its head went out: counted and logged with what was
        sent (the client sees a closed connection)."""
        self.handler.answered(
            self.address,
            head,
            environ,
            writer.status_code,
            writer.body_sent,
            duration,
            writer.request_id,
        )

    def _unfinished(
        self,
        head: Head,
        environ: dict[str, Any],
        writer: Response,
        duration: float,
        upgraded_at: tuple[int, int],
    ) -> None:
        """Account for a request ``_run_app`` did not finish: a connection taken over (one line
        per WebSocket session as it ends), or a response cut short after its head went out."""
        handler = self.handler
        request_id = writer.request_id
        if self._account_failure(head, environ, duration, request_id):
            return
        if head.upgrade and not writer.status:
            websocket = environ.get("wsgi.websocket")
            if websocket is not None and not websocket.started:
                websocket = None  # offered, not used: the app answered on gunicorn.socket
            refused = websocket.refused if websocket is not None else 0
            if refused:  # the handshake was answered with an error status
                handler.answered(self.address, head, environ, refused, 0, duration, request_id)
            if not refused and handler.access_log:
                watched = self.watched
                handler.log.info(
                    "websocket",
                    path=environ["PATH_INFO"],
                    kind="wsgi.websocket" if websocket is not None else app_kind(environ),
                    duration_ms=round(duration * 1000, 3),
                    bytes_received=watched.rx - upgraded_at[0],
                    bytes_sent=watched.tx - upgraded_at[1],
                    close_code=websocket.close_code if websocket is not None else None,
                    peer=_peer(self.address),
                    request_id=request_id,
                )
        elif writer.headers_sent:
            self._answered_as_far_as_sent(head, environ, writer, duration)

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
                self._failed(exc.status, str(exc), writer, head)
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
                if not head.keep_alive and result.__class__ in _PLAIN and self._all_read(head):
                    # The connection closes after this answer (Connection: close, HTTP/1.0: an
                    # nginx upstream by default). A body already in memory is held until the
                    # close, to leave with the FIN in one segment (serve sends it): hello
                    # answered 13.2k -> 15.9k times per CPU-second on such connections.
                    self.sock.cork()
            if not (isinstance(result, FileWrapper) and writer.try_sendfile(result)):
                for chunk in result:
                    writer.write(chunk)
            writer.finish()
        except Exception as exc:
            self.app_raised(exc, head, environ, writer)
            return None
        finally:
            if result is not None and hasattr(result, "close"):
                self.close_body(result)
        return True

    # The two rules below are _run_app's and _cycle.c's alike (one definition).

    def app_raised(
        self, exc: Exception, head: Head, environ: dict[str, Any], writer: Response
    ) -> None:
        """The app, its body or its response raised ``exc``: answered if it still can be,
        counted and logged; the connection does not go on (_run_app returns None)."""
        handler = self.handler
        if isinstance(exc, HttpError):  # raised while the app read its body (413)
            if not writer.headers_sent:
                self._failed(exc.status, str(exc), writer, head)
            return
        if isinstance(exc, ConnectionError):
            return
        clock = self.clock
        if clock is not None and clock.stack is not None:
            return  # a consequence of the timeout (the socket was shut): reported there
        if head.upgrade and not writer.status:
            # How Flask-Sock ends a connection it took over under gunicorn (StopIteration):
            # the WebSocket is closed, and no HTTP response may follow it.
            handler.stats.connections_upgraded += 1
            return
        handler.stats.handler_errors += 1
        handler.log.error(
            "app_error",
            method=head.method.decode("latin-1"),
            path=environ.get("PATH_INFO"),
            exc_info=exc,
        )
        if writer.headers_sent:
            return  # half a response is out: only closing can signal the failure
        self._failed(500, "the application raised an exception", writer, head)

    def close_body(self, result: Any) -> None:
        """PEP 3333: the body's close(), always; its failure is logged, not the request's."""
        try:
            result.close()
        except Exception as exc:
            self.handler.log.error("app_close_error", exc_info=exc)

    def _timed_out(
        self, head: Head, environ: dict[str, Any], writer: Response, duration: float, stack: str
    ) -> None:
        """Report a request stopped by --request-timeout: 504 if nothing was sent, else close."""
        handler = self.handler
        request_id = writer.request_id
        self.failure = None  # a failure the timeout caused is reported here
        handler.stats.http_request_timeouts += 1
        handler.log.warning(
            "request_timeout",
            method=head.method.decode("latin-1"),
            path=environ["PATH_INFO"],
            elapsed_s=round(duration, 3),
            timeout_s=handler.request_timeout,
            request_id=request_id,
            response_started=writer.headers_sent,
            stack=stack,
        )
        if not writer.headers_sent:
            self.send_error(
                504,
                "the application did not answer within --request-timeout",
                request_id,
                head,
                duration,
                environ=environ,
            )
        else:
            self._answered_as_far_as_sent(head, environ, writer, duration)


if CYCLE_C is not None:
    CYCLE_C.configure(
        Response, EMPTY_INPUT, FileWrapper, HttpConnection, Head, RequestIdCell, STATUS_KEYS,
        RequestParser, Histogram, WorkerStats, apply_forwarded,
    )  # fmt: skip
    CYCLE_C.configure_serve(
        CountingSocket, END, take_turn, APP, PARKED, RECV_SIZE, vars(http_parser), getcurrent,
        InvalidSwitchError,
    )  # fmt: skip
