"""HTTP/1.1 + WSGI over real sockets: the conformance corpus, real clients, hostile input."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import zlib

import pytest

from greenserve.worker import stackcache
from tests.helpers import (
    APPS_DIR,
    final_responses,
    need,
    read_all,
    scrape,
    serving_http,
    split,
    steady_server,
    wait_totals,
    wait_until,
)
from tests.http_corpus.corpus import MALFORMED, VALID
from tests.http_corpus.exchanges import EXCHANGES, LAST, check_exchange

# Over sockets, one mode: the in-process corpus (tests/unit/test_http_protocol.py) runs every
# request in all three, and random pieces are what reads over TCP look like.
MODES = ("random-split",)


def read_timed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how many seconds that took."""
    started = time.monotonic()
    raw = read_all(sock)
    return raw, time.monotonic() - started


def send(address: tuple[str, int], data: bytes, mode: str, seed: int = 0) -> socket.socket:
    """Open a connection and send ``data`` whole, a byte at a time, or in random pieces."""
    sock = socket.create_connection(address, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for piece in split(data, mode, seed):
            sock.sendall(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before a hostile request is fully sent
    return sock


@pytest.fixture(scope="module")
def corpus_server():
    with steady_server(
        "greenserve_testapps:environ_echo",
        "--protocol",
        "http",
        "--workers",
        "2",
        "--max-body",
        "1m",
        "--header-timeout",
        "3",
        "--keepalive-timeout",
        "3",
        "--stats-interval",
        "0.2",
    ) as server:
        yield server
        assert "app_error" not in server.output


class TestCorpus:
    """Every corpus request over a real socket, split at random points."""

    def test_corpus_is_big_enough(self):
        assert len(VALID) >= 40 and len(MALFORMED) >= 40

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize(
        ("name", "request_bytes", "expected"), VALID, ids=[v[0] for v in VALID]
    )
    def test_valid(self, corpus_server, name, request_bytes, expected, mode):
        sock = send(
            corpus_server.address,
            request_bytes + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            mode,
            zlib.crc32(name.encode()),
        )
        responses = final_responses(read_all(sock), head_first=request_bytes.startswith(b"HEAD"))
        closes = responses and responses[0][1].get("connection") == "close"
        assert [status for status, _, _ in responses] == ([200] if closes else [200, 200]), name
        if request_bytes.startswith(b"HEAD"):  # no body: the length says what GET would send
            assert responses[0][2] == b"" and int(responses[0][1]["content-length"]) > 0
        else:
            environ = json.loads(responses[0][2])
            for key, value in expected.items():
                assert environ.get(key) == value, (name, key)
        if closes:  # HTTP/1.0 without keep-alive, or Connection: close
            assert request_bytes.startswith(b"GET / HTTP/1.0\r\n\r\n") or b"close" in request_bytes
        else:  # the connection stayed usable for the request after it
            assert json.loads(responses[1][2])["PATH_INFO"] == "/last"

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize(
        ("name", "request_bytes", "status"), MALFORMED, ids=[m[0] for m in MALFORMED]
    )
    def test_malformed(self, corpus_server, name, request_bytes, status, mode):
        sock = send(corpus_server.address, request_bytes, mode, zlib.crc32(name.encode()))
        raw = read_all(sock)  # the server must close: read_all fails on a hang
        assert raw.startswith(b"HTTP/1.1 "), (name, raw[:80])
        got = int(raw.split()[1])
        assert got == status, (name, raw[:200])
        assert b"Connection: close" in raw.split(b"\r\n\r\n")[0]

    def test_method_rejected_after_two_bytes_is_still_501(self, corpus_server):
        """llhttp rejects "BR" at once; the token must be read on before choosing 400 or 501."""
        sock = socket.create_connection(corpus_server.address, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"BR")
        # the server has only "BR": it must wait for the rest of the token, not answer 400 now
        readable, _, _ = select.select([sock], [], [], 0.3)
        assert readable == []
        sock.sendall(b"EW /pot HTTP/1.1\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 501")

    def test_pipelined_requests_answered_in_order(self, corpus_server):
        batch = (
            b"".join(f"GET /{n} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for n in range(5))
            + b"GET /end HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        responses = final_responses(read_all(send(corpus_server.address, batch, "whole")))
        paths = [json.loads(body)["PATH_INFO"] for _, _, body in responses]
        assert paths == ["/0", "/1", "/2", "/3", "/4", "/end"]

    def test_head_has_no_body_and_http10_closes(self, corpus_server):
        raw = read_all(
            send(
                corpus_server.address,
                b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                "whole",
            )
        )
        head, _, body = raw.partition(b"\r\n\r\n")
        assert body == b"" and b"Content-Length" in head
        raw = read_all(send(corpus_server.address, b"GET / HTTP/1.0\r\n\r\n", "whole"))
        assert raw.startswith(b"HTTP/1.1 200") and b"Connection: close" in raw

    def test_date_and_server_headers_and_one_write(self, corpus_server):
        raw = read_all(
            send(
                corpus_server.address,
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                "whole",
            )
        )
        head = raw.split(b"\r\n\r\n")[0]
        assert re.search(rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", head)
        assert b"\r\nServer: greenserve" in head


@pytest.fixture(scope="module")
def conformance_server():
    with steady_server(
        "greenserve_testapps:conformance", "--protocol", "http", "--workers", "1"
    ) as server:
        yield server


class TestExchanges:
    """Response framing (tests/http_corpus/exchanges.py) over real sockets, cut three ways."""

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize(
        ("name", "request_bytes", "expected", "after"), EXCHANGES, ids=[e[0] for e in EXCHANGES]
    )
    def test_exchange(self, conformance_server, name, request_bytes, expected, after, mode):
        sock = send(
            conformance_server.address, request_bytes + LAST, mode, zlib.crc32(name.encode())
        )
        check_exchange(read_all(sock), request_bytes, expected, after)


class TestApps:
    """WSGI compliance and real clients."""

    @pytest.mark.parametrize("env", [{}, {"GREENSERVE_NO_EXTENSIONS": "1"}], ids=["c", "python"])
    def test_validator_wrapped_app(self, env):
        """wsgiref's validator on the environ of both paths (C fast path, and without it)."""
        with serving_http("greenserve_testapps:validated", env=env) as server:
            server.started()
            conn = http.client.HTTPConnection(*server.address, timeout=10)
            for method, body in (("GET", None), ("POST", b"x" * 5000), ("HEAD", None)):
                conn.request(method, "/v", body=body)
                response = conn.getresponse()
                data = response.read()
                assert response.status == 200
                if method == "POST":
                    assert data == b"got 5000 bytes"
            conn.close()
            assert "app_error" not in server.output and "AssertionError" not in server.output

    def test_validator_wrapped_framing(self):
        """wsgiref.validate around 204, 304, HEAD and Content-Length, on one connection."""
        with serving_http("greenserve_testapps:validated_framing") as server:
            server.started()
            conn = http.client.HTTPConnection(*server.address, timeout=10)
            for method, path, status, body in (
                ("GET", "/204", 204, b""),
                ("GET", "/304", 304, b""),
                ("GET", "/length", 200, b"hello"),
                ("HEAD", "/length", 200, b""),
                ("POST", "/echo", 200, b"got 0 bytes"),
            ):
                conn.request(method, path)
                response = conn.getresponse()
                assert (response.status, response.read()) == (status, body), (method, path)
            conn.close()
            assert "app_error" not in server.output and "AssertionError" not in server.output

    def test_flask_end_to_end_with_urllib_and_keepalive(self):
        with serving_http("flask_app:app", workers=2) as server:
            server.started()
            host, port = server.address
            with urllib.request.urlopen(f"http://{host}:{port}/hello/world?q=1", timeout=10) as r:
                assert json.loads(r.read()) == {"greeting": "hello world", "query": "1"}
            conn = http.client.HTTPConnection(host, port, timeout=10)
            for n in range(5):  # one keep-alive connection, several requests
                conn.request(
                    "POST",
                    "/items",
                    body=json.dumps({"n": n}),
                    headers={"Content-Type": "application/json"},
                )
                response = conn.getresponse()
                assert response.status == 201
                assert json.loads(response.read()) == {"received": {"n": n}}
            conn.request("GET", "/missing")
            assert conn.getresponse().status == 404
            conn.close()

    def test_upload_300k_chunked_upload_and_2mb_stream(self):
        import hashlib

        with serving_http("greenserve_testapps:upload_size") as up:
            up.started()
            payload = bytes(random.Random(1).randrange(256) for _ in range(300_000))
            conn = http.client.HTTPConnection(*up.address, timeout=20)
            conn.request("POST", "/u", body=payload)
            assert (
                conn.getresponse().read().decode()
                == f"300000 {hashlib.sha256(payload).hexdigest()}"
            )
            pieces = [payload[i : i + 10_000] for i in range(0, len(payload), 10_000)]
            conn.request("POST", "/u", body=iter(pieces), encode_chunked=True)
            assert (
                conn.getresponse().read().decode()
                == f"300000 {hashlib.sha256(payload).hexdigest()}"
            )
            conn.request("POST", "/u", body=b"abc", headers={"Expect": "100-continue"})
            assert conn.getresponse().read().decode().startswith("3 ")
            conn.close()
        with serving_http("greenserve_testapps:streamed") as down:
            down.started()
            conn = http.client.HTTPConnection(*down.address, timeout=20)
            conn.request("GET", "/big")
            response = conn.getresponse()
            assert response.getheader("Transfer-Encoding") == "chunked"
            body = response.read()
            assert len(body) == 2 * 1024 * 1024
            assert body[:65536] == b"\x00" * 65536 and body[-1:] == bytes([31])
            conn.close()

    def test_file_wrapper_sends_the_file(self):
        with serving_http("greenserve_testapps:send_file") as server:
            server.started()
            host, port = server.address
            with urllib.request.urlopen(f"http://{host}:{port}/f", timeout=10) as r:
                body = r.read()
                assert int(r.headers["Content-Length"]) == len(body)
            assert body == (APPS_DIR / "greenserve_testapps.py").read_bytes()

    def test_app_errors_are_500_or_a_close_and_counted(self):
        with serving_http("greenserve_testapps:raises", "--stats-interval", "0.1") as server:
            server.started()
            raw = read_all(
                send(server.address, b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n", "whole")
            )
            assert raw.startswith(b"HTTP/1.1 500")
            raw = read_all(send(server.address, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n", "whole"))
            assert raw.startswith(b"HTTP/1.1 200")  # headers were out: only a close signals it
            assert not raw.endswith(b"0\r\n\r\n")  # the chunked body never finished
            errors = server.wait_event("app_error", count=2)
            assert all("RuntimeError" in e["exception"] for e in errors)
            wait_totals(server, {"greenserve_handler_errors_total": 2})
            totals = scrape(server)
            assert totals["greenserve_http_requests_total[('code', '500')]"] == 1

    def test_wrk_hello_world(self):
        wrk = shutil.which("wrk")
        if wrk is None:
            if os.environ.get("CI") == "true":
                pytest.fail("wrk is missing in CI: .ci/run must install it")
            pytest.skip("wrk not installed (Debian package wrk)")
        with serving_http("--stats-interval", "0.2", workers=2) as server:
            server.started()
            host, port = server.address
            result = subprocess.run(
                [wrk, "-t1", "-c16", "-d1", f"http://{host}:{port}/"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 0, result.stderr
            requests = int(re.search(r"(\d+) requests in", result.stdout).group(1))
            assert "Non-2xx" not in result.stdout and "Socket errors" not in result.stdout

            # wrk stops counting with up to one request in flight per connection (16).
            def served():
                count = scrape(server)["greenserve_http_requests_total[('code', '200')]"]
                return count if requests <= count <= requests + 16 else None

            wait_until(served, 5, f"{requests}..{requests + 16} requests counted")


class TestFairness:
    """A connection that keeps its pipe full does not keep the others waiting."""

    def test_a_new_connection_is_served_between_a_pipelined_flood(self):
        with serving_http("greenserve_testapps:busy_sequence") as server:
            server.started()
            flood = socket.create_connection(server.address, timeout=10)
            # 100 requests of 2 ms of CPU each, all in the socket at once: 200 ms of work
            flood.sendall(b"GET /?ms=2 HTTP/1.1\r\nHost: a\r\n\r\n" * 100)
            with socket.create_connection(server.address, timeout=10) as other:
                other.sendall(b"GET /?ms=0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                order = int(read_all(other).split(b"\r\n\r\n", 1)[1])
            flood.close()
            # Served in its turn, not after the flood (it would be 101st): a few flood
            # requests may go first, depending on when its connection was accepted.
            assert order < 50, order


class TestTimeoutsAndDrain:
    """Slow clients are cut off; stops finish in-flight requests and close idle ones."""

    # The header, keep-alive and body-wait clocks run on a fake clock in process
    # (tests/unit/test_phases.py); these are the stops, which need a real master.

    def test_term_finishes_in_flight_with_connection_close(self):
        with serving_http(
            "greenserve_testapps:slow_hello",
            "--keepalive-timeout",
            "30",
            "--stats-interval",
            "0.05",
        ) as server:
            server.started()
            idle = socket.create_connection(server.address, timeout=10)
            busy = send(server.address, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "whole")
            wait_until(
                lambda: scrape(server)["greenserve_http_requests_in_flight"] == 1, 5, "in flight"
            )
            server.signal(signal.SIGTERM)
            assert read_all(idle) == b""  # no request within the drain grace: closed
            raw = read_all(busy)
            assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"slow done")
            assert b"Connection: close" in raw
            assert server.wait_exit(10) == 0
            # closed by the server as an ordinary end of a connection, not a handler's failure
            assert server.find("handler_error") == []


class TestHttpMetrics:
    """Requests by code, durations and access logs."""

    def test_requests_by_code_histogram_and_access_log(self):
        with serving_http("--access-log", "--stats-interval", "0.1") as server:
            server.started()
            host, port = server.address
            for _ in range(7):
                with urllib.request.urlopen(f"http://{host}:{port}/x", timeout=5) as r:
                    r.read()
            read_all(send(server.address, b"BREW / HTTP/1.1\r\n\r\n", "whole"))
            wait_totals(
                server,
                {
                    "greenserve_http_requests_total[('code', '200')]": 7,
                    "greenserve_http_requests_total[('code', '501')]": 1,
                    "greenserve_http_request_duration_seconds_count": 8,
                },
            )
            event = server.wait_event("request", count=7)[0]
            assert event["method"] == "GET" and event["path"] == "/x" and event["status"] == 200
            assert (
                event["bytes"] == 14 and "duration_ms" in event and event["peer"].startswith("127.")
            )


def test_hello_is_the_default_http_app():
    with serving_http() as server:
        server.started()
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as r:
            assert r.read() == b"Hello, world!\n"


def test_each_connection_starts_in_an_empty_context_on_a_reused_greenlet():
    """Connection greenlets are kept for the next connection (protocols/runners.py): what one
    connection's app set in a ContextVar is not what the next one sees."""
    with serving_http("greenserve_testapps:context_per_connection") as server:
        server.started()
        host, port = server.address
        answers = []
        for index in range(10):
            request = urllib.request.Request(
                f"http://{host}:{port}/c{index}", headers={"Connection": "close"}
            )
            with urllib.request.urlopen(request, timeout=5) as r:
                answers.append(json.loads(r.read()))
        assert [answer["seen"] for answer in answers] == [None] * 10
        # one after another: a greenlet that served an earlier connection served a later one
        assert max(answer["served"] for answer in answers) > 1, answers


@pytest.mark.skipif(
    stackcache.stats() is None and os.environ.get("CI") != "true",
    reason="greenserve._stackcache is not built (no compiler at install)",
)
def _worker_reports(app: str) -> dict:
    """What ``app``, run in a worker, answers to ``GET /`` (JSON)."""
    with serving_http(app) as server:
        server.started()
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as response:
            return json.loads(response.read())


def test_a_worker_keeps_frame_stack_chunks_for_its_next_greenlets():
    figures = _worker_reports("greenserve_testapps:stack_cache")
    assert figures["installed"] is True
    assert figures["reused"] >= 19  # the app's 20 greenlets, one after another


def test_connections_and_requests_leave_no_reference_cycles():
    """What a connection and its requests made is freed when they end, not left to the cyclic
    GC (which then ran often enough to cost CPU per connection). The app turns the GC off first,
    so whatever the traffic left in a cycle is still there to be found."""
    with serving_http("h2_apps:app") as server:
        server.started()
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/gc-off", timeout=5) as r:
            assert r.status == 200
        for _ in range(20):
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(b"GET /env HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                assert read_all(sock).startswith(b"HTTP/1.1 200 OK")
        connection = http.client.HTTPConnection(host, port, timeout=10)
        for _ in range(20):
            connection.request("GET", "/env")
            assert connection.getresponse().read()
        connection.close()
        with urllib.request.urlopen(f"http://{host}:{port}/cycles", timeout=5) as r:
            assert json.loads(r.read()) == {}


class TestLastAnswer:
    """The answer before a close (Connection: close, HTTP/1.0) is held until the close so that
    both leave together: the client must read all of it and then an orderly end."""

    REQUESTS = (
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"HEAD / HTTP/1.0\r\n\r\n",
    )

    def test_whole_then_end_of_stream_never_a_reset(self):
        with serving_http() as server:
            server.started()
            for request in self.REQUESTS:
                for _ in range(30):
                    with socket.create_connection(server.address, timeout=10) as sock:
                        sock.sendall(request)
                        data = b""
                        while chunk := sock.recv(65536):  # a reset raises: the test fails
                            data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), data
                    assert b"Connection: close" in head
                    expected = b"" if request.startswith(b"HEAD") else b"Hello, world!\n"
                    assert body == expected, data

    def test_curl_over_http_1_0(self):
        curl = need("curl")  # a real HTTP/1.0 client: skipped locally without it, not in CI
        with serving_http() as server:
            server.started()
            host, port = server.address
            out = subprocess.run(
                [curl, "-s", "--http1.0", "--max-time", "10", f"http://{host}:{port}/"],
                capture_output=True,
                timeout=20,
            )
            assert out.returncode == 0 and out.stdout == b"Hello, world!\n", out

    def test_a_streamed_body_is_not_held(self):
        with serving_http("deadline_app:app") as server:
            server.started()
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(b"GET /stall?s=5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                data = b""
                deadline = time.monotonic() + 3  # well before the app's 5 s sleep ends
                while b"first chunk" not in data and time.monotonic() < deadline:
                    sock.settimeout(max(deadline - time.monotonic(), 0.01))
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        break
                    if not chunk:
                        break
                    data += chunk
            assert b"first chunk" in data, data


def test_a_worker_serves_with_gevents_socket_getattr_hook_gone():
    """greenserve.worker.socket_class: installed in every worker, the names it served kept."""
    shown = _worker_reports("greenserve_testapps:socket_class_state")
    assert shown["hook"] is False
    assert shown["sendmsg_afalg"] in (True, None)  # still reachable where the platform has it
