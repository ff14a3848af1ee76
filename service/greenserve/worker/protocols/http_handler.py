"""What the HTTP connections of one listener share: ``HttpHandler``, whose bound ``handle`` the
server calls per connection. It picks the protocol (HTTP/1.1, or HTTP/2 when TLS's ALPN agreed
on h2), holds the settings the hot path reads per request, and accounts for every response."""

from __future__ import annotations

import os
from typing import Any

from greenserve.config import Settings
from greenserve.metrics.stats import WorkerStats
from greenserve.worker.protocols.http import HttpConnection
from greenserve.worker.protocols.http_accounting import ResponseAccounting
from greenserve.worker.protocols.http_body import Input
from greenserve.worker.protocols.http_parser import Head
from greenserve.worker.protocols.http_response import DateCache
from greenserve.worker.protocols.tcp import CountingSocket
from greenserve.worker.protocols.upgrades import Upgrades
from greenserve.worker.protocols.websocket import WebSocket
from greenserve.worker.protocols.wsgi_environ import base_environ, parsed_environ


class HttpHandler(ResponseAccounting):
    """The connection handler for ``--protocol http``: ``handle(sock, address)`` for a WSGI app."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        *,
        stats: WorkerStats,
        log: Any,
        server_address: Any,
    ) -> None:
        """``server_address``: the listener's (SERVER_NAME, SERVER_PORT), or a unix path."""
        self.app = app
        # Copied to attributes once: the hot path reads them per request.
        self.request_timeout = settings.request_timeout
        self.tls = tls = settings.certfile is not None
        self.forwarded_allow = settings.forwarded_allow_ips  # proxy.Trusted
        self.ws_max_message = settings.ws_max_message
        self.ws_send_buffer = settings.ws_send_buffer
        self.ws_send_timeout = settings.ws_send_timeout
        self.root_path = root_path = settings.root_path
        self.max_body = settings.max_body
        self.header_timeout = settings.header_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.access_log = settings.access_log
        self.max_inflight = settings.max_inflight  # 0: off
        self.max_queue_time = settings.max_queue_time  # 0: off
        self.queue_times = stats.histograms["http_queue_seconds"]
        self.websockets: set[WebSocket] = set()  # open wsgi.websocket objects (1001 on stop)
        self.upgrades = Upgrades(stats)
        # Request ids: unique per worker process, cheap (no uuid per request), never reused.
        self.id_prefix = os.urandom(6).hex() + "-"  # ids are prefix-counter, the counter in hex
        self.id_counter = 0
        self.stats = stats
        self.log = log
        self.draining = False
        self.date = DateCache()
        self.durations = stats.histograms["http_request_duration_seconds"]
        self.base_environ = base_environ(server_address, root_path, tls)
        self.http2: Any = None  # h2_connection.Http2 with h2 in --http-protocols
        if "h2" in settings.http_protocols:
            from greenserve.worker.protocols.h2_connection import Http2  # the [http2] extra

            self.http2 = Http2(self, settings)

    def handle(self, sock: CountingSocket, address: Any) -> None:
        """One connection (a bound method for the same reason as TcpProtocol.handle)."""
        connection = HttpConnection(self, sock, address)
        try:
            trusted = self.forwarded_allow
            if trusted is not None and address and address[0] in trusted:
                connection.trusted_peer = True
            if self.tls:
                connection.extra_environ = sock.client_environ()
                if self.http2 is not None and sock.alpn() == "h2":
                    self.http2.serve(
                        sock,
                        address,
                        "alpn",
                        trusted=connection.trusted_peer,
                        extra_environ=connection.extra_environ,
                    )
                    return
            connection.serve()
        finally:
            # A bound method of its own (wsgi.early_hints, in its base environ) made each
            # connection a reference cycle, freed only by the cyclic GC with its parser and
            # socket: 7 objects per connection left to it (gc.collect after wrk -H
            # "Connection: close").
            connection.base.clear()

    def goaway_http2(self) -> None:
        """A stop or reload: each HTTP/2 connection gets GOAWAY; its streams in flight finish."""
        if self.http2 is not None:
            self.http2.goaway_all()

    def ping_websockets(self) -> None:
        for websocket in list(self.websockets):
            websocket.ping()

    def close_websockets(self) -> None:
        """A graceful stop: every open WebSocket gets a Close 1001 (going away); its app sees
        the peer's reply and ends within --graceful-timeout."""
        for websocket in list(self.websockets):
            websocket.close(1001, "going away")

    def new_request_id(self) -> str:
        self.id_counter += 1
        # hex() and a concatenation: 105 ns, where the f-string took 232 (timeit, 3.11)
        return self.id_prefix + hex(self.id_counter)[2:]

    def connection_environ(self, address: Any) -> dict[str, Any]:
        """The base environ with the peer's address: what each request of one connection
        starts from. Once per connection and not per request (REMOTE_PORT's str() among them):
        a keep-alive request's environ is a copy of this dict and three keys of its own."""
        environ = dict(self.base_environ)
        if isinstance(address, tuple):  # (host, port[, flowinfo, scope_id])
            environ["REMOTE_ADDR"] = address[0]
            environ["REMOTE_PORT"] = str(address[1])
        else:  # a Unix socket's peer: "" or the path a client bound (gunicorn gives it too)
            environ["REMOTE_ADDR"] = address or ""
        return environ

    def environ(self, head: Head, body: Input, base: dict[str, Any]) -> dict[str, Any]:
        """The request's environ from ``base`` (``connection_environ``): C built it already
        for a plain head, llhttp's path builds it here."""
        environ = head.environ
        if environ is None:
            environ = parsed_environ(base, head)
        else:  # built by FAST_PARSE from base: the request's part
            head.environ = None  # the Head outlives the request (Response.head): not the environ
        root = self.root_path
        if root:
            path_info = environ["PATH_INFO"]
            if path_info == root or path_info.startswith(root + "/"):
                # the proxy kept the prefix: SCRIPT_NAME has it, PATH_INFO the rest
                environ["PATH_INFO"] = path_info[len(root) :]
        environ["wsgi.input"] = body
        return environ
