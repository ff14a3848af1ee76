"""Upgraded connections counted open and closed by kind (protocols/upgrades.py), in process:
sockets and responses stand in with only what the bookkeeping reads."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from greenserve.metrics.stats import WorkerStats
from greenserve.worker.protocols.upgrades import Taken, Upgrades


class Watched:
    """A connection's byte count, hashable by identity as CountingSocket is."""

    def __init__(self, tx: int) -> None:
        self.tx = tx


def upgrade(upgrades: Upgrades, protocol: str = "websocket", **websocket: Any) -> Any:
    """An Upgrade request given to the app; returns (socket, response, environ)."""
    watched = Watched(tx=120)  # the bytes greenserve sent before this request
    writer = SimpleNamespace(status="")
    environ: dict[str, Any] = {"HTTP_UPGRADE": protocol}
    if websocket:
        environ["wsgi.websocket"] = SimpleNamespace(**websocket)
    upgrades.begin(Taken(watched, writer, environ))  # type: ignore[arg-type]
    return watched, writer, environ


def state(upgrades: Upgrades) -> tuple[int, dict[str, int], dict[str, int]]:
    """The gauge (what a snapshot shows) and the counters by kind."""
    stats = upgrades.stats
    return (
        len(upgrades.open),
        stats.upgraded_connections_opened,
        stats.upgraded_connections_closed,
    )


def test_an_app_owned_websocket_is_open_once_the_app_sent_its_101():
    stats = WorkerStats()
    upgrades = Upgrades(stats)
    watched, _, _ = upgrade(upgrades)
    upgrades.settle()
    assert state(upgrades) == (0, {}, {})  # the app has not answered yet
    watched.tx += 129  # its 101
    upgrades.settle()
    upgrades.settle()  # looked at once: counted once
    assert state(upgrades) == (1, {"app": 1}, {})
    upgrades.end(watched)  # type: ignore[arg-type]
    assert state(upgrades) == (0, {"app": 1}, {"app": 1})
    assert not upgrades.pending and not upgrades.open


@pytest.mark.parametrize(
    ("protocol", "websocket", "kind"),
    [
        ("websocket", {"started": True, "opened": True}, "wsgi.websocket"),
        ("x-line-echo", {}, "other"),
        ("WebSocket", {"started": False, "opened": False}, "app"),  # offered, not used
    ],
)
def test_each_kind_opened_and_closed_between_two_snapshots(protocol, websocket, kind):
    stats = WorkerStats()
    upgrades = Upgrades(stats)
    watched, _, _ = upgrade(upgrades, protocol, **websocket)
    watched.tx += 200
    upgrades.end(watched)  # type: ignore[arg-type]
    assert state(upgrades) == (0, {kind: 1}, {kind: 1})


@pytest.mark.parametrize(
    ("websocket", "answered"),
    [
        ({"started": True, "opened": False}, ""),  # wsgi.websocket refused the handshake (426)
        ({}, "400 Bad Request"),  # the app answered over HTTP
        ({}, ""),  # the app returned without sending anything
    ],
)
def test_what_was_not_taken_over_is_not_counted(websocket, answered):
    stats = WorkerStats()
    upgrades = Upgrades(stats)
    watched, writer, _ = upgrade(upgrades, **websocket)
    writer.status = answered
    if answered or websocket:
        watched.tx += 150  # the refusal went out
    upgrades.settle()
    upgrades.end(watched)  # type: ignore[arg-type]
    assert state(upgrades) == (0, {}, {})
    assert not upgrades.pending and not upgrades.open
