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
    from greenserve.worker.protocols.http_response import Response

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

    # an answer _failed sent and _account_failure has not counted yet (the connection sets it
    # to None when it starts)
    __slots__ = ("failure",)
    failure: tuple[int, int, str] | None
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
        environ: dict[str, Any] | None = None,
    ) -> None:
        """greenserve's own answer (a parse error, a limit, a timeout), then the connection
        closes; counted and access-logged like any response, with a request id and, once the
        request has one, its environ (the access line's path, query and user agent)."""
        request_id = request_id or self.handler.new_request_id()
        sent = self.send_answer(status, detail, request_id, head, extra)
        self.handler.answered(
            self.address, head or self.parser.head, environ, status, sent, duration, request_id,
            error=detail,
        )  # fmt: skip

    def send_answer(
        self, status: int, detail: str, request_id: str, head: Head | None, extra: bytes = b""
    ) -> int:
        """send_error's bytes on the wire, not yet accounted for; the body's length."""
        start, lines, body = _PARTS.get((status, detail, extra)) or _parts(status, detail, extra)
        response = start + request_id.encode() + lines + self.handler.date.end() + body
        sock = self.sock
        with contextlib.suppress(OSError):  # the client may already be gone
            if self._all_read(head):
                sock.send_last(response)
            else:
                sock.sendall(response)
        return len(body)

    def _failed(self, status: int, detail: str, writer: Response, head: Head) -> None:
        """Answer a request whose app failed before its response began. It is counted and
        access-logged by _account_failure, which _unfinished runs next (called by _respond and
        by _cycle.c) with the request's environ and duration: logged here, the line had neither
        (the path was the parser's default, the user agent null, the duration 0)."""
        self.failure = (status, self.send_answer(status, detail, writer.request_id, head), detail)

    def _account_failure(
        self, head: Head, environ: dict[str, Any], duration: float, request_id: str
    ) -> bool:
        """The answer _failed sent, counted and logged now; False when there was none."""
        failure = self.failure
        if failure is None:
            return False
        self.failure = None
        status, sent, detail = failure
        self.handler.answered(
            self.address, head, environ, status, sent, duration, request_id, error=detail
        )
        return True

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
