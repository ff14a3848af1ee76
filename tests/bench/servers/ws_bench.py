"""WebSocket apps for tests/bench/ws.py: an echo and a broadcast, for each server under test."""

from __future__ import annotations

import time
from typing import Any

OPEN: set[Any] = set()


def greenserve_app(environ: dict, start_response: Any) -> Any:
    """environ["wsgi.websocket"]: greenserve's own, or gevent-websocket's (same API)."""
    ws = environ.get("wsgi.websocket")
    if environ["PATH_INFO"] == "/broadcast":  # one greenlet sends one message to every socket
        started = time.perf_counter()
        for peer in list(OPEN):
            try:
                peer.send("broadcast")
            except Exception:  # a peer gone meanwhile
                OPEN.discard(peer)
        took = f"{(time.perf_counter() - started) * 1000:.1f}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [took]
    if ws is None:
        start_response("400 Bad Request", [])
        return [b""]
    if environ["PATH_INFO"] == "/idle":
        OPEN.add(ws)
    try:
        while True:
            message = ws.receive()
            if message is None:
                return []
            ws.send(message)
    finally:
        OPEN.discard(ws)


def _subscribed(url: str, app: Any) -> Any:
    """``app`` whose process subscribes once, on its first request, to the Redis channel
    ``broadcast`` and sends every message published there to its own open sockets (``OPEN``),
    so one publish reaches the sockets of every worker (how an app broadcasts across workers).
    Each process pushes "pid sockets milliseconds" for its send loop to the list ``sent``; to
    the message ``count`` it answers "pid sockets" on the list ``open`` instead."""
    import os

    import gevent
    import redis

    client = redis.Redis.from_url(url)
    listener: list[Any] = []

    def listen() -> None:
        pubsub = client.pubsub()
        pubsub.subscribe("broadcast")
        for item in pubsub.listen():
            if item["type"] != "message":
                continue
            payload, peers = item["data"], list(OPEN)
            if payload == b"count":
                client.rpush("open", f"{os.getpid()} {len(peers)}")
                continue
            started = time.perf_counter()
            for peer in peers:
                try:
                    peer.send(payload)
                except Exception:  # a peer gone meanwhile
                    OPEN.discard(peer)
            took = (time.perf_counter() - started) * 1000
            client.rpush("sent", f"{os.getpid()} {len(peers)} {took:.1f}")

    def subscribed(environ: dict, start_response: Any) -> Any:
        if not listener:  # the first request of this process (the worker is patched by then)
            listener.append(gevent.spawn(listen))
        return app(environ, start_response)

    return subscribed


def redis_fanout(url: str) -> Any:
    """``greenserve_app`` (``environ["wsgi.websocket"]``) with its broadcasts from Redis."""
    return _subscribed(url, greenserve_app)


def flask_sock_fanout(url: str) -> Any:
    """The same idle sockets and broadcasts as a Flask-Sock app writes them: the app answers
    the upgrade itself on the raw socket (simple-websocket, which accepts permessage-deflate
    when the client offers it) and waits in ``ws.receive()``."""
    from flask import Flask
    from flask_sock import Sock
    from simple_websocket import ConnectionClosed

    app = Flask(__name__)
    sock = Sock(app)

    @sock.route("/idle")
    def idle(ws: Any) -> None:
        OPEN.add(ws)
        try:
            while ws.receive() is not None:
                pass
        except ConnectionClosed:
            pass
        finally:
            OPEN.discard(ws)

    return _subscribed(url, app)


def gevent_websocket_server(port: int, redis_url: str = "") -> None:
    """gevent-websocket on gevent.pywsgi, the classic gevent answer (one process)."""
    from gevent import monkey

    monkey.patch_all()
    from gevent.pywsgi import WSGIServer
    from geventwebsocket.handler import WebSocketHandler

    app = redis_fanout(redis_url) if redis_url else greenserve_app
    WSGIServer(
        ("127.0.0.1", port), app, handler_class=WebSocketHandler, log=None, backlog=4096
    ).serve_forever()


async def asgi_echo(scope: dict, receive: Any, send: Any) -> None:
    """uvicorn with the websockets library (asyncio + uvloop): the reference."""
    if scope["type"] != "websocket":
        return
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": event.get("text")})


if __name__ == "__main__":
    import sys

    gevent_websocket_server(int(sys.argv[1]), *sys.argv[2:3])
