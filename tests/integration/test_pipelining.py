"""Pipelined requests on a real socket: the responses of a batch read at once are written
together (CountingSocket.cork), in order, and an app that waits holds back no earlier one."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.helpers import parse_responses, read_all, serving_http

pytestmark = pytest.mark.timeout(60)

APP_FILE = Path(__file__).resolve().parents[1] / "apps" / "greenserve_testapps.py"


def request(path: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n".encode()


@pytest.fixture(scope="module")
def server():
    with serving_http("greenserve_testapps:pipelined") as server:
        server.started()
        yield server


def test_a_batch_in_order_with_a_file_among_them(server):
    paths = ["/a", "/file", "/b", "/c", "/file", "/d"]
    batch = b"".join(request(p) for p in paths) + request("/end", close=True)
    sock = socket.create_connection(server.address, timeout=10)
    sock.sendall(batch)
    bodies = [r.body for r in parse_responses(read_all(sock))]
    content = APP_FILE.read_bytes()
    assert bodies == [b"/a", content, b"/b", b"/c", content, b"/d", b"/end"]


def test_an_app_that_waits_holds_back_no_earlier_response(server):
    sock = socket.create_connection(server.address, timeout=10)
    started = time.monotonic()
    sock.sendall(request("/first") + request("/sleep") + request("/last", close=True))
    received = b""
    while b"/first" not in received:
        received += sock.recv(65536)
    first_after = time.monotonic() - started
    rest = read_all(sock)
    assert first_after < 0.5, first_after  # not held until /sleep's second is over
    bodies = [r.body for r in parse_responses(received + rest)]
    assert bodies == [b"/first", b"/sleep", b"/last"]
