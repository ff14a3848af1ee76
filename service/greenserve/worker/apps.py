"""Built-in apps: ``echo`` for ``--protocol tcp``, ``hello`` for ``--protocol http``."""

from __future__ import annotations

from typing import Any

RECV_SIZE = 65536


def echo(sock: Any, address: Any) -> None:
    """Send back every byte received until the client closes (the seed's echo service)."""
    recv = sock.recv
    send = sock.send
    while True:
        data = recv(RECV_SIZE)
        if not data:
            return
        # send() first: a small echo almost always goes out whole in one call, and gevent's
        # sendall() costs a getsockopt per call; the loop only covers a short write.
        sent = send(data)
        while sent < len(data):
            data = data[sent:]
            sent = send(data)


HELLO = b"Hello, world!\n"
HELLO_HEADERS = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(HELLO)))]


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI hello world."""
    start_response("200 OK", HELLO_HEADERS)
    return [HELLO]


NOT_FOUND = b"404 Not Found\n"
NOT_FOUND_HEADERS = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "14")]


def not_found(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """What a static-files-only server (--static without APP) answers outside its mounts."""
    start_response("404 Not Found", NOT_FOUND_HEADERS)
    return [NOT_FOUND]
