"""The fair-accept decision on a shared socket, with a real listening socket's accept queue."""

from __future__ import annotations

import socket

import pytest
from gevent import socket as gsocket

from greenserve.metrics.stats import LOAD_IN_USE, LOAD_SLOTS, LOAD_UNUSED, WorkerStats
from greenserve.worker.protocols.accept import BalancedServer
from greenserve.worker.protocols.tcp import Connections


@pytest.fixture
def listener():
    sock = gsocket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def server_with(listener, mine: int, siblings: list[int]) -> BalancedServer:
    load = [LOAD_UNUSED] * LOAD_SLOTS + [0, 0]
    load[0] = mine
    for index, count in enumerate(siblings, start=1):
        load[index] = count
    load[LOAD_IN_USE] = 1 + len(siblings)
    stats = WorkerStats()
    return BalancedServer(
        listener, lambda *a: None, connections=Connections(stats, 100), load=load, slot=0
    )


def queue(listener, count: int) -> list[socket.socket]:
    """Connections the kernel completed and nobody accepted yet."""
    return [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(count)]


def test_one_connection_at_a_time_is_deferred_to_an_idler_sibling(listener):
    clients = queue(listener, 1)
    assert server_with(listener, mine=5, siblings=[3])._busier_than_a_sibling()
    assert not server_with(listener, mine=3, siblings=[5])._busier_than_a_sibling()
    assert not server_with(listener, mine=4, siblings=[4])._busier_than_a_sibling()
    for client in clients:
        client.close()


def test_a_burst_is_shared_instead_of_deferred(listener):
    """Ten queued on two workers: a lead of up to five is this worker's share, taken at once."""
    clients = queue(listener, 10)
    assert not server_with(listener, mine=8, siblings=[3])._busier_than_a_sibling()
    assert server_with(listener, mine=9, siblings=[3])._busier_than_a_sibling()
    for client in clients:
        client.close()


def test_unused_slots_are_not_siblings(listener):
    assert not server_with(listener, mine=5, siblings=[LOAD_UNUSED])._busier_than_a_sibling()
