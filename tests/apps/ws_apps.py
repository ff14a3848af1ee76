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
