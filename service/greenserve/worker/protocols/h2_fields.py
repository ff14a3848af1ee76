"""An HTTP/2 request's header fields (RFC 9113 8.2, 8.3) checked and turned into a ``Head``.

h2 can validate inbound fields itself; measured, its checks were a third of a worker's CPU per
request (py-spy, hello over TLS with h2load). The same rules are checked here in one pass, and
a field seen before (most are: the same client sends the same few on every stream) is not
checked again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from greenserve.worker.protocols.http_parser import _REQUEST_ID, Head, _environ_key
from greenserve.worker.protocols.llhttp import HttpError

# RFC 9113 8.2.1: a lowercase token; a value without NUL, CR, LF or whitespace at either end.
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
# RFC 9113 8.2.2: fields that belong to one HTTP/1.1 connection make a request malformed.
_CONNECTION_FIELDS = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
_CHECKED: set[tuple[bytes, bytes]] = set()  # fields that passed, remembered
_CHECKED_MAX = 4096


def _check(name: bytes, value: bytes) -> None:
    if not _NAME.fullmatch(name):
        raise HttpError(400, "invalid header field name")
    if _BAD_VALUE.search(value):
        raise HttpError(400, f"invalid value of {name.decode('latin-1')}")
    if name in _CONNECTION_FIELDS or (name == b"te" and value != b"trailers"):
        raise HttpError(400, f"connection-specific field {name.decode('latin-1')}")
    if len(_CHECKED) < _CHECKED_MAX:
        _CHECKED.add((name, value))


def request_head(headers: Iterable[tuple[bytes, bytes]]) -> Head:
    """A Head from a request's HTTP/2 fields; HttpError 400 for a malformed request."""
    head = Head()
    head.version = "2"
    fields = head.headers
    cookies: list[bytes] = []
    pseudo: dict[bytes, bytes] = {}
    length: int | None = None
    host = False
    checked = _CHECKED
    for field in headers:
        name, value = field
        if name[:1] == b":":
            if name not in _PSEUDO or name in pseudo or fields or cookies:
                raise HttpError(400, "invalid pseudo-header field")
            pseudo[name] = value
            continue
        if field not in checked:
            _check(name, value)
        if name == b"cookie":  # RFC 9113 8.2.3: split cookies are joined with "; "
            cookies.append(value)
            continue
        key = _environ_key(name)
        if key == "CONTENT_LENGTH":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise HttpError(400, "invalid content-length")
            length = int(value)
            continue
        if key == "HTTP_X_REQUEST_ID" and _REQUEST_ID.fullmatch(value):
            head.request_id = value.decode("ascii")
        elif key == "HTTP_X_REQUEST_START":
            head.request_start = value.decode("latin-1")
        elif key == "HTTP_HOST":
            host = True
        fields.append((key, value))
    method = head.method = pseudo.get(b":method", b"")
    url = head.url = pseudo.get(b":path", b"")
    if not method or not url or not pseudo.get(b":scheme"):
        # CONNECT (no :path, no :scheme) has no app here: no browser sends it
        raise HttpError(400, "missing :method, :scheme or :path")
    if cookies:
        fields.append(("HTTP_COOKIE", b"; ".join(cookies)))
    authority = pseudo.get(b":authority")
    if authority and not host:
        fields.append(("HTTP_HOST", authority))
    if not url.startswith(b"/") and not (url == b"*" and method == b"OPTIONS"):
        raise HttpError(400, "unsupported request target")
    path, _, query = url.partition(b"?")
    if b"#" in path:
        raise HttpError(400, "fragment in request target")
    head.path, head.query = path, query
    head.content_length = length
    if length is not None:
        fields.append(("CONTENT_LENGTH", b"%d" % length))
    return head
