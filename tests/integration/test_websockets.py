"""WebSockets through the libraries people already use, with their real clients."""

from __future__ import annotations

import socket

import pytest

from tests.helpers import per_worker, running, wait_until


@pytest.fixture(scope="module")
def flask_sock_server():
    with running(
        "ws_apps:app",
        "--protocol",
        "http",
        "-w",
        "1",
        "--stats-interval",
        "0.1",
        "--request-timeout",
        "1",
        "--keepalive-timeout",
        "1",
    ) as server:
        server.started()
        yield server
        assert "app_error" not in server.output


class TestFlaskSock:
    """Flask-Sock (simple-websocket) unmodified: the handshake, messages, close."""

    def test_echo_with_simple_websocket_client(self, flask_sock_server):
        import simple_websocket

        host, port = flask_sock_server.address
        client = simple_websocket.Client.connect(f"ws://{host}:{port}/echo")
        try:
            for text in ("hello", "caf\u00e9", "x" * 70000):
                client.send(text)
                assert client.receive(timeout=5) == text
            client.send(b"\x00\x01binary")
            assert client.receive(timeout=5) == b"\x00\x01binary"
        finally:
            client.close()

    def test_outlives_the_request_and_keepalive_timeouts(self, flask_sock_server):
        """A WebSocket is no request: --request-timeout and --keepalive-timeout (1 s) do not
        cut it."""
        import time

        import websocket  # websocket-client, another real client

        host, port = flask_sock_server.address
        ws = websocket.create_connection(f"ws://{host}:{port}/echo", timeout=10)
        try:
            started = time.monotonic()
            while time.monotonic() - started < 2.5:  # past both timeouts, bounded
                ws.send("still here")
                assert ws.recv() == "still here"
            ws.send("bye")
        finally:
            ws.close()
        wait_until(
            lambda: (
                per_worker(flask_sock_server, "greenserve_connections_upgraded_total").get("0", 0)
                >= 1
            ),
            10,
            "upgrades counted",
        )

    def test_plain_http_beside_websockets(self, flask_sock_server):
        import urllib.request

        host, port = flask_sock_server.address
        with urllib.request.urlopen(f"http://{host}:{port}/plain", timeout=5) as response:
            assert response.read() == b"plain http still works"

    def test_a_bad_handshake_is_refused_and_the_worker_serves_on(self, flask_sock_server):
        with socket.create_connection(flask_sock_server.address, timeout=10) as sock:
            sock.sendall(
                b"GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            data = sock.recv(4096)
        assert not data.startswith(b"HTTP/1.1 101")  # no key: no switch


class TestSocketIO:
    """python-socketio / Flask-SocketIO in gevent mode, websocket transport only."""

    def test_websocket_transport(self):
        import socketio

        with running("ws_apps:socketio_app", "--protocol", "http", "-w", "1") as server:
            server.started()
            host, port = server.address
            client = socketio.SimpleClient()
            client.connect(f"http://{host}:{port}", transports=["websocket"], wait_timeout=10)
            try:
                assert client.transport == "websocket"
                client.emit("ping_me", {"n": 1})
                event, data = client.receive(timeout=10)
                assert event == "pong" and data == {"got": {"n": 1}}
            finally:
                client.disconnect()


class TestIdle:
    """--idle-timeout ends an idle HTTP connection, not an idle WebSocket."""

    def test_idle_websocket_survives_idle_timeout(self):
        import time

        import websocket

        with running(
            "ws_apps:app",
            "--protocol",
            "http",
            "-w",
            "1",
            "--idle-timeout",
            "1",
            "--keepalive-timeout",
            "0",
        ) as server:
            server.started()
            host, port = server.address
            ws = websocket.create_connection(f"ws://{host}:{port}/echo", timeout=10)
            idle_http = socket.create_connection(server.address, timeout=10)
            try:
                ws.send("before")
                assert ws.recv() == "before"
                # the idle HTTP connection is closed by the sweeper; wait for that, bounded
                idle_http.settimeout(5)
                started = time.monotonic()
                assert idle_http.recv(1) == b""
                assert time.monotonic() - started < 4
                ws.send("after a silence longer than --idle-timeout")
                assert ws.recv() == "after a silence longer than --idle-timeout"
            finally:
                ws.close()
                idle_http.close()
