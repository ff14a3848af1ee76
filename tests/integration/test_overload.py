"""Overload: --max-inflight and --max-queue-time answer 503 at once; the metrics move."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.helpers import exchange, read_all, scrape, serving_http, tool, wait_until


def head_of(response: bytes) -> str:
    return response.split(b"\r\n\r\n", 1)[0].decode("latin-1")


class TestMaxInflight:
    """Past N requests in flight, the next gets 503 before its body is read."""

    def test_shed_with_retry_after_before_the_body(self):
        with serving_http(
            "deadline_app:app", "--max-inflight", "2", "--stats-interval", "0.1"
        ) as server:
            server.started()
            address = server.address
            slow = [
                threading.Thread(
                    target=exchange,
                    args=(
                        address,
                        b"GET /sleep?s=2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                    ),
                )
                for _ in range(2)
            ]
            for thread in slow:
                thread.start()
            wait_until(
                lambda: scrape(server).get("greenserve_http_requests_in_flight", 0) >= 2,
                10,
                "2 requests in flight",
            )
            # A 10 MB upload announced: the answer comes without one byte of it sent.
            with socket.create_connection(address, timeout=10) as sock:
                sock.sendall(b"POST /fast HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
                response = read_all(sock)
            head = head_of(response)
            assert head.startswith("HTTP/1.1 503 "), head
            assert "Retry-After: 1" in head and "Connection: close" in head
            assert head.startswith("HTTP/1.1 503 Service Unavailable\r\n"), head
            for thread in slow:
                thread.join(15)

            def shed():
                totals = scrape(server)
                key = "greenserve_http_requests_shed_total[('reason', 'inflight')]"
                return totals.get(key) == 1 and totals

            totals = wait_until(shed, 10, "the shed counted")
            assert totals["greenserve_http_requests_total[('code', '503')]"] == 1
            assert any(key.startswith("greenserve_listen_queue[") for key in totals)
            # below the limit again: served
            ok = exchange(address, b"GET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 ")


class TestMaxQueueTime:
    """A request that already waited too long is shed; the header is believed only from a
    trusted proxy, and bad values are counted."""

    @staticmethod
    def request(start: str) -> bytes:
        return (
            b"GET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
            + f"X-Request-Start: {start}\r\n\r\n".encode()
        )

    def test_from_a_trusted_proxy(self):
        with serving_http(
            "deadline_app:app", "--max-queue-time", "1", "--stats-interval", "0.1"
        ) as server:  # 127.0.0.1 is in the default --forwarded-allow-ips
            server.started()
            now = time.time()
            stale = exchange(server.address, self.request(f"t={int((now - 5) * 1e6)}"))
            assert head_of(stale).startswith("HTTP/1.1 503 "), stale[:100]
            fresh = exchange(server.address, self.request(f"t={int(time.time() * 1e3)}"))
            assert fresh.startswith(b"HTTP/1.1 200 ")
            for bad in ("t=soon", f"t={time.time() + 60:.3f}"):
                assert exchange(server.address, self.request(bad)).startswith(b"HTTP/1.1 200 ")

            def counted():
                totals = scrape(server)
                ignored = "greenserve_request_start_ignored_total"
                shed = totals.get("greenserve_http_requests_shed_total[('reason', 'queue_time')]")
                malformed = totals.get(f"{ignored}[('reason', 'malformed')]")
                future = totals.get(f"{ignored}[('reason', 'future')]")
                waits = totals.get("greenserve_http_queue_seconds_count", 0)
                return shed == 1 and malformed == 1 and future == 1 and waits >= 2

            wait_until(counted, 10, "sheds, ignored headers and waits counted")

    def test_a_shed_answer_arrives_whole_with_the_end_of_the_connection(self):
        """The 503 waits for the close (MSG_MORE) so that both leave in one segment: the client
        must still read all of it and then an orderly end, never a reset, including when a
        second request was pipelined behind the shed one."""
        with serving_http("deadline_app:app", "--max-queue-time", "1") as server:
            server.started()
            stale = self.request(f"t={int((time.time() - 5) * 1e6)}")
            for pipelined in (b"", b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n"):
                for _ in range(50):
                    with socket.create_connection(server.address, timeout=10) as sock:
                        sock.sendall(stale + pipelined)
                        sock.settimeout(10)
                        data = b""
                        while chunk := sock.recv(65536):  # a reset raises: the test fails
                            data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 503 "), data[:100]
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    assert len(body) == length > 0, data

    def test_from_anyone_else_the_header_is_ignored(self):
        with serving_http(
            "deadline_app:app",
            "--max-queue-time",
            "1",
            "--forwarded-allow-ips",
            "192.0.2.1",
            "--stats-interval",
            "0.1",
        ) as server:
            server.started()
            stale = exchange(server.address, self.request(f"t={int((time.time() - 5) * 1e6)}"))
            assert stale.startswith(b"HTTP/1.1 200 ")
            key = "greenserve_request_start_ignored_total[('reason', 'untrusted')]"
            wait_until(lambda: scrape(server).get(key) == 1, 10, "the untrusted header counted")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-inflight", "0"),
        ("--max-inflight", "-3"),
        ("--max-queue-time", "-1"),
        ("--max-queue-time", "0"),
        ("--max-queue-time", "soon"),
    ],
)
def test_a_bad_limit_is_one_line_and_exit_2(flag, value):
    result = tool(flag, value, "--protocol", "http", "--metrics-bind", "off")
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert flag.lstrip("-").replace("-", "_") in line and "off" in line
