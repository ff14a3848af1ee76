"""Raw TCP: call ``handle(sock, address)`` for each connection, counting what crosses it."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from gevent import socket as gsocket

from greenserve.stats import WorkerStats

Handler = Callable[[Any, Any], Any]


class CountingSocket(gsocket.socket):
    """A gevent socket that adds every byte it moves to the worker's counters.

    gevent's ``sendall``, ``sendfile`` and ``makefile`` all go through ``send``/``recv_into``,
    so counting in these three methods is exact without wrapping the others.
    """

    __slots__ = ("stats",)

    def recv(self, *args: Any) -> bytes:
        data = super().recv(*args)
        self.stats.bytes_received += len(data)
        return data

    def recv_into(self, *args: Any) -> int:
        count = super().recv_into(*args)
        self.stats.bytes_received += count
        return count

    def send(self, *args: Any, **kwargs: Any) -> int:
        count = super().send(*args, **kwargs)
        self.stats.bytes_sent += count
        return count


class TcpProtocol:
    """The per-connection entry point handed to gevent's StreamServer."""

    def __init__(self, app: Handler, stats: WorkerStats, idle_timeout: float, log: Any) -> None:
        self.app = app
        self.stats = stats
        self.idle_timeout = idle_timeout or None
        self.log = log

    def __call__(self, client: gsocket.socket, address: Any) -> None:
        stats = self.stats
        stats.connections_accepted += 1
        stats.connections_active += 1
        sock = CountingSocket(client.family, client.type, client.proto, fileno=client.detach())
        sock.stats = stats
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A per-operation timeout: a connection silent for idle_timeout raises in the
            # handler's recv, which ends it like a close would.
            sock.settimeout(self.idle_timeout)
            self.app(sock, address)
        except (TimeoutError, ConnectionError):
            pass  # idle timeout or the peer went away: ordinary ends of a connection
        except Exception:
            stats.handler_errors += 1
            self.log.error("handler_error", peer=_peer(address), exc_info=True)
        finally:
            stats.connections_active -= 1
            sock.close()


def _peer(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)
