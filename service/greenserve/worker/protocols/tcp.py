"""Raw TCP: call ``handle(sock, address)`` for each connection, counting what crosses it."""

from __future__ import annotations

import contextlib
import copy
import socket
import time
from collections.abc import Callable
from typing import Any

from gevent import get_hub, getcurrent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.exceptions import ConcurrentObjectUseError, InvalidSwitchError

from greenserve.config import Settings
from greenserve.metrics.stats import WorkerStats
from greenserve.proxy import V2_MAX, ProxyError, header_length, parse_header
from greenserve.worker.protocols.outbox import Outbox
from greenserve.worker.protocols.phase import (
    FIELDS,
    FRESH,
    HANDSHAKE,
    OPEN,
    PARKED,
    UPGRADED,
    WEBSOCKET,
    ConnectionPhase,
    IdleSweeper,
)
from greenserve.worker.protocols.tls_session import HandshakeFailed, TlsSocket

Handler = Callable[[Any, Any], Any]
HINT_EVERY = 60.0  # seconds between two protocol_mismatch hints
FIRST_REQUEST_GRACE = 1.0  # on a drain, seconds a new connection gets for its first request
_gevent_send = gsocket.socket.send
_gevent_sendall = gsocket.socket.sendall


def park(watcher: Any, hub: Any) -> None:
    """Wait until ``watcher`` (a socket's, no timeout) is ready: gevent's ``hub.wait`` without
    its Waiter and the two Cython calls above it. What an idle connection costs is mostly its
    greenlet, whose C stack below the switch is saved on the heap while it waits: 2,808 bytes
    through ``socket._wait``, about 1,900 from here (``greenlet._stack_saved``, an idle
    WebSocket). The callback is the greenlet's own ``switch``, so gevent's ``cancel_wait`` (a
    close from another greenlet) still finds the greenlet to throw into, as with a Waiter."""
    if watcher is None:  # closed by another greenlet: gevent's own answer
        raise ConcurrentObjectUseError("The socket has already been closed by another greenlet")
    if watcher.callback is not None:
        raise ConcurrentObjectUseError(
            f"This socket is already used by another greenlet: {watcher.callback!r}"
        )
    watcher.start(getcurrent().switch, watcher)
    try:
        woken = hub.switch()
    finally:
        watcher.stop()
    if woken is not watcher:
        raise InvalidSwitchError(f"Invalid switch into {getcurrent()}: got {woken!r}")


class CountingSocket(ConnectionPhase, gsocket.socket):
    """A gevent socket that counts the bytes it moves, in plain attributes of its own.

    gevent's ``sendall``, ``sendfile`` and ``makefile`` all go through ``send``/``recv_into``,
    so counting in these three methods is exact without wrapping the others. They call the
    underlying non-blocking socket (``_sock``) themselves and wait on the hub exactly as
    gevent's own methods do, so counting adds no Python frame per call: on the echo benchmark a
    plain override (one frame more, counters reached through the worker's stats object) cost
    7.5% of a saturated worker's messages per CPU-second.
    """

    # ConnectionPhase's fields (phase.py), the byte counts among them; ``out``: writes held
    # back while a pipelined batch is answered (cork), or the bytes a WebSocket's slow peer
    # has not taken yet (an Outbox, outbox.py), else None; ``spill``: a write the socket does
    # not take whole goes to an Outbox instead of waiting (a wsgi.websocket sets it)
    __slots__ = (*FIELDS, "out", "spill")
    out: list[Any] | Outbox | None
    spill: bool
    # gevent's own, for mypy (close reads them)
    _closed: bool
    _read_event: Any
    _write_event: Any

    @property
    def watched(self) -> CountingSocket:
        """The socket whose deadlines and state the sweeper reads: this one (a TLS session
        over it names it too)."""
        return self

    def recv(self, *args: Any) -> bytes:
        while True:
            try:
                data = self._sock.recv(*args)
                break
            except BlockingIOError:
                if self.timeout == 0.0:
                    raise
            self._wait_readable()
        self.rx += len(data)
        if not data and self.eof_data:  # see Connections.end_upgraded
            data, self.eof_data = self.eof_data, b""
        return data

    def recv_after_wait(self, size: int) -> bytes:
        """``recv`` for a reader that expects to wait (a keep-alive connection between requests):
        readiness first, so the usual case costs one recv, not a failed one and a second."""
        timeout = self.timeout
        if timeout is None:
            park(self._read_event, self.hub)
        elif timeout != 0.0:
            self._wait(self._read_event)
        self.turn_started = 0.0  # waited on the hub: a new fairness slice (turns.py)
        try:
            data = self._sock.recv(size)  # recv's body, one Python frame less per request
        except BlockingIOError:
            return self.recv(size)  # woken but nothing to read after all: wait again
        self.rx += len(data)
        return data

    def recv_into(self, *args: Any) -> int:
        while True:
            try:
                count = self._sock.recv_into(*args)
                break
            except BlockingIOError:
                if self.timeout == 0.0:
                    raise
            self._wait_readable()
        self.rx += count
        return count

    def _wait_readable(self) -> None:
        """Wait until the socket is readable, outside the ``except`` that found it was not (as
        gevent's own ``recv`` does): there the BlockingIOError and its traceback stay alive for
        the whole wait, about 0.5 KiB per idle reader. With no timeout (a reader the app owns,
        such as simple-websocket's thread behind Flask-Sock) through ``park``: about 0.9 KiB
        less of saved stack per idle reader than ``_wait`` (tracemalloc, 3,000 Flask-Sock
        sockets)."""
        if self.timeout is None:
            park(self._read_event, self.hub)
        else:
            self._wait(self._read_event)

    def send(self, data: Any, flags: int = 0, *args: Any, **kwargs: Any) -> int:
        try:
            count = self._sock.send(data, flags)
        except BlockingIOError:
            count = _gevent_send(self, data, flags, *args, **kwargs)
        self.tx += count
        return count

    def sendall(self, data: Any, flags: int = 0) -> None:
        """One direct send first: gevent's sendall costs a getsockopt and a chunking loop per
        call (8% of an HTTP worker's samples in py-spy), though a response almost always fits
        the socket buffer whole. A held write (``out`` a list: cork) is appended by
        ``_response.c`` itself, without this frame; anything else it hands here."""
        out = self.out
        if out is not None:
            out.append(data)
            return
        try:
            count = self._sock.send(data, flags)
        except BlockingIOError:
            count = 0
        self.tx += count
        if count < len(data):
            if self.spill:
                self.out = Outbox(self, memoryview(data)[count:].tobytes())
                return
            _gevent_sendall(self, memoryview(data)[count:], flags)  # counted through send

    def send_last(self, data: bytes) -> None:
        """A connection's last bytes, leaving with its FIN in one segment: held (MSG_MORE) and
        pushed out by shutdown(SHUT_WR), before the close. A close alone would send them as
        well, unless bytes of the client's arrived unread by then (a pipelined request sent on
        after this answer was decided): that close is a reset, which discards what is still
        held, and the client never saw its answer (the corpus tests split at random lost a 500
        and a Connection: close answer this way)."""
        self.sendall(data, socket.MSG_MORE)
        if self.out is None:  # all of it with the kernel (an Outbox would be cut short)
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """gevent's close, without its detour when nothing of ours waits on this socket (the end
        of almost every connection): gevent hands the two watchers to the hub to cancel waits,
        reads the socket's family, type, protocol and descriptor again and swaps in a
        placeholder socket object, eight Python calls and an object per connection; and the
        server's do_close closed each socket a second time (4.8 -> 3.3 us for both, timeit).
        The C socket beneath is closed in place (its descriptor -1: a late send or recv fails
        with EBADF, as on the placeholder). A waiter of ours, or a makefile still open:
        gevent's own close."""
        if self._closed:
            return
        read, write, sock = self._read_event, self._write_event, self._sock
        if self._io_refs > 0 or read is None or read.callback or write.callback:
            super().close()
            return
        self._closed = True
        self._read_event = self._write_event = None
        read.close()
        write.close()
        loop = self.hub.loop
        if not loop.closing_fd(sock.fileno()):
            sock.close()
            return
        # Another watcher on the descriptor (an app's select on gunicorn.socket) was just woken:
        # it runs before the descriptor goes, or could act on a number already reused. gevent
        # defers the same way (_socket3.socket._drop_ref_on_close); asking it to would wake the
        # watcher a second time, which libev does not count, and close at once.
        check = loop.check()
        check.start(_close_later, sock, check)

    def cork(self) -> None:
        """Hold this greenlet's writes until ``uncork`` (the end of a pipelined batch: its
        responses go out in one write), or until it yields to the hub: a callback then sends
        what is held, so an app that waits delays no earlier response."""
        if self.out is None:
            self.out = []
            get_hub().loop.run_callback(self._flush_held)

    def uncork(self) -> None:
        """Send what is held, and write directly from now on."""
        out = self.out
        if type(out) is list:  # not an Outbox: that one writes out on its own
            self.out = None
            if out:
                self.sendall(b"".join(out))

    def _flush_held(self) -> None:
        """In the hub, once the greenlet that corked yielded (or its batch ended): what is held
        goes out without waiting; a part the socket does not take stays held for ``uncork``."""
        out = self.out
        if type(out) is not list:
            return  # uncorked already, or an Outbox writes it
        if not out:
            self.out = None
            return
        data = b"".join(out)
        try:
            count = self._sock.send(data)
        except OSError:  # full (BlockingIOError) or gone: the greenlet's uncork deals with it
            count = 0
        self.tx += count
        if count == len(data):
            self.out = None
        else:
            out[:] = [data[count:]]


def _close_later(sock: Any, check: Any) -> None:
    """CountingSocket.close's deferred end, after the watchers it woke have run."""
    try:
        sock.close()
    except OSError:
        pass
    finally:
        check.stop()
        check.close()


class Connections:
    """The worker's open connections, and the byte counts of the ones already closed.

    It is also the worker's connection pool: ``--max-connections`` is enforced by the server
    through ``full`` (a full worker stops accepting), and a graceful stop waits on ``drained``.
    gevent's Pool kept a second registry and a link per greenlet (about 200 bytes per idle
    connection, measured). Byte totals are folded into the worker's stats once per stats
    interval (``fold``), not on every send and recv.
    """

    def __init__(self, stats: WorkerStats, limit: int) -> None:
        self.stats = stats
        self.limit = limit
        self.open: set[CountingSocket] = set()
        self.closed_rx = 0
        self.closed_tx = 0
        self.drained = Event()
        self.drained.set()
        self.on_room: list[Callable[[], None]] = []  # each server resumes accepting

    def add(self, sock: CountingSocket) -> None:
        """Register a connection as soon as it is accepted (before its greenlet runs)."""
        sock.accepted(time.monotonic())
        sock.out = None
        sock.spill = False
        self.open.add(sock)
        self.drained.clear()

    @property
    def full(self) -> bool:
        return len(self.open) >= self.limit

    def remove(self, sock: CountingSocket) -> None:
        if sock in self.open:
            self.open.discard(sock)
            self.closed_rx += sock.rx
            self.closed_tx += sock.tx
            if not self.open:
                self.drained.set()
            if self.on_room and len(self.open) == self.limit - 1:
                for resume in self.on_room:
                    resume()

    def kill_all(self) -> None:
        """End every connection's greenlet (after a drain timed out)."""
        for sock in list(self.open):
            if sock.greenlet is not None:
                sock.kill()
            else:
                self.remove(sock)
                sock.close()

    def close_parked(self, within: float) -> None:
        """On a graceful stop: give the connections waiting for a next request a last chance.

        Shutting an idle keep-alive connection at once races a client already sending on it
        (wrk counted a read error per connection per reload). Its next request is answered
        with Connection: close instead; one that stays idle is closed at its keep-alive
        deadline, and at the latest ``within`` seconds from now. One that has not sent its
        first request yet gets FIRST_REQUEST_GRACE for it (its request may be in flight).
        """
        now = time.monotonic()
        for sock in list(self.open):
            phase = sock.phase
            if phase == PARKED:
                sock.cut_off(now + within)
            elif phase == FRESH:
                sock.cut_off(now + min(FIRST_REQUEST_GRACE, within))

    def end_upgraded(self, within: float, keep: set[CountingSocket], last_words: bytes) -> None:
        """On a stop: end each connection an app took over (not ``keep``), which would hold the
        drain for the whole graceful timeout. Its read side is shut; a WebSocket's library
        reads ``last_words`` first (a client's Close frame), so it answers with its own Close
        and returns, as on a client's close (simple-websocket sends none at end-of-file). One
        still open ``within`` seconds later is shut whole (the sweeper)."""
        deadline = time.monotonic() + within
        for sock in list(self.open):
            if sock.phase >= UPGRADED and not sock.shut and sock not in keep:
                if sock.phase == WEBSOCKET:
                    sock.eof_data = last_words
                with contextlib.suppress(OSError):
                    sock._sock.shutdown(socket.SHUT_RD)
                sock.cut_off(deadline)

    def fold(self) -> None:
        """Bring the worker's byte counters up to date (cumulative, so monotonic)."""
        self.stats.bytes_received = self.closed_rx + sum(s.rx for s in self.open)
        self.stats.bytes_sent = self.closed_tx + sum(s.tx for s in self.open)


class TcpProtocol:
    """Per-connection accounting around the app; ``handle`` is what gevent's server calls."""

    def __init__(
        self,
        app: Handler,
        settings: Settings,
        stats: WorkerStats,
        log: Any,
        *,
        deadlines: bool = False,
        publish: Callable[[int], None] | None = None,
        tls: Any = None,
        nodelay: bool = True,
    ) -> None:
        """``deadlines``: the handler sets ``sock.deadline``, so sweep even with no idle timeout.
        ``publish``: called with the open-connection count when a connection ends (fair accepts;
        BalancedServer publishes the rise at accept).
        ``tls``: an ssl.SSLContext built from ``settings``: every connection is TLS.
        ``nodelay``: accepted sockets take TCP_NODELAY (the listener is TCP, not a unix socket).
        Decided once per listener: asking each socket's family and setting the option through
        gevent cost 1.71 us a connection, against 0.56 us for the option alone on the socket
        beneath (timeit)."""
        self.app = app
        self.publish = publish
        self.tls = tls
        self.handshake_timeout = settings.header_timeout
        # --proxy-protocol: proxy.Trusted peers that must send a PROXY header first
        proxy_allow = settings.proxy_allow_from if settings.proxy_protocol else None
        self.proxy_allow = proxy_allow
        idle_timeout = settings.idle_timeout
        deadlines = deadlines or tls is not None or proxy_allow is not None
        self.stats = stats
        self.connections = Connections(stats, settings.max_connections)
        needs_sweeper = bool(idle_timeout) or deadlines
        # Deadlines (HTTP header and keep-alive timeouts) want a finer sweep than idleness.
        tick = 0.25 if deadlines else 1.0
        self.idle = (
            IdleSweeper(idle_timeout, self.connections.open, tick) if needs_sweeper else None
        )
        self.log = log
        self.wsgi_suspect = False  # a WSGI app under --protocol tcp: failures get a hint
        self.nodelay = nodelay
        self.hinted_at = -HINT_EVERY

    def _proxy_header(self, sock: CountingSocket, address: Any, allow: Any) -> Any:
        """Read the PROXY header (nothing past it); the client's address, or None to close.
        ``allow``: the peers that may send one (proxy.Trusted)."""
        stats = self.stats
        if not address or address[0] not in allow:
            _count(stats.proxy_protocol_failures, "not_allowed")
            return None
        sock.enter(HANDSHAKE, time.monotonic() + self.handshake_timeout)
        try:
            header = read_proxy_header(sock)
        except ProxyError as exc:
            if sock.shut:  # the sweeper shut it at the deadline: read as end-of-file
                _count(stats.proxy_protocol_failures, "timeout")
                return None
            _count(stats.proxy_protocol_failures, exc.reason)
            if exc.reason == "malformed":
                self.log.warning("proxy_header_refused", peer=peer(address), error=str(exc))
            return None
        except OSError:  # the peer went away (a reset), or an error after the deadline's shutdown
            _count(stats.proxy_protocol_failures, "timeout" if sock.shut else "eof")
            return None
        finally:
            sock.enter(OPEN)
        try:
            client = parse_header(header)
        except ProxyError as exc:
            _count(stats.proxy_protocol_failures, exc.reason)
            self.log.warning("proxy_header_refused", peer=peer(address), error=str(exc))
            return None
        return client if client is not None else address

    def _serve_tls(self, sock: CountingSocket, address: Any) -> None:
        """The handshake in this connection's greenlet, then the app on the TLS session."""
        session = TlsSocket(sock, self.tls)
        try:
            session.handshake(self.handshake_timeout)
        except HandshakeFailed as exc:
            _tls_failed(self.stats, exc.reason)
            return
        self.stats.tls_handshakes += 1
        self.app(session, address)

    def for_app(self, app: Handler, nodelay: bool) -> TcpProtocol:
        """The same protocol for another listener's app: registry, sweeper and counters shared."""
        other = copy.copy(self)
        other.app = app
        other.nodelay = nodelay
        return other

    def handle(self, sock: CountingSocket, address: Any) -> None:
        """``sock`` comes from protocols.accept.CountingServer, already a CountingSocket.

        Handed to the server as a bound method, not as this object's ``__call__``: calling an
        instance goes through a C-level call slot, one more C frame in every suspended
        greenlet's saved stack.
        """
        stats = self.stats
        stats.connections_accepted += 1
        stats.connections_active += 1
        connections = self.connections
        publish = self.publish  # the count going up is published at accept (BalancedServer)
        sock.serving()
        try:
            if self.nodelay:
                sock._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.proxy_allow is not None:
                address = self._proxy_header(sock, address, self.proxy_allow)
                if address is None:
                    return
            if self.tls is None:
                self.app(sock, address)
            else:
                self._serve_tls(sock, address)
        except (TimeoutError, ConnectionError):
            pass  # the peer went away, or the app's own timeout: ordinary ends of a connection
        except Exception:
            stats.handler_errors += 1
            self.log.error("handler_error", peer=peer(address), exc_info=True)
            if self.wsgi_suspect and time.monotonic() - self.hinted_at >= HINT_EVERY:
                self.hinted_at = time.monotonic()
                self.log.warning(
                    "protocol_mismatch",
                    hint="a WSGI app is served as a TCP handler: run with --protocol http",
                )
        finally:
            sock.greenlet = None  # its greenlet may serve the next connection (runners.py)
            stats.connections_active -= 1
            connections.remove(sock)
            if publish is not None:
                publish(len(connections.open))
            sock.close()


def _tls_failed(stats: WorkerStats, reason: str) -> None:
    _count(stats.tls_handshake_failures, reason)


def _count(counts: dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1


def read_proxy_header(sock: Any) -> bytes:
    """The PROXY header's bytes, consumed exactly: what follows stays for the protocol.

    Peeks to find the header's length; bytes that are all header are consumed as they come
    (a second peek at the same bytes would find the socket readable at once, a busy loop).
    """
    taken = b""
    while True:
        peeked = _peek(sock, 536)
        if not peeked:
            raise ProxyError("eof")
        data = taken + peeked
        length = header_length(data)
        if length is None:
            if len(data) >= V2_MAX:
                raise ProxyError("malformed", "header too long")
            taken += sock.recv(len(peeked))
            continue
        rest = length - len(taken)
        while rest > 0:
            chunk = sock.recv(rest)
            if not chunk:
                raise ProxyError("eof")
            taken += chunk
            rest -= len(chunk)
        return taken


def _peek(sock: Any, size: int) -> bytes:
    # gevent's own recv (not CountingSocket's): peeked bytes are counted once, when consumed
    return gsocket.socket.recv(sock, size, socket.MSG_PEEK)


def peer(address: Any) -> str:
    """``host:port`` of a peer for logs (a unix socket's peer as it is)."""
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)
