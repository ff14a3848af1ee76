"""Bench only: greenserve with per-connection counting removed (the stats-cost comparison).

Put on PYTHONPATH by tests/bench/run.py for the "greenserve, counting off" contender; Python
imports it in the master, the forkserver and so every worker.
"""

import socket

from gevent import socket as gsocket

from greenserve.worker.protocols import accept, tcp


class UncountedSocket(gsocket.socket):
    """gevent's own recv/send (no counting), with the slots the connection registry uses."""

    __slots__ = tcp.CountingSocket.__slots__


accept.CountingServer.socket_class = UncountedSocket


def _uncounted(self, client, address):
    try:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.app(client, address)
    except (TimeoutError, ConnectionError):
        pass
    except Exception:
        self.log.error("handler_error", exc_info=True)
    finally:
        self.connections.remove(client)
        client.close()


tcp.TcpProtocol.handle = _uncounted
