"""Fixtures shared by the unit tests."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from greenserve.worker.protocols.tcp import CountingSocket


@pytest.fixture
def counting_pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    """(a CountingSocket set up as Connections.add sets up an accepted one, its plain peer)."""
    ours, peer = socket.socketpair()
    wrapped = CountingSocket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=ours.detach())
    wrapped.accepted(time.monotonic())
    wrapped.out, wrapped.spill = None, False
    yield wrapped, peer
    peer.close()
    wrapped.close()
