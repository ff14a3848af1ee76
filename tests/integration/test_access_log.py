"""One access-log line for every response greenserve writes, and one per WebSocket session."""

from __future__ import annotations

import urllib.request
from collections import Counter

import websocket  # websocket-client

from tests.helpers import exchange, scrape, serving_http, wait_until


def header(response: bytes, name: str) -> str:
    for line in response.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode()
    raise AssertionError(f"no {name} in {response[:300]!r}")


class TestEveryResponse:
    """greenserve's own answers, timeouts and WebSockets are logged like the app's responses."""

    def test_lines_ids_and_metrics_agree(self):
        with serving_http(
            "ws_apps:every_kind",
            "--access-log",
            "--request-timeout",
            "0.5",
            "--stats-interval",
            "0.2",
        ) as server:
            server.started()
            address = server.address
            host, port = address
            ids = {}
            for status, request in {
                400: b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
                431: b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
                413: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999\r\n\r\n",
                505: b"GET / HTTP/2.0\r\nHost: a\r\nConnection: close\r\n\r\n",
                504: b"GET /sleep HTTP/1.1\r\nHost: a\r\n\r\n",
                426: b"GET /gws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            }.items():
                response = exchange(address, request)
                assert response.startswith(b"HTTP/1.1 %d " % status), response[:200]
                ids[status] = header(response, "X-Request-ID") if status != 426 else None
            with urllib.request.urlopen(f"http://{host}:{port}/plain", timeout=5) as r:
                assert r.status == 200
                ids[200] = r.headers["X-Request-ID"]
            for path, kind in (("/echo", "app"), ("/gws", "wsgi.websocket")):
                ws = websocket.create_connection(f"ws://{host}:{port}{path}", timeout=10)
                ws.send("hello")
                assert ws.recv() == "hello"
                ws.close()
                [line] = server.wait_event("websocket", path=path)
                assert line["kind"] == kind and line["request_id"]
                assert line["bytes_received"] > 0 and line["bytes_sent"] > 0
                assert line["duration_ms"] >= 0
                if kind == "wsgi.websocket":
                    assert line["close_code"] == 1000
            for status, request_id in ids.items():
                [line] = server.wait_event("request", status=status)
                if request_id is not None:
                    assert line["request_id"] == request_id, (status, line)
            # the timed-out request's own line: its path and how long it ran, not the parser's
            [line] = server.find("request", status=504)
            assert line["path"] == "/sleep" and line["duration_ms"] >= 500, line
            logged = Counter(e["status"] for e in server.find("request"))

            def agree():
                counts = {
                    int(key.split("'")[3]): value
                    for key, value in scrape(server).items()
                    if key.startswith("greenserve_http_requests_total[")
                }
                return counts if counts == dict(logged) else None

            wait_until(agree, 10, f"metrics to agree with the log {dict(logged)}")
