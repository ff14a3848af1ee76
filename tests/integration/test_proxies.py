"""Behind proxies: PROXY protocol on real connections, forwarded headers, --root-path, and the
drain a load balancer can see (--drain-delay)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time

from tests.helpers import by_label, exchange, ipv4_block, running, serving_http, v2, wait_until

REQUEST = b"GET /where HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def body_json(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def failures(server) -> dict[str, float]:
    return by_label(server, "greenserve_proxy_protocol_failures_total", "reason")


class TestProxyProtocol:
    """The app sees the client the proxy names; bad or missing headers close, count, go on."""

    def test_http_v1_and_v2(self):
        with serving_http("greenserve_testapps:environ_echo_remote", "--proxy-protocol") as server:
            server.started()
            line = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 8000\r\n"
            assert body_json(exchange(server.address, line + REQUEST))["REMOTE_ADDR"] == (
                "198.51.100.7"
            )
            header = v2(1, 0x11, ipv4_block("203.0.113.9", "10.0.0.1", 4242, 8000), b"\x04\x00\x00")
            shown = body_json(exchange(server.address, header + REQUEST))
            assert shown["REMOTE_ADDR"] == "203.0.113.9" and shown["REMOTE_PORT"] == "4242"
            # sent byte by byte: the header is still read exactly, the request after it whole
            with socket.create_connection(server.address, timeout=10) as sock:
                for byte in line + REQUEST:
                    sock.sendall(bytes([byte]))
                assert b"198.51.100.7" in sock.recv(65536)

    def test_tcp_handler_gets_the_client_address(self):
        with running("greenserve_testapps:tell_address", "-w", "1", "--proxy-protocol") as server:
            server.started()
            out = exchange(server.address, b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 8000\r\nhi\n")
            assert out == b"198.51.100.7:5555 hi\n"

    def test_refused_headers_close_and_count(self):
        with serving_http(
            "--proxy-protocol", "--header-timeout", "1", "--stats-interval", "0.1"
        ) as server:
            server.started()
            pid = server.worker_pids()
            assert exchange(server.address, b"PROXY TCP4 nonsense\r\n" + REQUEST) == b""
            assert exchange(server.address, REQUEST) == b""  # no header at all: malformed
            started = time.monotonic()
            assert exchange(server.address, b"") == b""  # silent: closed at the deadline
            assert time.monotonic() - started < 8  # the header timeout, not the idle one
            wait_until(
                lambda: (
                    failures(server).get("malformed", 0) >= 2
                    and failures(server).get("timeout", 0) >= 1
                ),
                10,
                "failures counted",
            )
            assert server.worker_pids() == pid

    def test_peer_not_allowed(self):
        with serving_http(
            "--proxy-protocol", "--proxy-allow-from", "192.0.2.1", "--stats-interval", "0.1"
        ) as server:
            server.started()
            line = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 8000\r\n"
            assert exchange(server.address, line + REQUEST) == b""
            wait_until(lambda: failures(server).get("not_allowed", 0) >= 1, 10, "counted")


class TestForwardedHeaders:
    """Trusted only from --forwarded-allow-ips; --root-path sets SCRIPT_NAME."""

    def test_trusted_and_untrusted(self):
        headers = (
            b"X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: shop.example\r\nX-Request-ID: from-proxy\r\n"
        )
        request = REQUEST.replace(b"Host: a\r\n", b"Host: a\r\n" + headers)
        with serving_http(
            "greenserve_testapps:environ_echo_remote", "--root-path", "/api"
        ) as server:  # default: 127.0.0.1 trusted
            server.started()
            shown = body_json(exchange(server.address, request))
            assert shown["REMOTE_ADDR"] == "198.51.100.7"
            assert shown["wsgi.url_scheme"] == "https" and shown["HTTP_HOST"] == "shop.example"
            assert shown["HTTP_X_REQUEST_ID"] == "from-proxy"
            assert shown["SCRIPT_NAME"] == "/api" and shown["PATH_INFO"] == "/where"
            prefixed = exchange(server.address, request.replace(b"GET /where", b"GET /api/where"))
            assert body_json(prefixed)["PATH_INFO"] == "/where"
        with serving_http(
            "greenserve_testapps:environ_echo_remote", "--forwarded-allow-ips", "192.0.2.1"
        ) as server:
            server.started()
            shown = body_json(exchange(server.address, request))
            assert shown["REMOTE_ADDR"] == "127.0.0.1" and shown["wsgi.url_scheme"] == "http"
            assert shown["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 198.51.100.7"  # left for the app
            assert shown["HTTP_X_REQUEST_ID"] != "from-proxy"  # ids only from trusted peers

    def test_on_a_kept_alive_connection_each_request_as_forwarded(self):
        """HAProxy's forwardfor with backend keep-alive: every request on one connection
        carries its client's headers, and each is applied (after the first, the requests run
        in the C cycle and loop when they are built)."""
        with serving_http("greenserve_testapps:environ_echo_remote") as server:
            server.started()
            host, port = server.address
            connection = http.client.HTTPConnection(host, port, timeout=10)
            for index in range(1, 6):
                proto = ("http", "https")[index % 2]
                connection.request("GET", f"/r{index}", headers={
                    "X-Forwarded-For": f"198.51.100.{index}",
                    "X-Forwarded-Proto": proto,
                    "X-Forwarded-Host": f"shop{index}.example",
                })  # fmt: skip
                shown = json.loads(connection.getresponse().read())
                assert shown["REMOTE_ADDR"] == f"198.51.100.{index}"
                assert shown["wsgi.url_scheme"] == proto
                assert shown["HTTP_HOST"] == f"shop{index}.example"
            connection.request("GET", "/plain")  # none forwarded: the peer itself
            shown = json.loads(connection.getresponse().read())
            assert shown["REMOTE_ADDR"] == "127.0.0.1" and shown["HTTP_HOST"] == f"{host}:{port}"
            connection.close()


class TestDrainDelay:
    """TERM with --drain-delay: /healthz 503 at once, serving goes on, then a graceful stop."""

    def test_drain_delay(self):
        with serving_http("--drain-delay", "2", workers=2) as server:
            server.started()
            host, port = server.address
            server.signal(signal.SIGTERM)
            signalled = time.monotonic()
            _, body = wait_until(
                lambda: (lambda h: h if h[0] == 503 else None)(server.health()), 2, "503"
            )
            assert body["status"] == "draining"
            served, closing = 0, []
            while time.monotonic() - signalled < 1.5:  # bounded: the drain lasts 2 s
                conn = http.client.HTTPConnection(host, port, timeout=5)
                conn.request("GET", "/")
                response = conn.getresponse()
                assert response.status == 200 and response.read() == b"Hello, world!\n"
                closing.append(response.getheader("Connection") == "close")
                conn.close()
                served += 1
            assert served > 10
            # each worker sees the drain within its 0.1 s probe: from then on every response
            # closes its connection
            settled = len(closing) - closing[::-1].index(False) if False in closing else 0
            assert settled < served // 2, closing
            assert server.wait_exit(20) == 0
            assert time.monotonic() - signalled >= 2.0
