"""CountingSocket.recv and recv_into waiting for data: what an idle reader holds.

A reader the app owns (simple-websocket's thread behind Flask-Sock, Socket.IO's) waits in
``recv`` with no timeout for as long as its peer is quiet, once per open connection.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import gevent
import pytest

from greenserve.worker.protocols.tcp import CountingSocket
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(30)


def _readers(sock: CountingSocket) -> dict[str, Callable[[], int]]:
    buffer = bytearray(16)
    return {"recv": lambda: len(sock.recv(16)), "recv_into": lambda: sock.recv_into(buffer)}


@pytest.mark.parametrize("method", ["recv", "recv_into"])
def test_an_idle_reader_parks_and_holds_no_exception(counting_pair, method):
    sock, peer = counting_pair
    got: list[int] = []
    read = _readers(sock)[method]
    waiting = gevent.spawn(lambda: got.append(read()))
    wait_until(
        lambda: sock._read_event.callback is not None, 5, "the reader waiting", sleep=gevent.sleep
    )
    # the greenlet's own switch (park), not a Waiter's: less stack saved while it waits
    assert sock._read_event.callback == waiting.switch
    # and not inside the ``except BlockingIOError``: the error is not kept for the whole wait
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, BlockingIOError)]
    peer.sendall(b"hello")
    waiting.join(5)
    assert got == [5] and sock.rx == 5
    assert sock._read_event.callback is None


@pytest.mark.parametrize("method", ["recv", "recv_into"])
def test_a_reader_with_a_timeout_still_times_out(counting_pair, method):
    sock, peer = counting_pair
    sock.settimeout(0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _readers(sock)[method]()
    assert 0.04 < time.monotonic() - started < 5
    assert sock._read_event.callback is None
    peer.sendall(b"later")  # the socket still reads once data is there
    assert _readers(sock)[method]() == 5


def test_a_non_blocking_reader_still_raises(counting_pair):
    sock, _ = counting_pair
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(16)
