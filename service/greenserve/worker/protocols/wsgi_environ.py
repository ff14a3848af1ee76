"""The PEP 3333 environ: what every request of a listener shares, and a request's own part."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import unquote_to_bytes

from greenserve import __version__
from greenserve.worker.protocols.http_parser import PLAIN_KEYS, Head
from greenserve.worker.protocols.http_response import FileWrapper

_PERCENT = ord("%")  # an int: see http_parser._HASH
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}


# Keys every request's environ gets whatever path built it; kept in base_environ (see there).
PER_REQUEST = (
    "REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "SERVER_PROTOCOL", "REMOTE_ADDR",
    "REMOTE_PORT", "wsgi.input", "greenserve.request_id", "wsgi.early_hints",
)  # fmt: skip


def base_environ(server_address: Any, root_path: str, tls: bool) -> dict[str, Any]:
    """What every request of one listener shares; ``server_address``: (host, port) or a unix
    path."""
    if isinstance(server_address, str):  # a unix socket: PEP 3333 wants both set anyway
        host, port = "localhost", 80
    else:
        host, port = server_address[:2]
    return {
        "SCRIPT_NAME": root_path,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_SOFTWARE": f"greenserve/{__version__}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if tls else "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        # wsgi.input returns b"" at the end of the body, with or without Content-Length:
        # Werkzeug (Flask) reads a chunked body only when this says so.
        "wsgi.input_terminated": True,
        # Set for every request by whatever builds its environ (the parsers, HttpHandler.environ,
        # the connection or the HTTP/2 stream): here so that a copy of this dict has room for a
        # request's own keys. Without them the copy was resized on every request, its keys
        # table rebuilt and the old one freed: about 1,000 instructions (callgrind).
        **dict.fromkeys(PER_REQUEST, ""),
    }


def parsed_environ(base: dict[str, Any], head: Head) -> dict[str, Any]:
    """The request's part of the environ from a head llhttp parsed (what _fasthead.parse
    builds for the plain ones)."""
    environ = dict(base)
    path = head.path
    method = head.method
    environ["REQUEST_METHOD"] = _METHODS.get(method) or method.decode("latin-1")
    if _PERCENT in path:
        path = unquote_to_bytes(path)
    path_info = environ["PATH_INFO"] = path.decode("latin-1")
    query = head.query
    environ["QUERY_STRING"] = query.decode("latin-1") if query else ""
    url = head.url
    # most targets are a bare path: its text is already decoded
    environ["RAW_URI"] = path_info if url is path else url.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/1.1" if head.version == "1.1" else "HTTP/" + head.version
    chunked = head.chunked
    for key, value in head.headers:
        if key is None or (chunked and key == "HTTP_TRANSFER_ENCODING"):
            # a name that is dropped (see http_parser._environ_key); a chunked body reaches
            # the app de-chunked, with a CONTENT_LENGTH
            continue
        text = value.decode("latin-1")
        if key in environ and key not in PLAIN_KEYS:
            environ[key] = environ[key] + "," + text
        else:
            environ[key] = text
    return environ
