"""TLS over the worker's own counting sockets, with ssl.SSLObject and memory BIOs.

gevent's SSLSocket would replace the accepted CountingSocket with a socket of its own, losing the
byte counts the idle sweeper and the metrics read, and the deadlines the protocols set on it. Here
the CountingSocket keeps doing the I/O (encrypted bytes, so ``bytes_*`` count what crossed the
wire) and ``TlsSocket`` offers the same ``recv``/``sendall`` to the protocols. The state the
sweeper reads (phase and deadlines, phase.py) stays on the CountingSocket: ``watched`` names it,
for TLS and plaintext alike.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import time
from typing import Any

from greenserve.tls_context import subject_of
from greenserve.worker.protocols.phase import HANDSHAKE, OPEN
from greenserve.worker.protocols.turns import take_turn

_HTTP_START = re.compile(rb"[A-Z]{3,7} [^ ]")  # a plaintext request line: "GET /", "POST h"
PLAINTEXT_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 34\r\n\r\nThis port expects HTTPS, not HTTP\n"
)
RECORD = 16384 + 2048  # one TLS record with its overhead


class HandshakeFailed(Exception):
    """A TLS handshake that did not complete; ``reason`` is the metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TlsSocket:
    """A server-side TLS session on top of a CountingSocket."""

    __slots__ = ("engine", "first", "incoming", "obj", "outgoing", "raw")

    def __init__(self, raw: Any, context: ssl.SSLContext) -> None:
        self.raw = raw
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        # ssl.SSLObject's read, write and pending are one-line Python wrappers over the C
        # object beneath: the hot path calls that directly (three Python frames per request).
        self.engine = getattr(self.obj, "_sslobj", self.obj)
        self.first = b""  # the first bytes the client sent: tells plaintext HTTP apart

    @property
    def watched(self) -> Any:
        """The CountingSocket beneath: the sweeper reads its deadlines and state."""
        return self.raw

    @property
    def family(self) -> int:
        return self.raw.family

    def handshake(self, timeout: float) -> None:
        """Complete the handshake within ``timeout`` (the sweeper enforces it); or raise."""
        self.raw.enter(HANDSHAKE, time.monotonic() + timeout if timeout else 0.0)
        try:
            while True:
                try:
                    self.obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    if not self._fill():
                        raise HandshakeFailed("timeout" if self.raw.shut else "eof") from None
            self._flush()
        except ssl.SSLError as exc:
            raise HandshakeFailed(self._failure(exc)) from None
        except OSError:  # a reset, or a write after the sweeper's shutdown at the deadline
            raise HandshakeFailed("timeout" if self.raw.shut else "eof") from None
        finally:
            self.raw.enter(OPEN)

    def _failure(self, exc: ssl.SSLError) -> str:
        if _HTTP_START.match(self.first):
            # nginx's answer to plaintext on a TLS port: a short 400, in plaintext, then close.
            with contextlib.suppress(OSError):
                self.raw.sendall(PLAINTEXT_ANSWER)
            return "plaintext_http"
        if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(exc.reason):
            return "client_certificate"
        if isinstance(exc, ssl.SSLEOFError):
            return "eof"
        return "protocol"

    def _fill(self, idle: bool = False) -> bool:
        """Feed the TLS engine from the socket; False at end of stream. ``idle``: nothing is
        expected yet, so wait for readability before reading (one recv, not a failed one)."""
        data = self.raw.recv_after_wait(RECORD) if idle else self.raw.recv(RECORD)
        if not data:
            self.incoming.write_eof()
            return False
        if not self.first:
            self.first = data[:16]
        self.incoming.write(data)
        return True

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.raw.sendall(data)

    def _read(self, size: int, idle: bool) -> bytes:
        engine = self.engine
        if self.incoming.pending or engine.pending():
            if idle:
                # Plaintext already here (pipelined requests): no wait on the socket, so no
                # poll either; the fairness turn is taken here (protocols/turns.py).
                take_turn(self.raw)
        else:
            # The common case: the protocol asks only when it has consumed everything, so feed
            # the engine first rather than pay for an SSLWantReadError on every read.
            raw = self.raw
            data = raw.recv_after_wait(RECORD) if idle else raw.recv(RECORD)
            if not data:
                self.incoming.write_eof()
                return b""
            self.incoming.write(data)
        while True:
            try:
                return engine.read(size)
            except ssl.SSLWantReadError:
                if self.outgoing.pending:
                    self._flush()  # a TLS 1.3 key update or session ticket
                if not self._fill():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise ConnectionError(f"TLS: {exc.reason or exc}") from None

    def recv(self, size: int) -> bytes:
        data = self._read(size, False)
        raw = self.raw
        if not data and raw.eof_data:  # see Connections.end_upgraded
            data, raw.eof_data = raw.eof_data, b""
        return data

    def recv_after_wait(self, size: int) -> bytes:
        """``recv`` for a reader that expects to wait: readiness first, unless the TLS engine
        already holds bytes (then nothing may be left to read on the socket)."""
        return self._read(size, True)

    def sendall(self, data: Any) -> None:
        try:
            # A memory BIO grows as needed, so one write takes all of it (no partial writes).
            self.engine.write(data)
        except ssl.SSLError as exc:
            raise ConnectionError(f"TLS: {exc.reason or exc}") from None
        self._flush()

    def send(self, data: Any) -> int:
        self.sendall(data)
        return len(data)

    def fileno(self) -> int:
        # os.sendfile would send plaintext past the TLS layer: the HTTP layer falls back.
        raise OSError("a TLS connection has no plaintext file descriptor")

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)

    def close(self) -> None:
        self.raw.close()

    def setsockopt(self, *args: Any) -> None:
        self.raw.setsockopt(*args)

    def getpeername(self) -> Any:
        return self.raw.getpeername()

    def getpeercert(self) -> dict[str, Any] | None:
        return self.obj.getpeercert()

    def alpn(self) -> str | None:
        """The protocol ALPN agreed on ("h2", "http/1.1"), or None."""
        return self.obj.selected_alpn_protocol()

    def client_environ(self) -> dict[str, str]:
        """What a verified client certificate adds to a WSGI environ (nginx's names)."""
        cert = self.obj.getpeercert()
        if not cert:
            return {}
        return {"SSL_CLIENT_S_DN": subject_of(cert), "SSL_CLIENT_VERIFY": "SUCCESS"}
