"""WebSocket apps as their users write them: Flask-Sock and Flask-SocketIO (gevent mode)."""

from __future__ import annotations

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
