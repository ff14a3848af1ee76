"""CountingSocket.close: the short path when nothing waits, gevent's own otherwise."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import gevent
import pytest
from gevent import socket as gsocket

from greenserve.worker.protocols.tcp import CountingSocket
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(30)


def test_nothing_waiting_closes_in_place(counting_pair):
    sock, peer = counting_pair
    sock.sendall(b"before")
    assert peer.recv(16) == b"before"
    read, write = sock._read_event, sock._write_event
    sock.close()
    assert sock.closed and sock._read_event is None and sock._write_event is None
    assert not read.active and not write.active
    assert peer.recv(16) == b""  # the peer sees the end at once
    with pytest.raises(OSError):  # a late write fails; it never reaches a reused descriptor
        sock.send(b"after")
    sock.close()  # the server's do_close, again: nothing happens


def test_a_reader_waiting_is_woken_with_an_error(counting_pair):
    sock, peer = counting_pair
    outcome: list[str] = []

    def reader() -> None:
        try:
            sock.recv(16)
            outcome.append("data")
        except OSError:
            outcome.append("error")

    waiting = gevent.spawn(reader)
    wait_until(
        lambda: sock._read_event.callback is not None,
        5,
        "the reader waiting in the hub",
        step=0.001,
        sleep=gevent.sleep,
    )
    sock.close()
    waiting.join(5)
    assert outcome == ["error"]  # gevent's close: cancel_wait_ex in the waiter
    assert peer.recv(16) == b""


def test_another_watcher_on_the_descriptor_runs_before_it_closes(counting_pair):
    """An app's select on gunicorn.socket: its watcher is woken by the close and runs while the
    descriptor is still open (a number closed first could already be another connection's)."""
    sock, peer = counting_pair
    fd = sock.fileno()
    seen: list[bool] = []
    waiting_on_it: list[bool] = []

    def other() -> None:
        waiting_on_it.append(True)  # no switch from here into wait_read's watcher
        with contextlib.suppress(Exception):
            gsocket.wait_read(fd, timeout=5)
        try:
            os.fstat(fd)
            seen.append(True)  # woken with the descriptor still open
        except OSError:
            seen.append(False)

    waiting = gevent.spawn(other)
    wait_until(lambda: waiting_on_it, 5, "the other watcher", step=0.001, sleep=gevent.sleep)
    sock.close()
    waiting.join(5)
    assert seen == [True]
    peer.setblocking(False)

    def peer_sees_the_end() -> bool:
        try:
            return peer.recv(16) == b""
        except BlockingIOError:
            return False

    wait_until(peer_sees_the_end, 5, "the deferred close", step=0.001, sleep=gevent.sleep)


@pytest.mark.parametrize("last", [True, False], ids=["send_last", "sendall_more_and_close"])
def test_the_last_answer_survives_a_pipelined_request_left_unread(last: bool) -> None:
    """A client that sent on after its request (pipelining) has bytes unread when the server
    closes, and that close is a reset: what MSG_MORE still held is discarded. send_last pushes
    the answer and the FIN out first. The second case is what the server did before: it shows
    the loss is real, so the first can fail."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        accepted, _ = listener.accept()
        sock = CountingSocket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=accepted.detach())
        sock.accepted(time.monotonic())
        sock.out, sock.spill = None, False
        client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(1024).startswith(b"GET / ")
        client.sendall(b"GET /next HTTP/1.1\r\n")  # never read by the server
        wait_until(lambda: _unread(sock) > 0, 5, "the pipelined bytes to arrive")
        answer = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
        if last:
            sock.send_last(answer)
        else:
            sock.sendall(answer, socket.MSG_MORE)
        sock.close()
        received = b""
        with contextlib.suppress(ConnectionResetError), client:
            while chunk := client.recv(1024):
                received += chunk
        assert (received == answer) is last, received


def _unread(sock: CountingSocket) -> int:
    """Bytes waiting in the socket's receive queue (FIONREAD)."""
    import fcntl
    import struct
    import termios

    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    return struct.unpack("i", raw)[0]
