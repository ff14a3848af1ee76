"""HTTP/1.1 responses: the status line and header block, the body's framing, sendfile.

Each rule keeps a pooled keep-alive connection in step (see docs/http.md): no body on HEAD, 1xx, 204
and 304; never more bytes than the app's Content-Length (the rest is cut, logged, counted, and
the connection closed); a body shorter than its Content-Length closes the connection; an error
before the first byte is on the wire becomes a 500 (the connection's job, with ``started``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from email.utils import formatdate
from time import time as _time
from typing import TYPE_CHECKING, Any, Protocol

from gevent import socket as gsocket

from greenserve import extensions
from greenserve.worker.protocols.http_parser import Head

SMALL_BODY = 16384  # headers and a body up to this size go out in one write

SERVER = b"greenserve"

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

# RFC 9110 5.6.2 token: a response header name must be one, or the header block is ambiguous.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# RFC 9110 5.5: no control characters in a field value except horizontal tab.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_NO_BODY_STATUS = frozenset((*range(100, 200), 204, 304))  # RFC 9110 6.4.1

# The response's hot path in C (_response.c), with the interface version this module expects;
# None without the extension (or with GREENSERVE_NO_EXTENSIONS).
RESPONSE_ABI = 1
RESPONSE_C: Any = extensions.load("_response", RESPONSE_ABI)


class PythonDateCache:
    """The end of every header block from the Date header on (Date, Server, the blank line),
    formatted and joined once per second rather than once per response."""

    __slots__ = ("date_value", "end_value", "from_", "until")

    def __init__(self) -> None:
        self.from_ = self.until = 0.0  # the current second, as floats (compared per call)
        self.end_value = b""
        self.date_value = b""

    def end(self) -> bytes:
        # Comparisons only, within the second (the int() of each call was 1.5% of the HTTP
        # layer's instructions per request, valgrind, 2026-12-07); both ends, for a clock
        # stepped back
        now = _time()
        if self.from_ <= now < self.until:
            return self.end_value
        second = int(now)  # outside the last second: always another one
        self.from_, self.until = float(second), second + 1.0
        date = self.date_value = formatdate(second, usegmt=True).encode()
        self.end_value = b"\r\nDate: " + date + b"\r\nServer: " + SERVER + b"\r\n\r\n"
        return self.end_value

    def date(self) -> bytes:
        """The Date header's value alone (HTTP/2 sends fields, not lines)."""
        self.end()
        return self.date_value


def close_body(body: object) -> None:
    """PEP 3333: an app's iterable (or a wrapped file) is closed if it has ``close``."""
    close = getattr(body, "close", None)
    if close is not None:
        close()


class FileWrapper:
    """``wsgi.file_wrapper``: lets the server send a file with ``sendfile``."""

    def __init__(self, filelike: Any, block_size: int = 65536) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        while True:
            block = self.filelike.read(self.block_size)
            if not block:
                return
            yield block

    def close(self) -> None:
        close_body(self.filelike)


# Apps send the same few headers again and again: each is validated and encoded once. The
# value is the header's line, or for a Content-Length the length (written with the framing).
_VALID_HEADERS: dict[tuple[str, str], bytes | int] = {}

_VALID_HEADERS_MAX = 1024


def check_field(name: str, value: str) -> None:
    """ValueError for a response header that cannot go on the wire (HTTP/1.1 and HTTP/2)."""
    if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
        raise ValueError(f"invalid response header {name!r}: {value!r}")


def _valid_header(name: str, value: str, *, cache: bool = True) -> bytes:
    """The header's line; remembered for the next response unless ``cache`` is false (an
    X-Request-ID: the caller must see it every time)."""
    check_field(name, value)
    line = f"{name}: {value}".encode("latin-1")
    if cache and len(_VALID_HEADERS) < _VALID_HEADERS_MAX:
        _VALID_HEADERS[(name, value)] = line
    return line


# Apps answer with the same few statuses: each is validated and encoded once.
_STATUSES: dict[str, tuple[bytes, int]] = {}

_STATUSES_MAX = 256


def _valid_status(status: str) -> tuple[bytes, int]:
    """The status line and the code; ValueError for anything that cannot go on the wire
    (a reason phrase with CR or LF would end the status line early)."""
    code = int(status[:3])
    if not 100 <= code <= 999 or status[3:4] not in ("", " ") or _BAD_VALUE.search(status):
        raise ValueError(f"invalid status {status!r}")
    known = b"HTTP/1.1 " + status.encode("latin-1"), code
    if len(_STATUSES) < _STATUSES_MAX:
        _STATUSES[status] = known
    return known


def early_hints_bytes(headers: list[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 103 Early Hints with these fields (RFC 8297)."""
    lines = [b"HTTP/1.1 103 Early Hints"]
    for name, value in headers:
        check_field(name, value)
        lines.append(f"{name}: {value}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def check_restart(exc_info: Any, started: bool, headers_sent: bool) -> None:
    """PEP 3333: a second start_response only with exc_info, and only before the headers went
    out (after, the app's exception is raised again)."""
    if exc_info is not None:
        if headers_sent:
            raise exc_info[1].with_traceback(exc_info[2])
    elif started:
        raise AssertionError("start_response called twice without exc_info")


def status_code(status: str) -> int:
    """A WSGI status's code, validated as for HTTP/1.1 (HTTP/2 sends the code alone)."""
    known = _STATUSES.get(status)
    return (known if known is not None else _valid_status(status))[1]


class ResponseOwner(Protocol):
    """What a response reads from the handler that serves the listener (HttpHandler)."""

    draining: bool  # a stop or reload: answer with Connection: close
    date: DateCache


class PythonResponse:
    """``start_response`` and ``write`` for one request, and the framing of its body: the whole
    of it in Python, which a machine without a compiler runs, and the rules _response.c's hot
    path hands every other case to (``Response`` below)."""

    __slots__ = (
        "body_sent",
        "chunked",
        "expected",
        "handler",
        "head",
        "headers",
        "headers_sent",
        "keep_alive",
        "length",
        "no_body",
        "request_id",
        "sock",
        "status",
        "status_code",
        "truncated",
    )

    def __init__(
        self, sock: Any, upgrading: bool, handler: ResponseOwner, head: Head, request_id: str
    ) -> None:
        self.handler = handler  # shared by the listener's connections: drain flag, Date cache
        self.request_id = request_id
        self.sock = sock
        self.head = head
        self.status = b""  # the status line, once start_response was called
        self.status_code = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.chunked = False
        self.length: int | None = None
        self.keep_alive = head.keep_alive and not upgrading
        self.body_sent = 0
        self.truncated = 0  # bytes the app wrote past its own Content-Length, not sent
        self.no_body = head.method == b"HEAD"
        self.expected: int | None = None  # total body length when the result is a list

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None or self.status:  # the first call, without exc_info: no check
            check_restart(exc_info, bool(self.status), self.headers_sent)
        known = _STATUSES.get(status)
        self.status, code = known if known is not None else _valid_status(status)
        self.status_code, self.headers = code, headers
        if code in _NO_BODY_STATUS:
            self.no_body = True
        return self.write

    def _head_bytes(self) -> bytes:
        """The status line and header block; raises on anything that cannot go on the wire."""
        if not self.status:
            raise AssertionError("the application did not call start_response")
        lines = [self.status]
        request_id: str | None = self.request_id
        known = _VALID_HEADERS
        for header in self.headers:
            # a header seen before that needs nothing but copying (apps may pass lists: skipped)
            line = known.get(header) if header.__class__ is tuple else None
            if line is not None:
                if line.__class__ is bytes:
                    lines.append(line)
                else:
                    self.length = line  # type: ignore[assignment]
                continue
            name, value = header
            lowered = name.lower()
            if lowered == "x-request-id":
                request_id = None  # the app set its own
            elif lowered == "content-length":
                self.length = length = int(value)
                if length < 0:
                    raise ValueError(f"negative Content-Length {value!r}")
                if header.__class__ is tuple and len(known) < _VALID_HEADERS_MAX:
                    known[header] = length
                continue  # written once below, with the framing decision
            if lowered == "connection":
                if value.lower() == "close":
                    self.keep_alive = False
                continue
            if lowered == "transfer-encoding":
                continue  # framing is ours
            lines.append(_valid_header(name, value, cache=lowered != "x-request-id"))
        code = self.status_code
        # Lengths are formatted with %d: 60 ns, where str(n).encode() took 160 (timeit, 3.11).
        if code < 200 or code == 204:
            self.length = None  # RFC 9110 8.6: no Content-Length on 1xx and 204
        elif self.length is None and self.no_body:
            if self.expected and self.head.method == b"HEAD":  # what a GET would get
                self.length = self.expected
                lines.append(b"Content-Length: %d" % self.length)
        elif self.length is None:
            if self.expected is not None:
                self.length = self.expected  # the whole body is known (a list, or finished)
                lines.append(b"Content-Length: %d" % self.length)
            elif self.head.version == "1.1":
                self.chunked = True
                lines.append(b"Transfer-Encoding: chunked")
            else:
                self.keep_alive = False  # HTTP/1.0 without a length: the close ends the body
        elif self.length is not None:
            lines.append(b"Content-Length: %d" % self.length)
        if self.handler.draining:
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"Connection: close")
        elif self.head.version == "1.0":
            lines.append(b"Connection: keep-alive")
        if request_id is not None:
            lines.append(b"X-Request-ID: " + request_id.encode())
        return b"\r\n".join(lines) + self.handler.date.end()

    def write(self, data: bytes) -> None:
        """The WSGI ``write`` callable, and each chunk of an iterable result."""
        if data.__class__ is not bytes and not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"the application wrote {type(data).__name__}, not bytes")
        if not data:
            return
        if not self.headers_sent:
            if len(data) <= SMALL_BODY and not self.no_body:
                # headers and a small body in one write
                head = self._head_bytes()
                self.sock.sendall(head + self._frame(data))
                self.headers_sent = True
                return
            if self.no_body:
                self._start(data)
                return
            self._start()
        elif self.no_body:
            return
        self.sock.sendall(self._frame(data))

    def _start(self, data: bytes = b"") -> None:
        """Send the header block, with ``data`` after it; until this, a 500 is still possible."""
        head = self._head_bytes()
        if data and not self.no_body:
            head += self._frame(data)
        self.sock.sendall(head)
        self.headers_sent = True

    def _frame(self, data: bytes) -> bytes:
        length = self.length
        if length is not None and self.body_sent + len(data) > length:
            # PEP 3333: never more than the declared length; the excess would be read as the
            # start of the next response by a client or proxy that reuses the connection.
            keep = max(0, length - self.body_sent)
            self.truncated += len(data) - keep
            self.keep_alive = False
            data = data[:keep]
        self.body_sent += len(data)
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def finish(self) -> None:
        if not self.headers_sent:
            if self.expected is None:
                self.expected = 0  # nothing was written: an empty body
            self._start()
            if self.length and not self.no_body:
                self.keep_alive = False  # a declared body never sent: framing is lost
        elif self.no_body:
            pass
        elif self.length is not None and self.body_sent != self.length:
            self.keep_alive = False  # the app's Content-Length was wrong: framing is lost
        elif self.chunked:
            self.sock.sendall(b"0\r\n\r\n")

    def try_sendfile(self, wrapper: FileWrapper) -> bool:
        """Send a file with os.sendfile when its length is known; False to fall back."""
        filelike = wrapper.filelike
        try:
            fd = filelike.fileno()
            offset = filelike.tell()
            size = os.fstat(fd).st_size - offset
            # A socket with no plaintext descriptor (TLS: protocols/tls_session.py) cannot sendfile:
            # the file then goes through write() like any iterable.
            out = self.sock.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        if self.no_body or (self.length is None and self.head.version != "1.1"):
            return False
        if getattr(self.sock, "out", None) is not None:
            self.sock.uncork()  # held responses of a pipelined batch go first
        if not any(name.lower() == "content-length" for name, _ in self.headers):
            self.headers = [*self.headers, ("Content-Length", str(size))]
        self._start()
        remaining = self.length if self.length is not None else size
        while remaining > 0:
            try:
                sent = os.sendfile(out, fd, offset, min(remaining, 1 << 20))
            except BlockingIOError:
                gsocket.wait_write(out)
                continue
            if sent == 0:
                break
            offset += sent
            remaining -= sent
            self.body_sent += sent
            self.sock.tx += sent
        return True


if RESPONSE_C is not None:
    RESPONSE_C.configure(_STATUSES, _VALID_HEADERS, SMALL_BODY, SERVER)

    class CResponse(RESPONSE_C.Response):
        """PythonResponse with its fields, ``__init__`` and hot methods in C (_response.c):
        ``start_response``, ``write`` and ``finish`` take a plain response's common case and
        hand any other to PythonResponse's own method, named here with an underscore."""

        __slots__ = ()
        _start_response = PythonResponse.start_response
        _write = PythonResponse.write
        _finish = PythonResponse.finish
        _head_bytes = PythonResponse._head_bytes
        _start = PythonResponse._start
        _frame = PythonResponse._frame
        try_sendfile = PythonResponse.try_sendfile


# One class per process for the whole HTTP/1.1 layer, as http_parser.Head; the type checker
# sees PythonResponse, whose fields and behaviour the C one has.
if TYPE_CHECKING:
    Response = PythonResponse
    DateCache = PythonDateCache
else:
    Response = CResponse if RESPONSE_C is not None else PythonResponse
    DateCache = RESPONSE_C.DateCache if RESPONSE_C is not None else PythonDateCache
