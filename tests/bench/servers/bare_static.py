"""The floor of a gevent worker serving static files, for tests/bench/static.py: a raw TCP
handler (``greenserve --protocol tcp``) that answers each read with a response built at import,
after one ``os.stat`` of the file, as ``--static`` does per request. No HTTP parsing, no
environ, no headers made per request, no counting: what greenserve's own ``--static`` could at
best reach inside the same event loop, greenlets and socket calls.

It answers ``GET /static/NAME`` for the files of ``BENCH_STATIC_ROOT`` only, one request per
read (wrk sends one at a time on each connection); anything else ends the connection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from greenserve.worker.protocols.tcp import park

ROOT = Path(os.environ.get("BENCH_STATIC_ROOT", "."))


def _response(path: Path) -> bytes:
    body = path.read_bytes()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Length: {len(body)}\r\nETag: "{path.stat().st_mtime_ns:x}-{len(body):x}"\r\n'
        "Last-Modified: Tue, 08 Dec 2026 01:38:52 GMT\r\nCache-Control: public, max-age=3600\r\n"
        "Accept-Ranges: bytes\r\nX-Request-ID: 0123456789ab-1\r\n\r\n"
    )
    return head.encode() + body


# request target -> (file, whole response)
READY = {
    f"/static/{path.name}".encode(): (str(path), _response(path))
    for path in sorted(ROOT.iterdir())
    if path.is_file()
}


def handle(sock: Any, address: Any) -> None:
    """The connection's greenlet: the underlying non-blocking socket read and written directly,
    waiting on the hub first as greenserve's own keep-alive reads do (``park``, then one
    ``recv``: the next request has rarely arrived when a response has just gone out), so that
    neither gevent's Python socket methods nor a read that finds nothing are counted."""
    raw, hub, readable, stat = sock._sock, sock.hub, sock._read_event, os.stat
    while True:
        park(readable, hub)
        try:
            data = raw.recv(65536)
        except BlockingIOError:
            continue
        found = READY.get(data.split(b" ", 2)[1]) if data.startswith(b"GET ") else None
        if found is None:
            return
        stat(found[0])
        response = found[1]
        sent = raw.send(response)  # an idle keep-alive socket takes 10 KB whole
        if sent < len(response):
            sock.sendall(response[sent:])
