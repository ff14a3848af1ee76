"""greenserve's own answers on an HTTP/1.1 connection: a parse error, a limit, a failed app, a
shed request. Each is a whole response with a request id, counted and access-logged like any
other, and the connection closes after it."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from greenserve.worker.protocols.http_parser import END, Head, RequestParser
from greenserve.worker.protocols.http_response import REASONS
from greenserve.worker.protocols.tcp import CountingSocket

if TYPE_CHECKING:
    from greenserve.worker.protocols.http_handler import HttpHandler

RETRY_AFTER = b"Retry-After: 1\r\n"  # a shed request: the load balancer may try again soon
SHED = {
    "inflight": "overloaded: too many requests in flight",
    "queue_time": "overloaded: the request waited too long before the app",
}


# An answer's bytes but its request id and Date, by (status, detail, extra header lines): a
# shed's 503 is the same every time (building it anew was 0.65 of the 4.2 us a shed's answer
# took in process, timeit). Bounded: some details carry what the client sent.
_PARTS: dict[tuple[int, str, bytes], tuple[bytes, bytes, bytes]] = {}
_PARTS_MAX = 256


def _parts(status: int, detail: str, extra: bytes) -> tuple[bytes, bytes, bytes]:
    """The answer up to the request id, from after it to the Date, and the body."""
    body = f"{status} {REASONS.get(status, '')}: {detail}\n".encode()
    start = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n".encode()
        + b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nX-Request-ID: "
    )
    parts = (start, b"\r\n" + extra + b"Content-Length: %d" % len(body), body)
    if len(_PARTS) < _PARTS_MAX:
        _PARTS[(status, detail, extra)] = parts
    return parts


class OwnAnswers:
    """What HttpConnection (http.py) answers by itself; the fields are its own."""

    __slots__ = ()
    handler: HttpHandler
    sock: CountingSocket
    parser: RequestParser
    events: list[Any]
    address: Any

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
        start, lines, body = _PARTS.get((status, detail, extra)) or _parts(status, detail, extra)
        response = start + request_id.encode() + lines + handler.date.end() + body
        sock = self.sock
        with contextlib.suppress(OSError):  # the client may already be gone
            if self._all_read(head):
                sock.send_last(response)
            else:
                sock.sendall(response)
        head = head or self.parser.head  # a head begun before the error, if any
        handler.answered(
            self.address, head, None, status, len(body), duration, request_id, error=detail
        )

    def _all_read(self, head: Head | None) -> bool:
        """Whether the connection, closed next, holds nothing unread that we know of: then the
        answer may leave with the FIN in one segment (CountingSocket.send_last), one
        packet fewer per shed connection (503s per CPU-second 9.6-12.8k -> 16.3-18.4k with the
        peer cache, 2026-12-06). Not over unread bytes: that close is a reset, which discards
        a queued answer. Plain sockets only (TLS writes its own records)."""
        return (
            head is not None
            and self.sock.__class__ is CountingSocket
            and not head.content_length
            and not head.chunked
            and not self.parser.head_open
            and all(event is END for event in self.events)
        )

    def shed(self, head: Head, reason: str) -> None:
        """Overload (--max-inflight, --max-queue-time): 503 at once, before the body is read
        and without the app, and the connection closes (the body is left unread)."""
        shed = self.handler.stats.http_requests_shed
        shed[reason] = shed.get(reason, 0) + 1
        self.send_error(503, SHED[reason], head=head, extra=RETRY_AFTER)
