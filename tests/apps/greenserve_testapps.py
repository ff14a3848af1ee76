"""Handlers used by the integration tests (run with this directory as the working directory)."""

from __future__ import annotations

import time
from typing import Any


def slow_echo(sock: Any, address: Any) -> None:
    """Wait one second (cooperatively: time.sleep is patched), then echo one message."""
    data = sock.recv(65536)
    time.sleep(1.0)
    sock.sendall(data)


def fail_on_boom(sock: Any, address: Any) -> None:
    """Echo lines; a line 'boom' raises, which must close only this connection."""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        if data.strip() == b"boom":
            raise RuntimeError("boom requested by the client")
        sock.sendall(data)


not_callable = 42


def never_reads(sock: Any, address: Any) -> None:
    """Ignore the connection entirely: only the idle sweeper can end it."""
    while True:
        time.sleep(1)
