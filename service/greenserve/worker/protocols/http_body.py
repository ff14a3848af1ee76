"""``wsgi.input``: a request body, pulled from its connection as the app reads it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from greenserve.worker.protocols.http_parser import END, Head


class BodySource(Protocol):
    """Where a request body comes from: the connection that owns the socket and the parser
    (HttpConnection)."""

    def next_body_event(self, body: Input) -> Any:
        """The next chunk of ``body`` (bytes), or END (a sentinel object)."""
        ...


DRAIN_LIMIT = 1 << 20  # unread body we are willing to discard to keep a connection alive


class Input:
    """``wsgi.input``: the request body, streamed from the socket as the app reads it.

    ``done`` is True once the end of the body was reached; ``buffer`` holds what was read from
    the socket but not yet by the app.
    """

    __slots__ = ("buffer", "connection", "done", "head", "received")

    def __init__(self, connection: BodySource, head: Head) -> None:
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
        lines: list[bytes] = []
        total = 0
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


# A head with no length and no chunking: the input is at its end from the start. Shared by
# every request without a body; nothing in it changes.
EMPTY_INPUT = Input(None, Head())  # type: ignore[arg-type]
