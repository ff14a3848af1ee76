"""What two parts of a short connection cost in process: closing its socket, and greenserve's
own answer to a shed request. Not run by CI.

    python -m tests.bench.connection_parts [--count 20000]

``close``: a CountingSocket over one end of a socketpair, closed twice (the protocol's close,
then the server's do_close), against the same socket closed by gevent's own ``close``.
``shed answer``: ``HttpConnection.shed`` on an in-memory socket (the 503 built and written, the
response counted), the request parsed once beforehand. Best of 3, microseconds each.
"""

from __future__ import annotations

import argparse
import socket
import time

import structlog
from gevent import socket as gsocket

from greenserve.worker import apps
from greenserve.worker.protocols.http import HttpConnection
from greenserve.worker.protocols.http_parser import fast_head
from greenserve.worker.protocols.tcp import CountingSocket
from tests.helpers import ScriptedSocket, in_process_handler

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"


class GeventClose(CountingSocket):
    """CountingSocket with gevent's own close, as before 2026-12-07."""

    __slots__ = ()
    close = gsocket.socket.close


def close_us(cls: type[CountingSocket], count: int) -> float:
    spent = 0.0
    for _ in range(count):
        ours, peer = socket.socketpair()
        sock = cls(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=ours.detach())
        started = time.perf_counter()
        sock.close()
        sock.close()
        spent += time.perf_counter() - started
        peer.close()
    return spent / count * 1e6


def shed_us(count: int) -> float:
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    handler = in_process_handler(apps.hello)
    sock = ScriptedSocket([])
    connection = HttpConnection(handler, sock, ("127.0.0.1", 40000))
    head = fast_head(REQUEST, handler.base_environ)
    assert head is not None, "the C extension is needed (python setup.py build_ext --inplace)"
    started = time.perf_counter()
    for _ in range(count):
        sock.sent.clear()
        connection.shed(head, "queue_time")
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args()
    best = {
        "close, ours": min(close_us(CountingSocket, args.count) for _ in range(3)),
        "close, gevent's": min(close_us(GeventClose, args.count) for _ in range(3)),
        "shed answer": min(shed_us(args.count) for _ in range(3)),
    }
    for name, micros in best.items():
        print(f"{name + ':':18s} {micros:.2f} us")


if __name__ == "__main__":
    main()
