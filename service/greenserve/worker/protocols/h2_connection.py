"""HTTP/2 connections (RFC 9113) with the ``h2`` sans-I/O library: a greenlet per stream.

The connection's own greenlet reads frames and feeds h2; each request's app runs in a greenlet
of its own (h2_stream.py), so a slow handler holds up only its stream. Every greenlet changes
h2's state between two yields and then calls ``flush``: one of them at a time writes what h2
has queued, and a greenlet that finds a write in progress leaves its frames to that writer.

Limits on what a client can make the worker do, each counted on /metrics: the streams running
an app (SETTINGS_MAX_CONCURRENT_STREAMS, counted by our greenlets, not by h2's stream states,
so a reset stream whose app still runs holds its place: CVE-2023-44487's rapid reset), resets
and control frames (PING, SETTINGS) per second, the header block (h2 refuses more than 64
CONTINUATION frames and decodes at most SETTINGS_MAX_HEADER_LIST_SIZE: CVE-2024-27316's flood
and HPACK bombs), a window that stays shut (--http2-send-timeout), and a request body that
stops (--header-timeout per wait).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, FlowControlError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from h2.settings import Settings as H2Settings

from greenserve.config import H2_MAX_WINDOW, Settings
from greenserve.worker.protocols.h2_fields import request_head
from greenserve.worker.protocols.h2_hpack import BlockDecoder, FieldEncoder
from greenserve.worker.protocols.h2_stream import Stream, StreamGone
from greenserve.worker.protocols.http_parser import Head
from greenserve.worker.protocols.llhttp import HttpError
from greenserve.worker.protocols.phase import APP, FRESH, PARKED

if TYPE_CHECKING:
    from greenserve.worker.protocols.http import HttpConnection
    from greenserve.worker.protocols.http_handler import HttpHandler

SWITCHING_TO_H2C = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
)
H2C_FIELDS = ("HTTP_UPGRADE", "HTTP_HTTP2_SETTINGS", "HTTP_CONNECTION")  # stream 1 has none
RECV_SIZE = 65536
RATE_WINDOW = 1.0  # seconds over which resets and control frames are counted
MAX_CONTROL_RATE = 500  # PING and SETTINGS frames per RATE_WINDOW: far above any real client
MIN_RESET_RATE = 200  # resets per RATE_WINDOW allowed at least (more with a higher stream limit)


def graceful_goaway(last_stream_id: int) -> bytes:
    """A GOAWAY frame with NO_ERROR (RFC 9113 6.8): streams up to ``last_stream_id`` finish."""
    payload = struct.pack(">II", last_stream_id & 0x7FFFFFFF, ErrorCodes.NO_ERROR)
    return struct.pack(">I", len(payload))[1:] + b"\x07\x00\x00\x00\x00\x00" + payload


def server_engine(max_streams: int, window: int, max_header_list: int) -> H2Connection:
    """h2's server side of one connection as greenserve runs it (tests/bench/h2_floor.py
    measures this one): its settings from --http2-max-concurrent-streams,
    --http2-initial-window-size and --http2-max-header-list-size, no server push."""
    config = H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,  # h2_fields.request_head checks them, faster
        normalize_inbound_headers=False,  # cookies are joined there too
        validate_outbound_headers=False,  # StreamResponse checked every field already
        normalize_outbound_headers=False,
    )
    h2 = H2Connection(config=config)
    # hpack's own, with less CPU per stream and the same fields (h2_hpack.py)
    h2.encoder = FieldEncoder()
    h2.decoder = BlockDecoder(h2.decoder.max_header_list_size)
    h2.local_settings = H2Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: window,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
            SettingCodes.ENABLE_PUSH: 0,
        },
    )
    return h2


class Http2:
    """What the HTTP/2 connections of one listener share: settings and the open ones."""

    def __init__(self, handler: HttpHandler, settings: Settings) -> None:
        self.handler = handler
        self.stats = handler.stats
        cleartext = settings.http2_cleartext
        self.prior_knowledge = cleartext in ("prior-knowledge", "both")
        self.upgrade = cleartext in ("upgrade", "both")
        self.max_streams = settings.http2_max_concurrent_streams
        self.window = settings.http2_initial_window_size
        self.max_header_list = settings.http2_max_header_list_size
        self.send_timeout = settings.http2_send_timeout
        self.body_timeout = settings.header_timeout
        self.keepalive = settings.keepalive_timeout
        self.max_resets = max(MIN_RESET_RATE, 2 * self.max_streams)
        self.open: set[Http2Connection] = set()

    def serve(
        self,
        sock: Any,
        address: Any,
        negotiation: str,
        *,
        trusted: bool,
        extra_environ: dict[str, str] | None = None,
        first: bytes = b"",
        upgraded: Any = None,
    ) -> None:
        """Serve one connection in HTTP/2 until it ends. ``upgraded``: the HTTP/1.1 request
        (a Head) whose Upgrade: h2c made it so, answered as stream 1."""
        counts = self.stats.http2_connections
        counts[negotiation] = counts.get(negotiation, 0) + 1
        connection = Http2Connection(self, sock, address, trusted, extra_environ)
        self.open.add(connection)
        try:
            connection.run(first, upgraded)
        finally:
            self.open.discard(connection)

    def prior_knowledge_from(self, connection: HttpConnection, data: bytes) -> bool:
        """A client that starts in HTTP/2 without TLS: served if --http2-cleartext allows it
        and the peer is a trusted proxy; False (counted): the caller answers 400."""
        if self.prior_knowledge and connection.trusted_peer:
            self.serve(connection.sock, connection.address, "prior_knowledge", trusted=True,
                       first=data)  # fmt: skip
            return True
        if self.prior_knowledge:
            self.refuse_untrusted()
        return False

    def upgrade_from(self, connection: HttpConnection, head: Head) -> bool:
        """``Upgrade: h2c`` (--http2-cleartext upgrade) from a trusted peer: 101, then this
        request is stream 1 of an HTTP/2 connection. False: served in HTTP/1.1 (RFC 9110 7.8
        lets a server ignore an Upgrade), as for a request with a body."""
        fields = dict(head.headers)
        settings = fields.get("HTTP_HTTP2_SETTINGS")
        if fields.get("HTTP_UPGRADE", b"").strip().lower() != b"h2c" or settings is None:
            return False
        if not (self.upgrade and connection.trusted_peer):
            if self.upgrade:
                self.refuse_untrusted()
            return False
        if head.content_length or head.chunked:
            return False
        connection.sock.sendall(SWITCHING_TO_H2C)
        tail = connection.parser.upgrade_tail
        connection.parser.release()
        head.headers = [(key, value) for key, value in head.headers if key not in H2C_FIELDS]
        head.version, head.upgrade = "2", False
        self.serve(
            connection.sock,
            connection.address,
            "upgrade",
            trusted=True,
            extra_environ=connection.extra_environ,
            first=tail,
            upgraded=(head, settings.decode("latin-1")),
        )
        return True

    def goaway_all(self) -> None:
        """A graceful stop or reload: no new streams; the ones in flight finish."""
        for connection in list(self.open):
            connection.goaway()

    def refuse_untrusted(self) -> None:
        counts = self.stats.http2_connection_errors
        counts["untrusted_h2c"] = counts.get("untrusted_h2c", 0) + 1


class Http2Connection:
    """One HTTP/2 connection: the reader (its own greenlet), the writer, the streams."""

    def __init__(
        self,
        server: Http2,
        sock: Any,
        address: Any,
        trusted: bool,
        extra_environ: dict[str, str] | None,
    ) -> None:
        self.server = server
        self.handler = server.handler
        self.sock = sock
        self.watched = sock.watched
        self.address = address
        self.base = self.handler.connection_environ(address)  # each stream's environ's base
        self.trusted_peer = trusted
        self.extra_environ = extra_environ
        self.h2 = server_engine(server.max_streams, server.window, server.max_header_list)
        self.streams: dict[int, Stream] = {}  # running an app, reset or not
        self.writing = False  # the writer is in sendall
        self.written = Event()  # set while it is not
        self.written.set()
        self.due = False  # frames queued since the writer last looked
        self.wake = Event()
        self.lost = False  # the socket failed or closed: no more writes
        self.closing = False  # GOAWAY sent or received: no new streams
        self.goaway_frame = b""  # a graceful GOAWAY, for the next flush
        self.served = 0
        self.rate_start = 0.0
        self.resets = 0
        self.controls = 0

    # -- the reader ---------------------------------------------------------------------------

    def run(self, first: bytes, upgraded: Any) -> None:
        h2 = self.h2
        server = self.server
        if upgraded is not None:
            head, settings = upgraded
            h2.initiate_upgrade_connection(settings)
        else:
            h2.initiate_connection()
        # The connection's window covers every stream's: one stream whose app does not read
        # its body cannot stall the others' uploads.
        extra = min(server.window * server.max_streams, H2_MAX_WINDOW) - 65535
        if extra > 0:
            h2.increment_flow_control_window(extra)
        writer = gevent.spawn(self._write_loop)
        try:
            self.flush()
            if upgraded is not None:
                self._start_stream(1, head, ended=True)
            data = first
            while True:
                if data and not self._receive(data):
                    break
                if self.writing:  # a client that does not read gets no more of our work
                    self.written.wait()
                if self.closing and not self.streams:
                    break
                if self.streams:
                    self.watched.enter(APP)
                else:
                    keepalive = server.keepalive
                    deadline = time.monotonic() + keepalive if keepalive else 0.0
                    self.watched.enter(PARKED if self.served else FRESH, deadline)
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    break
        except OSError:
            pass
        except gevent.GreenletExit:
            # the worker's drain timed out: the streams' apps end with the connection
            gevent.killall([s.greenlet for s in self.streams.values()], block=False)
            self.lost = True
            raise
        finally:
            if not self.lost:  # a GOAWAY, the last frames
                self._write_now()
            self.lost = True
            writer.kill(block=False)
            for stream in list(self.streams.values()):
                stream.reset(-1)
        # The apps still running finish first (bounded by --request-timeout or the drain).
        running = [s.greenlet for s in self.streams.values() if s.greenlet is not None]
        if running:
            gevent.joinall(running)

    def _receive(self, data: bytes) -> bool:
        """Feed one read to h2 and act on its events; False once the connection must end."""
        try:
            events: list[Any] = self.h2.receive_data(data)
        except ProtocolError as exc:  # h2 queued a GOAWAY with its code (not for the preface)
            text = str(exc).lower()
            if "preamble" in text:  # raised before h2 reads a frame: no GOAWAY queued yet
                return self._fail("bad_preface", ErrorCodes.PROTOCOL_ERROR)
            if isinstance(exc, DenialOfServiceError) or "continuation" in text:
                return self._fail("header_limit", None)  # an HPACK bomb, or > 64 CONTINUATION
            return self._fail("protocol", None)
        for event in events:
            kind = event.__class__
            if kind is DataReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None and not stream.gone:
                    stream.data(event.data, event.flow_controlled_length)
                    if event.stream_ended is not None:
                        stream.end_body()
                else:  # a stream we no longer read: its bytes still count against the window
                    self.acknowledge(event.stream_id, event.flow_controlled_length)
            elif kind is RequestReceived:
                self._request(event)
            elif kind is WindowUpdated:
                if event.stream_id:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.window.set()
                else:
                    self._wake_writers()
            elif kind is StreamEnded or kind is TrailersReceived:
                # trailers are not given to the app (PEP 3333 has no place for them)
                stream = self.streams.get(event.stream_id)
                if stream is not None and (kind is StreamEnded or event.stream_ended):
                    stream.end_body()
            elif kind is StreamReset:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.reset(event.error_code)
                if event.remote_reset:
                    self.count_reset("client")
                    self.resets += 1
                    if self._over_rate() and self.resets > self.server.max_resets:
                        return self._fail("rapid_reset", ErrorCodes.ENHANCE_YOUR_CALM)
            elif kind is PingReceived or kind is RemoteSettingsChanged:
                self.controls += 1
                if self._over_rate() and self.controls > MAX_CONTROL_RATE:
                    return self._fail("control_flood", ErrorCodes.ENHANCE_YOUR_CALM)
                if kind is RemoteSettingsChanged:
                    self._wake_writers()  # a new initial window or frame size
            elif kind is ConnectionTerminated:
                self.closing = True
                if event.error_code:
                    return False
        self.flush()
        return True

    def _over_rate(self) -> bool:
        """Whether the counts belong to the current RATE_WINDOW (else they start again)."""
        now = time.monotonic()
        if now - self.rate_start > RATE_WINDOW:
            self.rate_start = now
            self.resets = self.controls = 0
            return False
        return True

    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if self.closing or len(self.streams) >= self.server.max_streams:
            # After GOAWAY, or every slot held by an app (reset streams included): the
            # client may retry REFUSED_STREAM on another connection, nothing was processed.
            self._refuse(stream_id)
            return
        error = None
        try:
            head = request_head(event.headers)
        except HttpError as exc:  # answered on the stream, without the app
            head, error = Head(), (exc.status, str(exc))
        self._start_stream(stream_id, head, event.stream_ended is not None, error)

    def _start_stream(
        self, stream_id: int, head: Head, ended: bool, error: tuple[int, str] | None = None
    ) -> Stream:
        if not ended and head.content_length is None:
            head.chunked = True  # a body of unknown length: read whole, as for HTTP/1.1
        stream = Stream(self, stream_id, head, ended)
        stream.error = error
        self.streams[stream_id] = stream
        self.served += 1
        self.handler.stats.http2_streams += 1
        stream.greenlet = gevent.spawn(stream.run)
        return stream

    def _refuse(self, stream_id: int) -> None:
        with contextlib.suppress(StreamClosedError, ProtocolError):
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
        self.count_reset("refused")

    def _fail(self, reason: str, code: int | None) -> bool:
        """A connection error: GOAWAY with ``code`` (None: h2 queued one already), counted;
        the connection ends."""
        counts = self.handler.stats.http2_connection_errors
        counts[reason] = counts.get(reason, 0) + 1
        self.closing = True
        if code is not None:
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection(error_code=code)
        with contextlib.suppress(OSError, ConnectionError):
            self.flush()
        for stream in list(self.streams.values()):
            stream.reset(code or -1)
        return False

    def goaway(self) -> None:
        """No new streams (a stop or reload); the streams in flight finish, then the
        connection closes. The client opens its next streams on a new connection."""
        if self.closing or self.lost:
            return
        self.closing = True
        # By hand: h2's close_connection closes its state machine, and the streams in flight
        # could send nothing more. New streams are refused by _request from here on.
        self.goaway_frame = graceful_goaway(self.h2.highest_inbound_stream_id)
        with contextlib.suppress(OSError, ConnectionError):
            self.flush()
        if not self.streams:
            self._end_idle()

    def _end_idle(self) -> None:
        """Nothing in flight after GOAWAY: end the reader's wait (a FIN after the GOAWAY)."""
        self._write_now()
        with contextlib.suppress(OSError):
            self.watched._sock.shutdown(socket.SHUT_RDWR)

    # -- for the streams ----------------------------------------------------------------------

    def stream_done(self, stream: Stream) -> None:
        """The stream's app returned; its queued body bytes give their window back."""
        self.streams.pop(stream.stream_id, None)
        if stream.unread:
            self.acknowledge(stream.stream_id, stream.unread)
            stream.unread = 0
        if not stream.gone and not stream.body_done:
            # RFC 9113 8.1: the response is complete; the rest of the body is not wanted
            with contextlib.suppress(StreamClosedError, ProtocolError):
                self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
        with contextlib.suppress(OSError, ConnectionError):
            self.flush()
        if self.closing and not self.streams and not self.lost:
            self._end_idle()

    def count_reset(self, reason: str) -> None:
        counts = self.handler.stats.http2_streams_reset
        counts[reason] = counts.get(reason, 0) + 1

    def reset_stream(self, stream: Stream, reason: str) -> None:
        """Reset ``stream`` from our side (INTERNAL_ERROR, or CANCEL for a stall)."""
        if stream.gone:
            return
        code = ErrorCodes.CANCEL if reason == "stall" else ErrorCodes.INTERNAL_ERROR
        stream.reset(code)
        if reason:
            self.count_reset(reason)
        with contextlib.suppress(StreamClosedError, ProtocolError):
            self.h2.reset_stream(stream.stream_id, code)
        with contextlib.suppress(OSError, ConnectionError):
            self.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The app read ``size`` flow-controlled bytes: the client may send as much again."""
        if size and not self.lost:
            with contextlib.suppress(ProtocolError):
                self.h2.acknowledge_received_data(size, stream_id)
            self.flush()

    def send_fields(self, stream: Stream, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        if stream.gone:
            raise StreamGone("the stream was reset")
        try:
            self.h2.send_headers(stream.stream_id, fields, end_stream=end)
        except (StreamClosedError, ProtocolError):
            raise StreamGone("the stream was reset") from None
        self.flush()

    def send_body(self, stream: Stream, data: bytes, end: bool) -> None:
        """DATA frames as the client's flow-control windows allow; waits while they are shut
        (at most --http2-send-timeout, then the stream is reset as stalled)."""
        h2 = self.h2
        stream_id = stream.stream_id
        offset, total = 0, len(data)
        while True:
            if stream.gone:
                raise StreamGone("the stream was reset")
            try:
                window = h2.local_flow_control_window(stream_id)
            except (StreamClosedError, ProtocolError):
                raise StreamGone("the stream was reset") from None
            size = min(window, h2.max_outbound_frame_size, total - offset)
            if size > 0 or offset == total:
                last = offset + size == total
                try:
                    h2.send_data(stream_id, data[offset : offset + size], end_stream=end and last)
                except (StreamClosedError, FlowControlError, ProtocolError):
                    raise StreamGone("the stream was reset") from None
                offset += size
                if last:
                    self.flush()
                    return
                if offset % (4 * 16384) < size:
                    # every 64 KiB or so: the writer sends, and this greenlet waits for it (a
                    # client's large window must not become a large buffer here)
                    self.flush()
                    gevent.sleep(0)
                    while self.writing:
                        self.written.wait()
                    if self.lost:
                        raise StreamGone("the connection is closed")
                continue
            self.flush()
            stream.window.clear()
            timeout = self.server.send_timeout or None
            if not stream.window.wait(timeout):
                self.reset_stream(stream, "stall")
                raise StreamGone("the client's flow-control window stayed shut")

    def _wake_writers(self) -> None:
        for stream in self.streams.values():
            stream.window.set()

    def flush(self) -> None:
        """What h2 has queued goes out once the calling greenlet yields: the writer greenlet
        sends every stream's frames of one turn of the loop in one write (one TLS record and
        one syscall for ten responses, not twenty)."""
        if self.lost:
            raise ConnectionError("the HTTP/2 connection is closed")
        if not self.due:
            self.due = True
            self.wake.set()

    def _write_loop(self) -> None:
        """The writer greenlet: one per connection, for as long as it lives."""
        wake = self.wake
        while not self.lost:
            wake.wait()
            wake.clear()
            self._write_once()

    def _write_now(self) -> None:
        """Write what is queued before the caller goes on (a GOAWAY before a shutdown)."""
        while self.writing:
            self.written.wait()
        self._write_once()

    def _write_once(self) -> None:
        self.due = False
        data = self.h2.data_to_send()
        if self.goaway_frame:  # between two of h2's frames
            data, self.goaway_frame = data + self.goaway_frame, b""
        if not data or self.lost:
            return
        self.writing = True
        self.written.clear()
        try:
            self.sock.sendall(data)
        except OSError:
            self.lost = True
            for stream in list(self.streams.values()):
                stream.reset(-1)
            with contextlib.suppress(OSError):  # the reader sees the end too
                self.watched._sock.shutdown(socket.SHUT_RDWR)
        finally:
            self.writing = False
            self.written.set()
