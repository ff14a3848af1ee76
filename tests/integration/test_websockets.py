"""WebSockets through the libraries people already use, with their real clients."""

from __future__ import annotations

import json
import socket

import pytest

from tests.helpers import per_worker, read_all, serving_http, wait_until


@pytest.fixture(scope="module")
def flask_sock_server():
    with serving_http(
        "ws_apps:app",
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


def without_gevent_websocket(tmp_path) -> dict[str, str]:
    """A server environment where gevent-websocket cannot be imported: engineio then answers
    the WebSocket itself with simple-websocket on gunicorn.socket (the app owns the socket)."""
    hidden = tmp_path / "hide" / "geventwebsocket"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    return {"PYTHONPATH": str(tmp_path / "hide")}


class TestSocketIO:
    """python-socketio / Flask-SocketIO in gevent mode, websocket transport only. engineio
    speaks on environ["wsgi.websocket"] when gevent-websocket is importable in the server, else
    with simple-websocket on gunicorn.socket: both ways, the second by hiding the first."""

    @pytest.mark.parametrize("way", ["wsgi.websocket", "gunicorn.socket"])
    def test_websocket_transport(self, way, tmp_path):
        import socketio

        env = without_gevent_websocket(tmp_path) if way == "gunicorn.socket" else {}
        with serving_http("ws_apps:socketio_app", "--stats-interval", "0.1", env=env) as server:
            server.started()
            host, port = server.address
            client = socketio.SimpleClient()
            client.connect(f"http://{host}:{port}", transports=["websocket"], wait_timeout=10)
            try:
                assert client.transport == "websocket"
                client.emit("ping_me", {"n": 1})
                event, data = client.receive(timeout=10)
                assert event == "pong" and data == {"got": {"n": 1}}
                # counted either way, as wsgi.websocket or as a WebSocket the app answered
                ours = 1 if way == "wsgi.websocket" else 0
                wait_until(
                    lambda: (
                        per_worker(server, "greenserve_upgraded_connections_active").get("0") == 1
                        and per_worker(server, "greenserve_websocket_connections_active").get("0")
                        == ours
                    ),
                    10,
                    f"the Socket.IO connection counted ({way})",
                )
            finally:
                client.disconnect()


class TestIdle:
    """--idle-timeout ends an idle HTTP connection, not an idle WebSocket."""

    def test_idle_websocket_survives_idle_timeout(self):
        import time

        import websocket

        with serving_http(
            "ws_apps:app", "--idle-timeout", "1", "--keepalive-timeout", "0"
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
                assert time.monotonic() - started < 8  # closed by the sweeper, not never
                ws.send("after a silence longer than --idle-timeout")
                assert ws.recv() == "after a silence longer than --idle-timeout"
            finally:
                ws.close()
                idle_http.close()


@pytest.fixture(scope="module")
def gws_server():
    with serving_http(
        "ws_apps:gevent_websocket_echo", "--ws-max-message", "64k", "--stats-interval", "0.1"
    ) as server:
        server.started()
        yield server


def handshake(key: bytes | None = b"dGhlIHNhbXBsZSBub25jZQ==", version: bytes = b"13") -> bytes:
    lines = [
        b"GET /ws HTTP/1.1",
        b"Host: a",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: " + version,
    ]
    if key is not None:
        lines.append(b"Sec-WebSocket-Key: " + key)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def frame(opcode: int, payload: bytes, masked: bool = True, fin: bool = True) -> bytes:
    import os
    import struct

    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        head += bytes([mask_bit | len(payload)])
    elif len(payload) < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", len(payload))
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_code(sock: socket.socket) -> int:
    """Read frames until the server's Close; its status code."""
    import struct

    data = b""
    sock.settimeout(10)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed without a Close frame: {data[-40:]!r}")
        data += chunk
        frames = data
        if data.startswith(b"HTTP/"):  # the 101 is still in front of the frames
            head_end = data.find(b"\r\n\r\n")
            frames = data[head_end + 4 :] if head_end >= 0 else b""
        while len(frames) >= 2:
            opcode, length = frames[0] & 0x0F, frames[1] & 0x7F
            offset = 2
            if length == 126:
                length, offset = struct.unpack("!H", frames[2:4])[0], 4
            if len(frames) < offset + length:
                break
            if opcode == 8:
                return struct.unpack("!H", frames[offset : offset + 2])[0]
            frames = frames[offset + length :]


class TestGeventWebsocketApi:
    """environ["wsgi.websocket"]: receive, send, close, closed; RFC 6455 answers to bad input."""

    def test_echo_ping_and_close(self, gws_server):
        import websocket

        host, port = gws_server.address
        ws = websocket.create_connection(f"ws://{host}:{port}/ws", timeout=10)
        try:
            ws.send("hello")
            assert ws.recv() == "hello"
            ws.send_binary(b"\x00\xffbin")
            assert ws.recv() == b"\x00\xffbin"
            ws.ping(b"are you there")
            opcode = ws.recv_data_frame(control_frame=True)[0]
            assert opcode == websocket.ABNF.OPCODE_PONG
            ws.send("close please")
            opcode, close = ws.recv_data_frame(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            assert close.data[:2] == (4000).to_bytes(2, "big")
        finally:
            ws.close()

    def test_handshake_errors(self, gws_server):
        for request, status in ((handshake(version=b"8"), b"426"), (handshake(key=None), b"400")):
            with socket.create_connection(gws_server.address, timeout=10) as sock:
                sock.sendall(request)
                answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
            if status == b"426":
                assert b"Sec-WebSocket-Version: 13" in answer

    @pytest.mark.parametrize(
        ("bad", "code"),
        [
            (frame(1, b"unmasked", masked=False), 1002),
            (frame(1, b"\xff\xfe invalid utf-8"), 1007),
            (frame(9, b"x", fin=False), 1002),  # a fragmented control frame
            (frame(3, b"reserved opcode"), 1002),
            (frame(2, b"x" * 70000), 1009),  # over --ws-max-message 64k
        ],
        ids=["unmasked", "bad-utf8", "fragmented-ping", "bad-opcode", "too-big"],
    )
    def test_protocol_errors_close_with_their_code(self, gws_server, bad, code):
        pids = gws_server.worker_pids()
        with socket.create_connection(gws_server.address, timeout=10) as sock:
            sock.sendall(handshake())
            sock.sendall(bad)
            assert close_code(sock) == code
        assert gws_server.worker_pids() == pids

    def test_graceful_stop_sends_1001(self):
        import time

        with serving_http("ws_apps:gevent_websocket_echo", "--graceful-timeout", "10") as server:
            server.started()
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(handshake())
                sock.recv(4096)  # the 101
                stopped = time.monotonic()
                server.signal(__import__("signal").SIGTERM)
                assert close_code(sock) == 1001
                sock.sendall(frame(8, b"\x03\xe9"))  # the client's Close reply
                assert server.wait_exit(15) == 0
                assert time.monotonic() - stopped < 8  # well before --graceful-timeout

    def test_metrics(self, gws_server):
        import websocket

        host, port = gws_server.address
        ws = websocket.create_connection(f"ws://{host}:{port}/ws", timeout=10)
        ws.send("count me")
        assert ws.recv() == "count me"
        wait_until(
            lambda: per_worker(gws_server, "greenserve_websocket_connections_active").get("0") == 1,
            10,
            "one open WebSocket",
        )
        ws.close()
        wait_until(
            lambda: (
                per_worker(gws_server, "greenserve_websocket_connections_active").get("0") == 0
                and per_worker(gws_server, "greenserve_websocket_messages_received_total").get(
                    "0", 0
                )
                >= 2
            ),
            10,
            "closed and counted",
        )


def test_a_failed_websocket_does_not_wait_for_a_silent_peer():
    """After a protocol error the server closes the TCP connection itself (RFC 6455 7.1.7):
    a hostile peer that stays silent cannot keep a greenlet (no idle timeout applies)."""
    with serving_http("ws_apps:gevent_websocket_echo") as server:
        server.started()
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(handshake())
            sock.sendall(frame(1, b"unmasked", masked=False))
            assert close_code(sock) == 1002
            sock.settimeout(5)
            rest = b""
            while chunk := sock.recv(4096):  # the server closes: recv ends, no timeout
                rest += chunk


def test_ping_interval_answers_and_drops_a_silent_peer():
    """--ws-ping-interval: a live client answers pings and stays; one that stops is closed."""
    import time

    import websocket

    with serving_http("ws_apps:gevent_websocket_echo", "--ws-ping-interval", "0.3") as server:
        server.started()
        host, port = server.address
        live = websocket.create_connection(f"ws://{host}:{port}/ws", timeout=10)
        try:
            started = time.monotonic()
            while time.monotonic() - started < 1.2:  # websocket-client answers pings on recv
                live.send("alive")
                assert live.recv() == "alive"
        finally:
            live.close()
        with socket.create_connection(server.address, timeout=10) as silent:
            silent.sendall(handshake())
            # never answers: the second ping finds the first unanswered and closes with 1011
            assert close_code(silent) == 1011


def test_a_websocket_flood_does_not_keep_other_connections_waiting():
    """100 messages sent at once, 2 ms of CPU each: a plain request is served in between."""
    with serving_http("ws_apps:busy_ws") as server:
        server.started()
        with socket.create_connection(server.address, timeout=10) as flood:
            flood.sendall(handshake())
            assert flood.recv(4096).startswith(b"HTTP/1.1 101 ")
            flood.sendall(b"".join(frame(1, b"m") for _ in range(100)))
            with socket.create_connection(server.address, timeout=10) as other:
                other.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                order = int(read_all(other).split(b"\r\n\r\n", 1)[1])
        # in its turn, not after the flood (it would be 101st)
        assert order < 50, order


class TestAppOwnedOnStopAndReload:
    """Flask-Sock and Socket.IO sockets end promptly on stop and HUP, with a Close frame."""

    @staticmethod
    def _close_frame(ws) -> tuple[int, bytes]:
        import websocket

        while True:  # the echo route sends nothing unasked: the next frame is the close
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return opcode, data

    @pytest.mark.parametrize("how", ["TERM", "HUP"])
    def test_flask_sock_gets_1001_within_the_close_timeout(self, how):
        import signal
        import time

        import websocket

        with serving_http("ws_apps:app", "--graceful-timeout", "30") as server:
            server.started()
            host, port = server.address
            ws = websocket.create_connection(f"ws://{host}:{port}/echo", timeout=10)
            ws.send("open")
            assert ws.recv() == "open"
            started = time.monotonic()
            server.signal(signal.SIGTERM if how == "TERM" else signal.SIGHUP)
            _, data = self._close_frame(ws)
            took = time.monotonic() - started
            assert data[:2] == (1001).to_bytes(2, "big"), data
            assert took < 15, f"the close came after {took:.1f} s"  # 3 s, not the graceful 30 s
            ws.close()
            if how == "TERM":
                assert server.wait_exit(timeout=10) == 0
            else:
                server.wait_event("reload_complete", timeout=15)
                server.wait_event("worker_stopped", timeout=10)
                # the new worker serves WebSockets as before
                again = websocket.create_connection(f"ws://{host}:{port}/echo", timeout=10)
                again.send("again")
                assert again.recv() == "again"
                again.close()

    def test_socketio_client_sees_the_disconnect_on_stop(self, tmp_path):
        import signal
        import time

        import socketio

        env = without_gevent_websocket(tmp_path)  # the app's own socket, as this class says
        with serving_http("ws_apps:socketio_app", env=env) as server:
            server.started()
            host, port = server.address
            client = socketio.Client(reconnection=False)
            gone = []
            client.on("disconnect", lambda *reason: gone.append(time.monotonic()))
            client.connect(f"http://{host}:{port}", transports=["websocket"], wait_timeout=10)
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            wait_until(lambda: gone, 10, "the client's disconnect")
            assert gone[0] - started < 15  # --ws-close-timeout (3 s), not the graceful 30 s
            assert server.wait_exit(timeout=10) == 0
            client.disconnect()


class TestEveryUpgradeCounted:
    """Every connection taken over after an Upgrade is on /metrics, whoever speaks on it:
    wsgi.websocket, a WebSocket the app answered itself (Flask-Sock), another protocol."""

    @staticmethod
    def raw_upgrade(address: tuple[str, int], protocol: bytes) -> tuple[socket.socket, bytes]:
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(
            b"GET /raw HTTP/1.1\r\nHost: a\r\nUpgrade: " + protocol + b"\r\n"
            b"Connection: Upgrade\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return sock, answer

    def test_gauge_and_counters_by_kind(self):
        import simple_websocket
        import websocket

        from tests.helpers import by_label, metrics_url, tool

        def counts() -> tuple[float, dict[str, float], dict[str, float]]:
            return (
                sum(per_worker(server, "greenserve_upgraded_connections_active").values()),
                by_label(server, "greenserve_upgraded_connections_opened_total", "kind"),
                by_label(server, "greenserve_upgraded_connections_closed_total", "kind"),
            )

        with serving_http("ws_apps:every_kind", "--stats-interval", "0.1") as server:
            server.started()
            host, port = server.address
            # refused, each its own way: none of them is an upgraded connection
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(handshake(key=None).replace(b"/ws", b"/echo"))  # Flask-Sock
                assert not sock.recv(4096).startswith(b"HTTP/1.1 101")
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(handshake(version=b"8").replace(b"/ws", b"/gws"))  # wsgi.websocket
                assert sock.recv(4096).startswith(b"HTTP/1.1 426")
            refused, answer = self.raw_upgrade(server.address, b"something-else")
            refused.close()
            assert answer.startswith(b"HTTP/1.1 426")

            flask_sock = [simple_websocket.Client.connect(f"ws://{host}:{port}/echo")]
            flask_sock.append(simple_websocket.Client.connect(f"ws://{host}:{port}/echo"))
            gws = websocket.create_connection(f"ws://{host}:{port}/gws", timeout=10)
            raw, answer = self.raw_upgrade(server.address, b"x-line-echo")
            try:
                assert answer.startswith(b"HTTP/1.1 101")
                raw.sendall(b"line\n")
                assert raw.recv(100) == b"line\n"
                for client in flask_sock:
                    client.send("hi")
                    assert client.receive(timeout=5) == "hi"
                gws.send("hi")
                assert gws.recv() == "hi"
                opened = {"wsgi.websocket": 1, "app": 2, "other": 1}
                none = dict.fromkeys(opened, 0)
                wait_until(lambda: counts() == (4, opened, none), 10, "4 open, by kind")
                status = tool("status", "--json", "--metrics", metrics_url(server))
                report = json.loads(status.stdout)
                assert report["totals"]["upgraded"] == 4
                assert [row["upgraded"] for row in report["workers"]] == [4]
            finally:
                for client in flask_sock:
                    client.close()
                gws.close()
                raw.close()
            wait_until(lambda: counts() == (0, opened, opened), 10, "all closed, by kind")
            # WebSocket closes are wsgi.websocket's only: neither the Flask-Sock sessions nor
            # the refused handshakes count one (they had made 1006s)
            closes = by_label(server, "greenserve_websocket_closes_total", "code")
            assert sum(closes.values()) == 1, closes


class TestSocketIOAcrossWorkers:
    """Flask-SocketIO with a Redis message queue under 2 workers: an emit from whichever worker
    serves the request reaches the clients of both (a real redis-server)."""

    def test_an_emit_reaches_the_clients_of_every_worker(self, tmp_path):
        import time

        import requests
        import socketio

        from tests.helpers import running_redis

        with (
            running_redis(tmp_path) as url,
            serving_http(f'ws_apps:socketio_queue_app("{url}")', workers=2) as server,
        ):
            server.started()
            host, port = server.address
            clients: list = []
            worker_of: list[int] = []
            try:
                for _ in range(20):  # until both workers hold a client (they balance accepts)
                    client = socketio.SimpleClient()
                    clients.append(client)
                    client.connect(
                        f"http://{host}:{port}", transports=["websocket"], wait_timeout=10
                    )
                    event, data = client.receive(timeout=10)
                    assert event == "hello"
                    worker_of.append(data["pid"])
                    if len(set(worker_of)) == 2:
                        break
                assert len(set(worker_of)) == 2, "every client landed on one worker"
                # A worker subscribes to the queue when its first client connects, in the
                # background, and a request to /broadcast lands on either worker: broadcasts are
                # repeated (bounded) until every client has heard one emitted by the worker it
                # is not connected to, which only the queue can carry.
                heard: list[set[int]] = [set() for _ in clients]

                def crossed(index: int) -> bool:
                    return any(pid != worker_of[index] for pid in heard[index])

                deadline = time.monotonic() + 30
                while not all(map(crossed, range(len(clients)))) and time.monotonic() < deadline:
                    requests.get(f"http://{host}:{port}/broadcast", timeout=10).raise_for_status()
                    for index, client in enumerate(clients):
                        try:
                            event, data = client.receive(timeout=2)
                        except socketio.exceptions.TimeoutError:
                            continue
                        if event == "news":
                            heard[index].add(data["from"])
                assert all(map(crossed, range(len(clients)))), (worker_of, heard)
            finally:
                for client in clients:
                    client.disconnect()


class TestSlowReader:
    """--ws-send-buffer: a peer that stops reading costs at most the buffer, is closed with
    1013 after --ws-send-timeout, and holds up neither the sender nor the other peers."""

    COUNT, SIZE = 400, 60000  # 24 MB to each listener, far past what the kernel buffers

    @pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
    def test_a_stalled_peer_is_closed_with_1013_and_a_healthy_one_gets_everything(
        self, tls, tmp_path
    ):
        import ssl
        import threading
        import time

        import trustme
        import websocket

        extra, scheme, sslopt, context = [], "ws", None, None
        if tls:  # the held bytes are ciphertext: TLS records must still leave in order
            ca = trustme.CA()
            ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
                tmp_path / "server.pem"
            )
            ca.cert_pem.write_to_path(tmp_path / "ca.pem")
            extra = ["--certfile", str(tmp_path / "server.pem")]
            scheme, sslopt = "wss", {"ca_certs": str(tmp_path / "ca.pem")}
            context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with serving_http(
            "ws_apps:broadcast_ws",
            "--workers", "1",
            "--ws-send-buffer", "256k",
            "--ws-send-timeout", "2",
            "--stats-interval", "0.1",
            *extra,
        ) as server:  # fmt: skip
            server.started()
            host, port = server.address
            url = f"{scheme}://{host}:{port}/ws"
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.settimeout(10)
            raw.connect(server.address)
            stalled = context.wrap_socket(raw, server_hostname=host) if context else raw
            stalled.sendall(handshake())
            assert stalled.recv(4096).startswith(b"HTTP/1.1 101 ")  # then it reads no more
            healthy = websocket.create_connection(url, timeout=10, sslopt=sslopt)
            received: list[int] = []

            def read() -> None:
                while len(received) < self.COUNT:
                    received.append(len(healthy.recv()))

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            controller = websocket.create_connection(url, timeout=30, sslopt=sslopt)
            wait_until(
                lambda: per_worker(server, "greenserve_websocket_connections_active").get("0") == 3,
                10,
                "three WebSockets open",
            )
            started = time.monotonic()
            controller.send(f"blast {self.COUNT} {self.SIZE}")
            done, failed, _ = controller.recv().split()
            elapsed = time.monotonic() - started
            assert (done, failed) == ("done", "1")  # the stalled peer, once
            assert elapsed < 20
            reader.join(20)
            assert received == [self.SIZE] * self.COUNT
            # The stalled peer reads again: what was held for it, then the Close with 1013.
            assert close_code(stalled) == 1013
            wait_until(
                lambda: per_worker(server, "greenserve_websocket_slow_closes_total").get("0") == 1,
                10,
                "the slow close counted",
            )
            healthy.close()
            controller.close()
            stalled.close()
