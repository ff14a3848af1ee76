"""WebSocket apps as their users write them: Flask-Sock and Flask-SocketIO (gevent mode)."""

from __future__ import annotations

import itertools
import os
import time

from flask import Flask
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)


@sock.route("/echo")
def echo(ws) -> None:
    while True:
        message = ws.receive()
        if message == "bye":
            ws.close()
            return
        ws.send(message)


@app.get("/plain")
def plain() -> str:
    return "plain http still works"


def make_socketio() -> Flask:
    from flask_socketio import SocketIO, emit

    sio_app = Flask(__name__)
    socketio = SocketIO(sio_app, async_mode="gevent")

    @socketio.on("ping_me")
    def ping_me(data: dict) -> None:
        emit("pong", {"got": data})

    return sio_app


socketio_app = make_socketio()


def socketio_queue_app(redis_url: str) -> Flask:
    """Flask-SocketIO with a Redis message queue, as its docs set it up for several workers:
    an emit from any worker reaches the clients of every worker. Loaded as
    ``ws_apps:socketio_queue_app("redis://...")``."""
    from flask_socketio import SocketIO, emit

    queue_app = Flask(__name__)
    socketio = SocketIO(queue_app, async_mode="gevent", message_queue=redis_url)

    @socketio.on("connect")
    def connected() -> None:
        emit("hello", {"pid": os.getpid()})

    @queue_app.get("/broadcast")
    def broadcast() -> dict:
        socketio.emit("news", {"from": os.getpid()})
        return {"pid": os.getpid()}

    return queue_app


def gevent_websocket_echo(environ: dict, start_response):
    """The gevent-websocket way (Flask-Sockets, old Socket.IO): environ["wsgi.websocket"]."""
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"websocket expected\n"]
    while not ws.closed:
        message = ws.receive()
        if message is None:
            break
        if message == "close please":
            ws.close(4000, "asked")
            continue
        ws.send(message)
    return []


PAGE = b"""<!doctype html>
<html><head><title>greenserve websocket</title></head>
<body><ul id="log"></ul>
<script>
const log = document.getElementById("log");
const ws = new WebSocket(`ws://${location.host}/ws`);
let received = 0;
ws.onopen = () => { for (const text of ["one", "two", "caf\\u00e9"]) ws.send(text); };
ws.onmessage = (event) => {
  const item = document.createElement("li");
  item.textContent = "echo: " + event.data;
  log.appendChild(item);
  received += 1;
  if (received === 3) { document.title = "done"; ws.close(1000); }
};
ws.onerror = () => { document.title = "error"; };
</script></body></html>
"""


def browser_page(environ: dict, start_response):
    """/ serves a page whose script echoes three messages over /ws (wsgi.websocket)."""
    if environ["PATH_INFO"] == "/ws":
        return gevent_websocket_echo(environ, start_response)
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [PAGE]


_served = itertools.count(1)


def busy_ws(environ: dict, start_response):
    """Each WebSocket message costs 2 ms of CPU (no yield) and is answered with this worker's
    serving order; a plain request gets its order too."""
    ws = environ.get("wsgi.websocket")
    if ws is None:
        body = str(next(_served)).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    while (message := ws.receive()) is not None:
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        ws.send(f"{message} {next(_served)}")
    return []


def line_echo_upgrade(environ: dict, start_response):
    """``Upgrade: x-line-echo``, another protocol than WebSocket, taken over by the app on
    gunicorn.socket after its own 101: it echoes what it receives until the client closes."""
    if environ.get("HTTP_UPGRADE", "").lower() != "x-line-echo":
        start_response(
            "426 Upgrade Required", [("Upgrade", "x-line-echo"), ("Content-Length", "0")]
        )
        return []
    sock = environ["gunicorn.socket"]
    sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-line-echo\r\nConnection: Upgrade\r\n\r\n"
    )
    while data := sock.recv(4096):
        sock.sendall(data)
    return []


def every_kind(environ: dict, start_response):
    """One app for the access-log and upgrade-count tests: Flask-Sock (app-owned socket) at
    /echo, wsgi.websocket at /gws, another protocol taken over at /raw, a slow view at /sleep
    (for --request-timeout), Flask for the rest."""
    path = environ["PATH_INFO"]
    if path == "/gws":
        return gevent_websocket_echo(environ, start_response)
    if path == "/raw":
        return line_echo_upgrade(environ, start_response)
    if path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or "1"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]
    return app(environ, start_response)


_listeners: set = set()


def broadcast_ws(environ: dict, start_response):
    """wsgi.websocket: every connection listens; one that sends "blast N SIZE" has N messages
    of SIZE bytes sent to each other connection from its own greenlet, then hears
    "done FAILED SECONDS" (FAILED: sends that raised, each such peer dropped)."""
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("400 Bad Request", [("Content-Length", "0")])
        return []
    _listeners.add(ws)
    try:
        while (message := ws.receive()) is not None:
            if not message.startswith("blast "):
                continue
            _, count, size = message.split()
            payload = b"x" * int(size)
            failed = 0
            started = time.monotonic()
            for _ in range(int(count)):
                for other in list(_listeners):
                    if other is ws:
                        continue
                    try:
                        other.send(payload)
                    except ConnectionError:
                        failed += 1
                        _listeners.discard(other)
            ws.send(f"done {failed} {time.monotonic() - started:.3f}")
    finally:
        _listeners.discard(ws)
    return []
