"""Connection phases and deadlines on a fake clock: the real HTTP connection, an in-memory
socket, and the sweeper called with the times a test picks (IdleSweeper.sweep(now)).

These replace tests that waited out real header, keep-alive and request timeouts in a server
process (seconds each); the process-level ones that remain check the same paths end to end.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest
import structlog
from gevent.event import Event
from structlog.testing import LogCapture

from greenserve.config import load
from greenserve.metrics.stats import WorkerStats
from greenserve.worker.protocols.http_handler import HttpHandler
from greenserve.worker.protocols.phase import (
    APP,
    BODY,
    FRESH,
    HEAD,
    OPEN,
    PARKED,
    UPGRADED,
    WEBSOCKET,
    IdleSweeper,
)
from greenserve.worker.protocols.request_timeout import TIMEOUT_GRACE, RequestTimeout
from greenserve.worker.protocols.tcp import FIRST_REQUEST_GRACE, Connections
from tests.helpers import ScriptedSocket

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _restore_log_processors() -> Any:
    processors = list(structlog.get_config()["processors"])
    yield
    structlog.configure(processors=processors)


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
PEER = ("127.0.0.1", 40000)


def hello(environ: dict, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class Served:
    """One connection of a real HttpHandler in a greenlet, on an in-memory socket that holds
    its read open at the end of the script, swept by hand."""

    def __init__(self, app: Any, chunks: list[bytes], *flags: str, start: bool = True) -> None:
        settings = load(["--protocol", "http", *flags], {})
        self.stats = WorkerStats()
        # Not capture_logs(): a Served that never ends would leave its generator open, and the
        # collector closing it later restores stale processors in the middle of another test.
        capture = LogCapture()
        structlog.configure(processors=[capture])
        self.events = capture.entries
        self.handler = HttpHandler(
            app,
            settings,
            stats=self.stats,
            log=structlog.get_logger(),
            server_address=("127.0.0.1", 8000),
        )
        self.sock = ScriptedSocket(chunks, hold=True)
        self.sweeper = IdleSweeper(settings.idle_timeout, [self.sock], tick=1.0)
        self.greenlet: Any = None
        if start:
            self.start()

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)
        gevent.sleep(0)  # it reads the script and waits in the phase it reached

    def _run(self) -> None:
        self.sock.serving()
        self.handler.handle(self.sock, PEER)

    def sweep(self, now: float) -> None:
        self.sweeper.sweep(now)
        gevent.sleep(0)  # a shut connection's greenlet sees it; a scheduled throw lands
        gevent.sleep(0)

    def ended(self) -> bool:
        self.greenlet.join(5)
        return self.greenlet.dead

    def statuses(self) -> list[int]:
        return [int(line.split()[1]) for line in bytes(self.sock.sent).split(b"\r\n") if
                line.startswith(b"HTTP/1.1 ")]  # fmt: skip


class TestHttpPhases:
    def test_a_new_connection_waits_fresh_on_the_keepalive_clock(self):
        served = Served(hello, [], "--keepalive-timeout", "4")
        sock = served.sock
        assert sock.phase == FRESH
        assert sock.deadline == pytest.approx(sock.accepted_at + 4, abs=0.5)
        served.sweep(sock.deadline - 0.01)
        assert not sock.shut
        served.sweep(sock.deadline)
        assert sock.shut and served.ended() and sock.sent == b""

    def test_after_a_request_it_parks_on_the_keepalive_clock_not_the_header_one(self):
        served = Served(hello, [GET], "--keepalive-timeout", "4", "--header-timeout", "0.5")
        sock = served.sock
        assert served.statuses() == [200]
        assert sock.phase == PARKED
        parked_until = sock.deadline
        served.sweep(parked_until - 0.5)  # well past the header timeout
        assert not sock.shut
        served.sweep(parked_until)
        assert sock.shut and served.ended()

    def test_a_head_cut_short_gets_the_header_clock(self):
        served = Served(hello, [b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "], "--keepalive-timeout",
                        "4", "--header-timeout", "0.5")  # fmt: skip
        sock = served.sock
        assert sock.phase == HEAD
        assert sock.deadline - sock.accepted_at == pytest.approx(0.5, abs=0.25)
        served.sweep(sock.deadline - 0.01)
        assert not sock.shut
        served.sweep(sock.deadline)
        assert sock.shut and served.ended() and sock.sent == b""
        assert served.stats.handler_errors == 0

    def test_the_header_clock_of_a_pipelined_head_starts_after_the_app(self):
        seen: list[tuple[int, float]] = []

        def watching(environ: dict, start_response: Any) -> list[bytes]:
            seen.append((served.sock.phase, served.sock.deadline))
            return hello(environ, start_response)

        pipelined = GET + b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "
        served = Served(watching, [pipelined], "--header-timeout", "0.5", start=False)
        served.start()
        assert seen == [(APP, 0.0)]  # no clock runs while the app has the request
        assert served.sock.phase == HEAD and served.sock.deadline > 0
        served.sweep(served.sock.deadline)
        assert served.ended() and served.statuses() == [200]

    def test_a_body_short_of_its_length_is_cut_off_per_wait(self):
        def reader(environ: dict, start_response: Any) -> list[bytes]:
            environ["wsgi.input"].read()
            return hello(environ, start_response)

        short = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\nshort"
        served = Served(reader, [short], "--header-timeout", "0.5")
        sock = served.sock
        assert sock.phase == BODY and sock.deadline > 0
        served.sweep(sock.deadline - 0.01)
        assert not sock.shut
        sock.more(b"er")  # more body: the next wait gets a new deadline
        gevent.sleep(0)
        assert sock.phase == BODY
        served.sweep(sock.deadline)
        assert served.ended() and sock.sent == b""
        assert served.stats.handler_errors == 0

    def test_the_idle_timeout_spares_an_upgraded_connection(self):
        taken = Event()

        def takes_over(environ: dict, start_response: Any) -> list[bytes]:
            taken.set()
            gevent.sleep(60)
            return []

        upgrade = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: chat\r\n\r\n"
        served = Served(takes_over, [upgrade], "--idle-timeout", "10")
        assert taken.wait(5) and served.sock.phase == UPGRADED
        served.sweep(served.sock.idle_since + 1)  # records the handshake's bytes
        served.sweep(served.sock.idle_since + 100)
        assert not served.sock.shut
        served.greenlet.kill()

    def test_a_websocket_upgrade_is_marked_for_its_close_frame(self):
        taken = Event()

        def takes_over(environ: dict, start_response: Any) -> list[bytes]:
            taken.set()
            gevent.sleep(60)
            return []

        upgrade = (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        served = Served(takes_over, [upgrade])
        assert taken.wait(5) and served.sock.phase == WEBSOCKET
        served.greenlet.kill()


class TestRequestTimeout:
    """--request-timeout: the sweeper calls the request's clock; RequestTimeout lands where the
    app waits; 504 if nothing was sent."""

    def test_a_waiting_app_gets_504_and_its_finally_runs(self):
        ran: list[str] = []

        def waits(environ: dict, start_response: Any) -> list[bytes]:
            try:
                Event().wait()
            finally:
                ran.append(environ["greenserve.request_id"])
            return hello(environ, start_response)

        served = Served(waits, [GET, GET], "--request-timeout", "1", "--access-log")
        sock = served.sock
        assert sock.phase == APP and sock.request_deadline > 0
        served.sweep(sock.request_deadline - 0.01)
        assert served.statuses() == []
        served.sweep(sock.request_deadline)
        assert served.ended()
        assert served.statuses() == [504]  # and the connection closed: the GET after it waits
        assert b"Connection: close" in sock.sent
        (event,) = [e for e in served.events if e["event"] == "request_timeout"]
        assert "wait" in event["stack"] and event["response_started"] is False
        assert ran == [event["request_id"]]
        assert served.stats.http_request_timeouts == 1
        assert served.stats.http_requests == {"504": 1}

    def test_a_started_response_is_cut_and_counted_as_sent(self):
        def stalls(environ: dict, start_response: Any) -> Any:
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"first chunk\n"
            Event().wait()

        served = Served(stalls, [GET], "--request-timeout", "1")
        served.sweep(served.sock.request_deadline)
        assert served.ended()
        assert served.statuses() == [200] and b"first chunk\n" in served.sock.sent
        (event,) = [e for e in served.events if e["event"] == "request_timeout"]
        assert event["response_started"] is True

    def test_a_swallowed_timeout_is_thrown_again_after_the_grace_and_the_socket_shut(self):
        caught: list[str] = []

        def swallows(environ: dict, start_response: Any) -> list[bytes]:
            try:
                Event().wait()
            except RequestTimeout:
                caught.append("first")
                Event().wait()  # and waits on
            return hello(environ, start_response)

        served = Served(swallows, [GET], "--request-timeout", "1")
        sock = served.sock
        first = sock.request_deadline
        served.sweep(first)
        assert caught == ["first"] and not sock.closed_by_server
        # the grace counts from when the sweeper called (the real clock, here ~``first - 1``)
        assert sock.request_deadline == pytest.approx(time.monotonic() + TIMEOUT_GRACE, abs=0.5)
        served.sweep(sock.request_deadline)
        assert served.ended() and sock.closed_by_server
        assert sock.sent == b""  # the 504 found the socket shut

    def test_no_clock_while_idle_or_after_the_request(self):
        served = Served(hello, [GET], "--request-timeout", "1")
        assert served.statuses() == [200] and served.sock.phase == PARKED
        assert served.sock.request_deadline == 0.0 and served.sock.expire is None
        served.greenlet.kill()


class TestRequestIds:
    def ids(self, served: Served) -> list[str]:
        return [
            line.split(b": ", 1)[1].decode()
            for line in bytes(served.sock.sent).split(b"\r\n")
            if line.startswith(b"X-Request-ID: ")
        ]

    def test_a_trusted_peers_id_is_used_in_the_environ_the_response_and_the_log(self):
        seen: list[str] = []

        def logs(environ: dict, start_response: Any) -> list[bytes]:
            seen.append(environ["greenserve.request_id"])
            structlog.get_logger().info("app line")
            return hello(environ, start_response)

        given = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: given-id-123\r\n\r\n"
        served = Served(logs, [given], "--access-log")
        assert self.ids(served) == ["given-id-123"] == seen
        served.greenlet.kill()
        served.ended()
        access = [e for e in served.events if e["event"] == "request"]
        assert access[0]["request_id"] == "given-id-123" and access[0]["status"] == 200

    def test_an_invalid_or_untrusted_id_is_replaced(self):
        invalid = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: " + b"x" * 300 + b"\r\n\r\n"
        served = Served(hello, [invalid])
        (request_id,) = self.ids(served)
        assert request_id != "x" * 300 and len(request_id) < 40
        served.greenlet.kill()
        untrusted = Served(hello, [GET.replace(b"\r\n\r\n", b"\r\nX-Request-ID: mine\r\n\r\n")],
                           "--forwarded-allow-ips", "10.0.0.1")  # fmt: skip
        assert self.ids(untrusted) != ["mine"]
        untrusted.greenlet.kill()

    def test_generated_ids_are_distinct(self):
        served = Served(hello, [GET] * 50)
        ids = self.ids(served)
        assert len(ids) == 50 and len(set(ids)) == 50
        served.greenlet.kill()


class TestSweeper:
    """The sweeper on its own: sockets in a phase, a clock the test moves."""

    def sockets(self, count: int, now: float) -> list[ScriptedSocket]:
        return [ScriptedSocket([], now=now) for _ in range(count)]

    def test_idleness_counts_from_the_last_bytes_moved(self):
        (sock,) = self.sockets(1, now=100.0)
        sweeper = IdleSweeper(10, [sock])
        assert sweeper.tick == 1.0
        sweeper.sweep(105.0)
        sock.rx += 1  # it moved: idle from the next look on
        sweeper.sweep(109.0)
        sweeper.sweep(118.9)
        assert not sock.shut
        sweeper.sweep(119.0)
        assert sock.shut

    def test_a_phase_deadline_shuts_even_a_busy_connection(self):
        (sock,) = self.sockets(1, now=0.0)
        sock.enter(HEAD, 5.0)
        sweeper = IdleSweeper(0, [sock])
        sock.rx += 10
        sweeper.sweep(4.99)
        assert not sock.shut
        sweeper.sweep(5.0)
        assert sock.shut

    def test_a_shut_connection_still_open_a_tick_later_has_its_greenlet_killed(self):
        (sock,) = self.sockets(1, now=0.0)
        sock.greenlet = gevent.spawn(gevent.sleep, 60)
        sock.enter(OPEN, 1.0)
        sweeper = IdleSweeper(0, [sock])
        sweeper.sweep(1.0)
        assert sock.shut and not sock.greenlet.dead
        sweeper.sweep(2.0)
        gevent.sleep(0)
        assert sock.greenlet.dead

    def test_the_request_clock_fires_once_and_may_set_a_later_one(self):
        (sock,) = self.sockets(1, now=0.0)
        calls: list[float] = []

        def expire() -> None:
            calls.append(sock.request_deadline)
            if len(calls) == 1:
                sock.clock_request(7.0, expire)

        sock.clock_request(3.0, expire)
        sweeper = IdleSweeper(0, [sock])
        for now in (2.0, 3.0, 3.5, 6.9, 7.0, 8.0, 9.0):
            sweeper.sweep(now)
        assert calls == [0.0, 0.0]  # cleared before each call: one call per deadline
        assert not sock.shut

    def test_the_tick_is_a_quarter_of_the_timeout_at_most(self):
        assert IdleSweeper(2, []).tick == 0.5
        assert IdleSweeper(0, [], tick=0.25).tick == 0.25


class TestDrain:
    """A graceful stop cuts parked connections off; a fresh one gets a moment for its first
    request; busy ones are left to finish."""

    def test_close_parked(self):
        connections = Connections(WorkerStats(), limit=10)
        fresh, parked, busy, soon = (ScriptedSocket([], now=0.0) for _ in range(4))
        for sock in (fresh, parked, busy, soon):
            connections.add(sock)
        fresh.enter(FRESH, 0.0)
        parked.enter(PARKED, 0.0)
        busy.enter(APP)
        soon.enter(PARKED, 1.0)  # its keep-alive deadline comes first
        connections.close_parked(within=30)
        assert busy.deadline == 0.0
        assert parked.deadline > fresh.deadline > 0
        assert parked.deadline - fresh.deadline == pytest.approx(30 - FIRST_REQUEST_GRACE, abs=1)
        assert soon.deadline == 1.0
