"""``environ["wsgi.websocket"]``: gevent-websocket's API, on the Sans-I/O layer of ``websockets``.

Flask-Sockets and older Socket.IO setups call ``receive()``, ``send()``, ``close()`` and read
``closed`` on an object the server put in the environ. gevent-websocket, which provided it, is
unmaintained since 2017; this one frames with ``websockets`` (C-accelerated masking), chosen by
measurement over wsproto: 4.6 us against 13.0 us of CPU per 64-byte message echoed (parse, unmask,
reply; the script that measured it was not kept: ``tests/bench/ws.py`` compares whole servers).

The handshake happens on first use, so an app that answers the Upgrade itself on
``gunicorn.socket`` (Flask-Sock, python-socketio) never meets this object. A bad handshake gets
``websockets``' own answer (426 with the supported version, 400 for a missing key) and the object
reads as closed. Pings are answered by the protocol object; a message over ``max_size`` closes
with 1009, a protocol error with its RFC 6455 code. A graceful stop closes every open one with
1001 (going away) through ``close``; writes hold a lock so that frame never lands inside another.
A write the peer does not take at once is held (outbox.py), up to ``--ws-send-buffer``.
"""

from __future__ import annotations

import base64
import contextlib
import socket
from typing import Any

from gevent.lock import Semaphore
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

from greenserve.metrics.stats import WorkerStats
from greenserve.worker.protocols.outbox import Outbox
from greenserve.worker.protocols.turns import take_turn

RECV_SIZE = 65536
# The fast path (see ``_feed``) takes whole single-frame messages up to this size; a longer one
# goes to the engine as it arrives rather than waiting in our buffer.
FAST_LIMIT = 65536
PING = b"\x89\x0agreenserve"  # FIN, ping, 10 bytes unmasked (a server does not mask)
_OPEN = State.OPEN
# The engine's size of a fragmented message in progress (None between messages): ``cur_size``
# up to websockets 15, ``current_size`` since.
_FRAGMENTED = next(
    name for name in ("current_size", "cur_size") if hasattr(ServerProtocol(state=_OPEN), name)
)


class WebSocket:
    """One server-side WebSocket over an HTTP connection that asked to upgrade."""

    def __init__(
        self,
        sock: Any,
        environ: dict[str, Any],
        stats: WorkerStats,
        registry: set[WebSocket],
        max_size: int | None,
        early: bytes = b"",
        send_buffer: int = 1 << 20,
        send_timeout: float = 10.0,
    ) -> None:
        """``early``: bytes that came with the handshake, read before it was answered;
        ``send_buffer`` and ``send_timeout``: --ws-send-buffer and --ws-send-timeout."""
        self.sock = sock
        self.raw = sock.watched  # the socket under TLS, where held bytes wait (read per send)
        self.environ = environ
        self.stats = stats
        self.registry = registry
        self.max_size = max_size
        self.send_buffer = send_buffer
        self.send_timeout = send_timeout
        # The frame engine (``websockets``' ServerProtocol, about 1.4 KiB) is made only when a
        # frame needs it (_engine): a control frame other than a pong, a fragment, a long
        # message, a close or a failure. A WebSocket that only ever exchanges whole short
        # messages (and pings and pongs), and every idle one, has none: the fast path frames
        # those itself and they leave an engine's state as it was. None: no engine yet (its
        # state would be OPEN, with no fragment in progress).
        self.engine: ServerProtocol | None = None
        self.lock = Semaphore()  # writers: the app, the pinger, a stop (Cython, not RLock)
        self.started = False
        self.opened = False  # the handshake was answered with 101
        self.done = False
        self.refused = 0  # the status of a refused handshake (426, 400), for the access log
        self.close_code: int | None = None  # once finished: the peer's close code, or 1006
        self.pending: list[str | bytes] = []
        self.fragments: list[bytes | bytearray | memoryview] = []
        self.fragment_opcode: Opcode | None = None
        self.failed = False  # we failed the connection: no reply is awaited
        self.awaiting_pong = False  # --ws-ping-interval: a ping is out, no pong yet
        # received, not yet framed: the early bytes, or frames behind the last message
        self.buffer: bytes | bytearray = bytearray(early) if early else b""
        self.more = bool(early)  # whole frames may wait in the buffer
        self.owed = 0  # bytes of the current frame the engine still needs (0: at a boundary)

    # gevent-websocket's attributes
    @property
    def path(self) -> str:
        return str(self.environ.get("PATH_INFO", ""))

    @property
    def origin(self) -> str | None:
        return self.environ.get("HTTP_ORIGIN")

    @property
    def protocol(self) -> str | None:
        """The subprotocol the client asked for (gevent-websocket's name)."""
        return self.environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL")

    @property
    def version(self) -> str | None:
        return self.environ.get("HTTP_SEC_WEBSOCKET_VERSION")

    @property
    def closed(self) -> bool:
        return self.done

    def _start(self) -> bool:
        """The handshake, once; False when it was refused (the answer is sent)."""
        if self.started:
            return not self.done
        self.started = True
        environ = self.environ
        refusal = _refusal(environ)
        if refusal is not None:
            with self.lock:
                self.sock.sendall(refusal)
            self.done = True
            self.refused = int(refusal[9:12])
            return False
        accept = accept_key(environ["HTTP_SEC_WEBSOCKET_KEY"].strip())
        with self.lock:
            self.sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
            )
        self.opened = True
        # From now on a write the peer does not take at once is held (outbox.py), not waited on
        self.raw.spill = True
        self.registry.add(self)
        self.stats.websocket_connections_active += 1
        self.stats.websocket_bytes_received += len(self.buffer)
        return True

    def _engine(self) -> ServerProtocol:
        """The frame engine, made on first need. It starts OPEN (the handshake was answered
        here: its parser never holds the request) and at a frame boundary, where every caller
        uses it first: whatever the fast path framed before left its state unchanged."""
        engine = self.engine
        if engine is None:
            engine = self.engine = ServerProtocol(state=State.OPEN, max_size=self.max_size)
        return engine

    def _flush(self) -> None:
        data = b"".join(self._engine().data_to_send())
        if data:
            with self.lock:
                self.sock.sendall(data)

    def receive(self) -> str | bytes | None:
        """The next message (str for text, bytes for binary), or None once the socket closed."""
        if not self._start():
            return None
        # Fairness (protocols/turns.py): a message already read is returned without a wait
        # (reads from the socket wait through the hub; TLS: see TlsSocket._read).
        if self.pending or self.more:
            take_turn(self.raw)
        while not self.pending:
            if self.done:
                return None
            eof = False
            if self.more:
                self.more = False
                self._feed(b"")  # frames already read: early, or behind the last message
            else:
                try:
                    # The peer usually has not answered yet: wait first, then one recv.
                    data = self.sock.recv_after_wait(RECV_SIZE)
                except OSError:
                    data = b""
                if data:
                    self.stats.websocket_bytes_received += len(data)
                    self._feed(data)
                else:
                    eof = True
                    if self.engine is not None:  # else nothing it would say or report
                        self.engine.receive_eof()
                        self._take_events()
            protocol = self.engine
            if protocol is None:
                closing = self.failed
            else:
                if protocol.writes:
                    self._flush()  # pongs, close replies, a 1009 or 1002 close
                closing = (
                    protocol.close_rcvd is not None
                    or protocol.state is State.CLOSED
                    or protocol.parser_exc is not None  # a protocol error: failed (7.1.7)
                    or self.failed
                )
            if closing or eof:
                # The closing handshake is complete (our reply is flushed): the server closes
                # the TCP connection now (RFC 6455 7.1.1), when the app returns.
                self.finish()
        return self.pending.pop(0)

    def _feed(self, data: bytes) -> None:
        """Frame ``data``: a whole unfragmented text or binary message is taken here, with one
        C call to unmask it; anything else (control frames, fragments, a message too long or
        arriving in pieces, any protocol error) goes to the engine, always from a frame boundary
        so its parser and ours agree on where each frame starts.

        Why: through the engine, a 64-byte echo cost more CPU in framing than in the socket
        calls (py-spy, ``tests/bench/ws.py``); the common message needs no generator, no Frame
        object and no event queue.
        """
        if self.buffer:
            # A frame arrived in pieces: collect in place (a client trickling a long message
            # byte by byte must not cost a copy of the whole buffer per byte).
            self.buffer += data
            buf = self.buffer
        else:
            buf = data
        end = len(buf)
        pos = 0
        engine = self.engine
        while pos < end:
            if self.pending and not self.owed:
                # One message at a time, as each arrived: a Close read with it waits until the
                # app asks again, so the app can still answer this message.
                self.more = True
                break
            if self.owed:
                take = min(self.owed, end - pos)
                if engine is None:  # the first frame that needs it, from its first byte
                    engine = self._engine()
                engine.receive_data(buf[pos : pos + take])
                self.owed -= take
                pos += take
                self._take_events()
                continue
            if end - pos < 2:
                break
            first, second = buf[pos], buf[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                head = 4
            elif length == 127:
                head = 10
            if second & 0x80:
                head += 4
            if end - pos < head:
                break
            if length == 126:
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            simple = (
                # FIN, no RSV bit: text or binary, or a pong of at most 125 bytes (the answer to
                # --ws-ping-interval's ping, which an idle WebSocket must not need an engine for)
                (first == 0x81 or first == 0x82 or (first == 0x8A and head == 6))
                and second & 0x80  # masked, as a client must
                and length <= FAST_LIMIT
                and (self.max_size is None or length <= self.max_size)
                and (
                    engine is None
                    # or open, with no fragmented message in progress
                    or (engine.state is _OPEN and getattr(engine, _FRAGMENTED) is None)
                )
                and not self.failed
            )
            if not simple:
                self.owed = head + length
                continue
            if end - pos < head + length:
                break  # the rest of a short message: wait for it here
            start = pos + head
            if first == 0x8A:  # a pong: its payload is not ours to check (RFC 6455 5.5.3)
                pos = start + length
                self.awaiting_pong = False
                continue
            payload = apply_mask(buf[start : start + length], buf[start - 4 : start])
            pos = start + length
            if not self._deliver(first == 0x81, payload):
                return
        if pos >= end:
            self.buffer = b""
        elif buf is self.buffer and isinstance(buf, bytearray):  # collected in place above
            del buf[:pos]
        else:
            self.buffer = bytearray(buf[pos:])

    def _deliver(self, text: bool, data: bytes) -> bool:
        """Queue one whole message; False when a text message is not UTF-8 (connection failed)."""
        self.stats.websocket_messages_received += 1
        if not text:
            self.pending.append(data)
            return True
        try:
            self.pending.append(data.decode())
        except UnicodeDecodeError:
            # RFC 6455 8.1: a text message that is not UTF-8 fails the connection.
            self._engine().fail(1007, "invalid UTF-8 in a text message")
            self.failed = True
            self.buffer = b""
            return False
        return True

    def _take_events(self) -> None:
        for frame in self._engine().events_received():
            assert isinstance(frame, Frame)  # a server-side engine past the handshake: frames
            opcode = frame.opcode
            if opcode in (Opcode.TEXT, Opcode.BINARY):
                self.fragment_opcode, self.fragments = opcode, [frame.data]
            elif opcode is Opcode.CONT:
                self.fragments.append(frame.data)
            else:
                if opcode is Opcode.PONG:
                    self.awaiting_pong = False
                continue  # PING and CLOSE are answered by the protocol object
            if frame.fin:
                data = b"".join(self.fragments)
                self.fragments = []
                if not self._deliver(self.fragment_opcode is Opcode.TEXT, data):
                    return

    def send(self, message: str | bytes, binary: bool | None = None) -> None:
        if not self._start() or self.done:
            raise ConnectionError("the WebSocket is closed")
        if isinstance(message, (bytes, bytearray)):
            is_bytes, payload = True, bytes(message)
        else:
            is_bytes, payload = False, str(message).encode()
        size = len(payload)
        engine = self.engine
        if engine is not None and engine.state is not _OPEN:
            raise ConnectionError("the WebSocket is closing")
        # The frame is built here (a server does not mask): the engine's Frame object and its
        # serializer cost more than the socket call for a short message. Its state is unchanged
        # by a whole unfragmented message, and its output queue is empty (flushed after each use).
        first = 0x82 if binary or (binary is None and is_bytes) else 0x81
        if size < 126:
            header = bytes((first, size))
        elif size < 65536:
            header = bytes((first, 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((first, 127)) + size.to_bytes(8, "big")
        held = self.raw.out
        if type(held) is Outbox and held.size + size > self.send_buffer:
            # the peer reads slower than the app sends: wait for room, as long as allowed
            if not held.wait_room(size, self.send_buffer, self.send_timeout):
                self._too_slow()
                raise ConnectionError(
                    "the peer reads too slowly: the WebSocket is closed (1013, --ws-send-buffer)"
                )
            engine = self.engine  # made meanwhile by a frame, a close or a ping
            if self.done or (engine is not None and engine.state is not _OPEN):
                raise ConnectionError("the WebSocket is closed")
        with self.lock:
            if size < 16384:
                self.sock.sendall(header + payload)
            else:  # no copy of a long payload just to join it
                self.sock.sendall(header)
                self.sock.sendall(payload)
        self.stats.websocket_messages_sent += 1
        self.stats.websocket_bytes_sent += size

    def _too_slow(self) -> None:
        """Close (1013, try again later) behind what is held, and end the app's ``receive``; the
        held bytes and the Close get ``drain``'s time to reach the peer if it reads again."""
        self.stats.websocket_slow_closes += 1
        self._engine().fail(1013, "the peer reads too slowly")
        self.failed = True
        with contextlib.suppress(OSError):
            self._flush()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)

    def drain(self) -> None:
        """The connection is ending: what is still held for the peer gets --ws-send-timeout."""
        held = self.raw.out
        if type(held) is Outbox:
            held.drain(self.send_timeout)

    def ping(self) -> None:
        """--ws-ping-interval: a peer that did not answer the last ping is gone; else ping."""
        if not self._open():
            return
        if self.awaiting_pong:
            self._engine().fail(1011, "no answer to ping")
            self.failed = True
            try:
                self._flush()
            finally:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)  # the app's receive() ends now
            return
        self.awaiting_pong = True
        try:
            with self.lock:  # framed here, as send() does: no engine for a ping
                self.sock.sendall(PING)
        except OSError:
            self.finish()

    def close(self, code: int = 1000, message: bytes | str = b"") -> None:
        """Send a Close frame; ``receive`` then returns the peer's reply as None."""
        if not self._open():
            return
        reason = message.decode() if isinstance(message, bytes) else message
        self._engine().send_close(code, reason)
        try:
            self._flush()
        except OSError:
            self.finish()

    def _open(self) -> bool:
        """Handshake answered, not finished, and no close begun (the engine's state)."""
        if not self.started or self.done:
            return False
        engine = self.engine
        return engine is None or engine.state is State.OPEN

    def finish(self) -> None:
        """The connection is ending: account for this WebSocket once."""
        if self.done:
            return
        self.done = True
        if not self.opened:
            # Never opened: offered and not used (Flask-Sock and Flask-SocketIO take the raw
            # socket), or its handshake refused. No WebSocket of ours, so no close to count:
            # counting these as 1006 made every Flask-Sock session an abnormal close.
            return
        self.registry.discard(self)
        self.stats.websocket_connections_active -= 1
        engine = self.engine  # None: no Close frame came (it would have made one)
        code = engine.close_rcvd.code if engine is not None and engine.close_rcvd else 1006
        self.close_code = code
        closes = self.stats.websocket_closes
        key = str(code)
        closes[key] = closes.get(key, 0) + 1


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _refusal(environ: dict[str, Any]) -> bytes | None:
    """The answer to a handshake RFC 6455 4.2.1 refuses, or None for a valid one."""
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        # RFC 6455 4.4: 426 with the version this server speaks.
        return (
            b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
            b"Connection: close\r\nContent-Length: 0\r\n\r\n"
        )
    problem = None
    if environ.get("REQUEST_METHOD") != "GET":
        problem = "the method must be GET"
    elif "upgrade" not in _tokens(environ.get("HTTP_CONNECTION", "")):
        problem = "missing Connection: Upgrade"
    elif "websocket" not in _tokens(environ.get("HTTP_UPGRADE", "")):
        problem = "missing Upgrade: websocket"
    else:
        key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
        if key is None:
            problem = "missing Sec-WebSocket-Key header"
        else:
            try:
                valid = len(base64.b64decode(key.strip().encode("ascii"), validate=True)) == 16
            except (ValueError, UnicodeEncodeError):
                valid = False
            if not valid:
                problem = "invalid Sec-WebSocket-Key header"
    if problem is None:
        return None
    body = f"Failed to open a WebSocket connection: {problem}.\n".encode()
    return (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
