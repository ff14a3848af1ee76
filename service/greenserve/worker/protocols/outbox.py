"""What a WebSocket could not write at once, held for a peer that reads slower than the app sends.

gevent-websocket's ``send`` waited in ``sendall`` until the peer's socket took the frame, with no
limit: a loop broadcasting to many WebSockets stalled behind the first peer that stopped
reading, for as long as that peer stayed connected. Here a write the socket does not take whole
is held, in order, and a greenlet of the connection's writes it out as the peer reads; the
sender goes on at once. The held bytes are bounded: ``WebSocket.send`` waits for room while
they are at ``--ws-send-buffer``, at most ``--ws-send-timeout``, and then closes the WebSocket
with 1013 (try again later), counted in ``greenserve_websocket_slow_closes_total``. So an app
streaming faster than a healthy peer reads is slowed as before, and a peer that stops reading
costs at most the buffer.

It sits under the TLS layer (``CountingSocket.out``, where a corked batch's writes wait too), so
every byte of the connection goes through it in the order it was made: ciphertext included,
and the TLS records a read produces (a key update) cannot overtake a held frame.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.event import Event

_gevent_sendall = gsocket.socket.sendall


class Outbox:
    """Bytes held for one socket, and the greenlet writing them; the socket writes directly
    again once they are out."""

    __slots__ = ("error", "held", "room", "size", "sock", "writer")

    def __init__(self, sock: Any, first: bytes) -> None:
        self.sock = sock
        self.held: deque[bytes] = deque((first,))
        self.size = len(first)
        self.room = Event()  # set each time held bytes went out
        self.error: OSError | None = None
        self.writer = gevent.spawn(self._write)

    def append(self, data: Any) -> None:
        """A write while bytes are held: behind them (``CountingSocket.sendall``)."""
        if self.error is not None:
            raise self.error  # the peer is gone: as a direct write would have failed
        data = bytes(data)  # the caller may reuse its buffer
        self.held.append(data)
        self.size += len(data)

    def _write(self) -> None:
        sock, held = self.sock, self.held
        try:
            while held:
                data = held[0]
                _gevent_sendall(sock, data)  # counted through CountingSocket.send
                held.popleft()
                self.size -= len(data)
                self.room.set()
        except OSError as exc:
            self.error = exc
            held.clear()
            self.size = 0
            self.room.set()
            return
        sock.out = None  # all out, and nothing can be appended before this line: write directly

    def wait_room(self, need: int, limit: int, timeout: float) -> bool:
        """Wait until ``need`` more bytes fit under ``limit`` (or nothing is held); False if
        that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.size and self.size + need > limit and self.error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.room.clear()
            self.room.wait(left)
        return True

    def drain(self, timeout: float) -> None:
        """The connection is ending: give the held bytes ``timeout`` to go out, then drop them."""
        self.writer.join(timeout)
        if not self.writer.dead:
            self.writer.kill()
