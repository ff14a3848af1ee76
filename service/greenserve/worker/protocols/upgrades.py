"""Connections taken over after an HTTP Upgrade, every kind, counted open and closed.

Three kinds: ``wsgi.websocket`` (greenserve answered the handshake and speaks the frames),
``app`` (the app answered ``Upgrade: websocket`` itself on ``gunicorn.socket``: Flask-Sock,
python-socketio), ``other`` (the app took the connection over for another protocol).

greenserve answers the first kind's handshake, so it knows when one opens. It does not see
what an app writes on ``gunicorn.socket``: such a connection is *pending* from the Upgrade
request until the app has sent bytes of its own (its 101) without answering over HTTP. Pending
connections are looked at once per stats interval, just before the snapshot (``settle``), so
the gauge in every snapshot is exact; one already open is not looked at again. Nothing is
added to a request's path but a dict insert and a delete on Upgrade requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenserve.metrics.stats import WorkerStats
    from greenserve.worker.protocols.http_response import Response
    from greenserve.worker.protocols.tcp import CountingSocket


def app_kind(environ: dict[str, Any]) -> str:
    """The kind of a connection the app took over itself."""
    return "app" if environ.get("HTTP_UPGRADE", "").lower() == "websocket" else "other"


class Taken:
    """An Upgrade request the app has: what tells whether, and how, it was taken over."""

    __slots__ = ("environ", "sent_before", "watched", "writer")

    def __init__(self, watched: CountingSocket, writer: Response, environ: dict[str, Any]) -> None:
        self.watched = watched
        self.sent_before = watched.tx  # what greenserve had sent before the app had it
        self.writer = writer
        self.environ = environ

    def kind(self) -> str | None:
        """The kind once the connection is taken over; None while it is not (yet)."""
        websocket = self.environ.get("wsgi.websocket")
        if websocket is not None and websocket.started:
            return "wsgi.websocket" if websocket.opened else None  # else refused
        if self.writer.status:
            return None  # answered over HTTP (a refusal, a page): no upgrade
        if self.watched.tx > self.sent_before:
            return app_kind(self.environ)
        return None


class Upgrades:
    """One listener's upgraded connections, pending and open, and the counters of those opened
    and closed by kind. The gauge is the number open, read at each snapshot (``settle``)."""

    __slots__ = ("open", "pending", "stats")

    def __init__(self, stats: WorkerStats) -> None:
        self.stats = stats
        self.pending: dict[CountingSocket, Taken] = {}
        self.open: dict[CountingSocket, str] = {}  # connection -> its kind

    def begin(self, taken: Taken) -> None:
        """The app is given an Upgrade request."""
        self.pending[taken.watched] = taken

    def settle(self) -> int:
        """Before a snapshot: pending connections that were taken over since the last one are
        counted open; how many are open now."""
        for watched, taken in list(self.pending.items()):
            kind = taken.kind()
            if kind is not None:
                del self.pending[watched]
                self._opened(watched, kind)
        return len(self.open)

    def end(self, watched: CountingSocket) -> None:
        """The app returned (or raised): the connection is no longer the app's."""
        taken = self.pending.pop(watched, None)
        if taken is not None:
            kind = taken.kind()
            if kind is None:
                return  # never taken over
            self._opened(watched, kind)  # opened and closed between two snapshots
        kind = self.open.pop(watched, None)
        if kind is not None:
            closed = self.stats.upgraded_connections_closed
            closed[kind] = closed.get(kind, 0) + 1

    def _opened(self, watched: CountingSocket, kind: str) -> None:
        self.open[watched] = kind
        opened = self.stats.upgraded_connections_opened
        opened[kind] = opened.get(kind, 0) + 1
