"""Raw TCP: call ``handle(sock, address)`` for each connection, counting what crosses it."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket as gsocket

from greenserve.stats import WorkerStats

Handler = Callable[[Any, Any], Any]


_gevent_recv = gsocket.socket.recv
_gevent_recv_into = gsocket.socket.recv_into
_gevent_send = gsocket.socket.send


class CountingSocket(gsocket.socket):
    """A gevent socket that adds every byte it moves to the worker's counters.

    gevent's ``sendall``, ``sendfile`` and ``makefile`` all go through ``send``/``recv_into``,
    so counting in these three methods is exact without wrapping the others. The gevent
    methods are called as plain functions (no ``super()``). ``send`` first tries the underlying
    non-blocking socket (``_sock``), since a send almost never blocks; a recv usually does (the
    client has not answered yet), and trying it first measured ~15% slower on the echo
    benchmark (a failed syscall and an exception per message), so recv goes to gevent at once.
    """

    __slots__ = ("active", "greenlet", "idle_since", "shut", "stats")

    def recv(self, *args: Any) -> bytes:
        data = _gevent_recv(self, *args)
        self.stats.bytes_received += len(data)
        self.active = True
        return data

    def recv_into(self, *args: Any) -> int:
        count = _gevent_recv_into(self, *args)
        self.stats.bytes_received += count
        self.active = True
        return count

    def send(self, data: Any, flags: int = 0, *args: Any, **kwargs: Any) -> int:
        try:
            count = self._sock.send(data, flags)
        except BlockingIOError:
            count = _gevent_send(self, data, flags, *args, **kwargs)
        self.stats.bytes_sent += count
        self.active = True
        return count


class IdleSweeper:
    """Closes connections that moved no data for ``timeout`` seconds.

    A socket timeout would arm a timer on every blocking recv; measured on the echo benchmark
    that cost about 20% of a worker's CPU per message. Instead each socket sets a flag when data
    moves, and this greenlet looks at the flags a few times per timeout: a connection is closed
    between ``timeout`` and ``timeout * 1.25`` after its last activity, never before.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = min(timeout / 4, 1.0)
        self.connections: set[CountingSocket] = set()

    def add(self, sock: CountingSocket) -> None:
        sock.active, sock.idle_since, sock.shut = False, time.monotonic(), False
        sock.greenlet = gevent.getcurrent()
        self.connections.add(sock)

    def discard(self, sock: CountingSocket) -> None:
        self.connections.discard(sock)

    def run(self) -> None:
        while True:
            gevent.sleep(self.tick)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        for sock in list(self.connections):
            if sock.shut:
                # Still here a tick after shutdown: the handler ignored end-of-file.
                self.connections.discard(sock)
                sock.greenlet.kill(block=False)
            elif sock.active:
                sock.active, sock.idle_since = False, now
            elif now - sock.idle_since >= self.timeout:
                # shutdown, not close: a handler blocked in recv sees end-of-file and returns
                # normally, one blocked in send sees a broken pipe.
                sock.shut = True
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class TcpProtocol:
    """The per-connection entry point handed to gevent's StreamServer."""

    def __init__(self, app: Handler, stats: WorkerStats, idle_timeout: float, log: Any) -> None:
        self.app = app
        self.stats = stats
        self.idle = IdleSweeper(idle_timeout) if idle_timeout else None
        self.log = log

    def __call__(self, client: gsocket.socket, address: Any) -> None:
        stats = self.stats
        stats.connections_accepted += 1
        stats.connections_active += 1
        sock = CountingSocket(client.family, client.type, client.proto, fileno=client.detach())
        sock.stats = stats
        idle = self.idle
        if idle is not None:
            idle.add(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.app(sock, address)
        except (TimeoutError, ConnectionError):
            pass  # idle timeout or the peer went away: ordinary ends of a connection
        except Exception:
            stats.handler_errors += 1
            self.log.error("handler_error", peer=_peer(address), exc_info=True)
        finally:
            stats.connections_active -= 1
            if idle is not None:
                idle.discard(sock)
            sock.close()


def _peer(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)
