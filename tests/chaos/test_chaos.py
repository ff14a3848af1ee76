"""Fault injection under load: each scenario asserts a number and prints it.

Bounded for CI (the whole file runs in a few minutes); GREENSERVE_SOAK_SECONDS lengthens the soak.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import socket
import struct
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import (
    Load,
    echo_round_trip,
    per_worker,
    read_all,
    running,
    scrape,
    serving_http,
    settled_totals,
    wait_totals,
    wait_until,
)
from tests.http_corpus.corpus import VALID

SOAK_SECONDS = float(os.environ.get("GREENSERVE_SOAK_SECONDS", "12"))

pytestmark = pytest.mark.slow  # about 70 s in all: run the fast suites alone with -m 'not slow'


def kill_a_worker(server) -> int:
    """SIGKILL one of the server's workers at random; 1 if a kill landed, else 0."""
    pids = list(server.worker_pids().values())
    if not pids:
        return 0
    try:
        os.kill(random.choice(pids), signal.SIGKILL)
    except ProcessLookupError:
        return 0
    return 1


def zombies(sid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[3]) == sid:
                found.append(int(entry.name))
    return found


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> dict[str, str]:
    """What each of the process's fds points at, for a failure's message."""
    found = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found[entry.name] = os.readlink(entry)
    return found


def short_connection(address: tuple[str, int]) -> None:
    """A round trip that ends with RST, so 50,000 of them leave no TIME_WAIT behind."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"h")
        assert sock.recv(1) == b"h"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Monotonic:
    """Scrapes per-worker counters in a thread and records any that went backwards."""

    NAMES = ("greenserve_connections_accepted_total", "greenserve_bytes_received_total")

    def __init__(self, server) -> None:
        self.server = server
        self.backwards: list[str] = []
        self.scrapes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last: dict[tuple[str, str], float] = {}
        while not self.stop.is_set():
            try:
                for name in self.NAMES:
                    for worker, value in per_worker(self.server, name).items():
                        key = (name, worker)
                        if value < last.get(key, 0):
                            self.backwards.append(f"{key}: {last[key]} -> {value}")
                        last[key] = value
                self.scrapes += 1
            except OSError:
                pass
            self.stop.wait(0.1)

    def __enter__(self) -> Monotonic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


class TestKillsAndFreezes:
    """Killed and frozen processes: healthy afterwards, nothing counted wrong."""

    def test_kill_storm(self):
        with running("--workers", "2", "--stats-interval", "0.1") as server:
            server.started()
            kills = 0
            with Monotonic(server) as watch, Load(server.address) as load:
                wait_until(lambda: load.ok > 100, 10, "load")
                storm_end = time.monotonic() + 4
                while time.monotonic() < storm_end:
                    kills += kill_a_worker(server)
                    time.sleep(0.25)  # the storm's rhythm (every 250 ms), not a synchronisation
                wait_until(lambda: server.health()[0] == 200, 30, "every slot healthy")
            restarts = scrape(server)["greenserve_worker_restarts_total[('reason', 'signal')]"]
            print(
                f"kill storm: {kills} kills, {restarts:.0f} restarts counted, "
                f"{load.ok} round trips ok, {len(load.failed)} failed (in flight on killed "
                f"workers), {watch.scrapes} scrapes, {len(watch.backwards)} counters backwards"
            )
            assert watch.backwards == []
            assert restarts >= 0.9 * kills
            assert zombies(server.proc.pid) == []
            before = settled_totals(server)
            for _ in range(100):
                assert echo_round_trip(server.address, b"x" * 50) == b"x" * 50
            wait_totals(
                server,
                {
                    "greenserve_connections_accepted_total": before[
                        "greenserve_connections_accepted_total"
                    ]
                    + 100,
                    "greenserve_bytes_received_total": before["greenserve_bytes_received_total"]
                    + 5000,
                },
            )

    def test_frozen_master(self):
        with running("--workers", "2", "--stats-interval", "0.1") as server:
            server.started()
            with Load(server.address) as load:
                wait_until(lambda: load.ok > 50, 10, "load")
                server.signal(signal.SIGSTOP)
                frozen_at = load.ok
                try:
                    wait_until(lambda: load.ok > frozen_at + 500, 10, "served while frozen")
                    end = time.monotonic() + 4
                    while time.monotonic() < end:  # keep the master frozen for 4 s of load
                        time.sleep(0.1)  # the freeze's length is the scenario, not a sync
                    during = load.ok - frozen_at
                finally:
                    server.signal(signal.SIGCONT)
                wait_until(lambda: server.health()[0] == 200, 10, "healthy after SIGCONT")
            print(
                f"frozen master: {during} round trips during the freeze, {len(load.failed)} failed"
            )
            assert load.failed == []
            wait_totals(server, {"greenserve_connections_accepted_total": load.ok})

    def test_frozen_worker_is_replaced_after_the_timeout(self):
        with running("--workers", "2", "--timeout", "2", "--stats-interval", "0.1") as server:
            server.started()
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGSTOP)
            stopped = time.monotonic()
            with Load(server.address) as load:
                wait_until(
                    lambda: server.worker_pids().get(0) not in (None, victim), 10, "replaced"
                )
                replaced = time.monotonic() - stopped
                wait_until(lambda: server.health()[0] == 200, 10, "healthy")
            print(
                f"frozen worker: replaced after {replaced:.2f}s; others served {load.ok}, "
                f"{len(load.failed)} failed"
            )
            assert 2.0 <= replaced < 5.0
            assert load.failed == [] and load.ok > 100

    def test_channel_abuse_does_not_stop_the_other_workers_stats(self):
        with running("--workers", "2", "--stats-interval", "0.05") as server:
            server.started()
            with Load(server.address, threads=2) as load:
                wait_until(lambda: load.ok > 50, 10, "load")
                start = per_worker(server, "greenserve_connections_accepted_total")["1"]
                # Distinct pids: a killed worker stays a zombie until reaped, and kill() on it
                # succeeds, so counting calls would count one death many times. The respawn
                # backoff doubles (0.1, 0.2, 0.4 ...), so five deaths take ~2-4 s; at least
                # 3 s of abuse, at most 20.
                killed: set[int] = set()
                start_at = time.monotonic()
                while time.monotonic() - start_at < 20 and (
                    len(killed) < 5 or time.monotonic() - start_at < 3
                ):
                    pid = server.worker_pids().get(0)
                    if pid and pid not in killed:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            killed.add(pid)
                        except ProcessLookupError:
                            pass
                    time.sleep(0.005)  # pacing the poll, not synchronisation
                kills = len(killed)
                advanced = per_worker(server, "greenserve_connections_accepted_total")["1"] - start
            print(f"channel abuse: slot 0 killed {kills} times; slot 1 counted {advanced:.0f} more")
            assert kills >= 5 and advanced > 100
            wait_until(lambda: server.health()[0] == 200, 30, "healthy again")


def settled(read: Any, timeout: float = 5.0) -> int:
    """A count that read the same twice, 0.1 s apart."""
    last = [read()]

    def same() -> bool:
        now = read()
        unchanged = now == last[0]
        last[0] = now
        return unchanged

    wait_until(same, timeout, "a count that stops moving", step=0.1)
    return last[0]


class TestResources:
    """No fd or memory leak per connection; floods are survived and visible."""

    def test_hygiene_fds_and_rss(self):
        with running("--workers", "1") as server:
            server.started()
            (pid,) = server.worker_pids().values()
            for _ in range(2000):  # warm-up: pools and caches reach their size first
                short_connection(server.address)
            # the last connections the client closed may still be open in the worker for a
            # moment, longer than 0.1 s on a loaded machine (CI read a baseline one too high
            # twice, and the count then never came back *up* to it): the count must come back
            # to at most the settled baseline; a leak per connection would leave thousands
            fds_before = settled(lambda: fds(pid))
            listing_before = fd_targets(pid)
            for _ in range(3000):
                short_connection(server.address)
            try:
                wait_until(lambda: fds(pid) <= fds_before, 5, "fd count back")
            except AssertionError:
                after = fd_targets(pid)
                raise AssertionError(
                    f"fds {fds_before} -> {len(after)}: "
                    f"new {sorted(set(after.items()) - set(listing_before.items()))}"
                ) from None
            rss_before = rss(pid)
            for _ in range(50_000):
                short_connection(server.address)
            growth = rss(pid) - rss_before
            print(
                f"hygiene: fds {fds_before} -> {fds(pid)} after 3,000; RSS +{growth / 1e6:.2f} MB"
                " after 50,000 connections"
            )
            assert growth < 5_000_000
            assert server.worker_pids() == {0: pid}

    def test_flood_of_idle_sockets(self):
        with running(
            "--workers",
            "1",
            "--max-connections",
            "50",
            "--idle-timeout",
            "2",
            "--stats-interval",
            "0.1",
        ) as server:
            server.started()
            (pid,) = server.worker_pids().values()
            flood = [socket.create_connection(server.address, timeout=30) for _ in range(300)]
            try:
                wait_totals(server, {"greenserve_connections_active": 50})
                started = time.monotonic()
                assert echo_round_trip(server.address, b"newcomer", timeout=40) == b"newcomer"
                waited = time.monotonic() - started
            finally:
                for sock in flood:
                    sock.close()
            rounds = 300 / 50
            print(
                f"flood: 300 idle sockets, a new client served after {waited:.1f}s "
                f"({rounds:.0f} idle-timeout rounds of 2 s)"
            )
            assert waited < rounds * 2.5 + 5
            assert server.worker_pids() == {0: pid}
            wait_until(
                lambda: scrape(server)["greenserve_connections_accepted_total"] >= 301,
                5,
                "the flood and the newcomer counted",
            )


class TestHostileHttp:
    """Slow and malformed clients cannot hurt the others or the worker."""

    def test_slowloris(self):
        with serving_http("--header-timeout", "2", "--stats-interval", "0.1") as server:
            server.started()
            (pid,) = server.worker_pids().values()
            slow = [socket.create_connection(server.address, timeout=10) for _ in range(500)]
            for sock in slow:
                sock.setblocking(False)
            request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 100
            latencies: list[float] = []
            closed: dict[int, float] = {}
            started = time.monotonic()
            position = 0
            while len(closed) < len(slow) and time.monotonic() - started < 8:
                for index, sock in enumerate(slow):  # one header byte a second each
                    if index not in closed:
                        try:
                            sock.send(request[position : position + 1])
                        except OSError:
                            closed[index] = time.monotonic() - started
                position += 1
                readable, _, _ = select.select(
                    [s for i, s in enumerate(slow) if i not in closed], [], [], 0
                )
                for sock in readable:
                    try:
                        data = sock.recv(100)
                    except OSError:
                        data = b""
                    if not data:
                        closed[slow.index(sock)] = time.monotonic() - started
                second_end = time.monotonic() + 1
                while time.monotonic() < second_end:
                    began = time.perf_counter()
                    with urllib.request.urlopen(
                        f"http://{server.address[0]}:{server.address[1]}/", timeout=5
                    ) as response:
                        assert response.status == 200
                    latencies.append(time.perf_counter() - began)
            for sock in slow:
                sock.close()
            latencies.sort()
            p99 = latencies[int(len(latencies) * 0.99)]
            last_close = max(closed.values()) if closed else float("inf")
            print(
                f"slowloris: {len(closed)}/500 closed, last after {last_close:.1f}s; "
                f"{len(latencies)} normal requests, p99 {p99 * 1000:.1f} ms"
            )
            assert len(closed) == 500 and last_close < 2 + 1.5
            assert p99 < 0.1
            assert server.worker_pids() == {0: pid}

    def test_http_fuzz(self):
        with serving_http("--header-timeout", "1", "--keepalive-timeout", "1") as server:
            server.started()
            (pid,) = server.worker_pids().values()
            statuses: dict[str, int] = {}
            valid = [raw for _, raw, _ in VALID]

            @st.composite
            def requests(draw) -> bytes:
                if draw(st.booleans()):
                    return draw(st.binary(min_size=1, max_size=300))
                data = bytearray(draw(st.sampled_from(valid))[:2000])
                for _ in range(draw(st.integers(1, 4))):
                    at = draw(st.integers(0, len(data)))
                    op = draw(st.sampled_from(("flip", "insert", "delete")))
                    if op == "flip" and at < len(data):
                        data[at] = draw(st.integers(0, 255))
                    elif op == "insert":
                        data[at:at] = draw(st.binary(min_size=1, max_size=8))
                    else:
                        del data[at : at + draw(st.integers(1, 8))]
                return bytes(data)

            @settings(
                max_examples=300,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            @given(requests())
            def check(raw: bytes) -> None:
                with socket.create_connection(server.address, timeout=5) as sock:
                    started = time.monotonic()
                    with contextlib.suppress(OSError):  # the server may close early
                        sock.sendall(raw)
                    reply = read_all(sock, timeout=5)  # fails if the server never closes
                    elapsed = time.monotonic() - started
                # the header or keep-alive deadline (1 s) plus a sweep, with room for a loaded
                # machine: what matters is that the server closes, where read_all would fail
                assert elapsed < 5
                if reply:
                    first = reply.split(b"\r\n", 1)[0]
                    assert first.startswith(b"HTTP/1.1 ") and first[9:12].isdigit(), first
                    code = first[9:12].decode()
                    statuses[code] = statuses.get(code, 0) + 1
                else:
                    statuses["closed"] = statuses.get("closed", 0) + 1

            check()
            print(f"http fuzz: 300 inputs -> {dict(sorted(statuses.items()))}; worker alive")
            assert server.worker_pids() == {0: pid}
            assert sum(statuses.values()) == 300


class TestHandlerFailures:
    """A raising handler costs exactly its own connection, logged and counted."""

    def test_failures_close_only_their_connection_and_are_counted(self):
        with running(
            "greenserve_testapps:fail_on_boom", "--workers", "2", "--stats-interval", "0.1"
        ) as server:
            server.started()
            bystander = socket.create_connection(server.address, timeout=5)
            failures = 25
            for _ in range(failures):
                with socket.create_connection(server.address, timeout=5) as doomed:
                    doomed.sendall(b"boom\n")
                    assert doomed.recv(10) == b""
            bystander.sendall(b"alive\n")
            assert bystander.recv(10) == b"alive\n"
            bystander.close()
            errors = server.wait_event("handler_error", count=failures)
            assert all("RuntimeError: boom requested" in e["exception"] for e in errors)
            totals = wait_totals(server, {"greenserve_handler_errors_total": failures})
            print(
                f"handler failures: {failures} raised, "
                f"{totals['greenserve_handler_errors_total']:.0f} counted, bystander served"
            )


class TestSoak:
    """Mixed echo and HTTP load with a HUP every 10 s and a worker kill every 5 s."""

    def test_soak(self):
        with (
            running("--workers", "2", "--stats-interval", "0.2") as tcp,
            serving_http("--stats-interval", "0.2", workers=2) as http,
        ):
            tcp.started()
            http.started()
            rss_start = {name: self._rss(s) for name, s in (("tcp", tcp), ("http", http))}
            http_ok, http_failed = [0], [0]
            stop = threading.Event()

            def http_load() -> None:
                url = f"http://{http.address[0]}:{http.address[1]}/"
                while not stop.is_set():
                    try:
                        with urllib.request.urlopen(url, timeout=5) as response:
                            response.read()
                        http_ok[0] += 1
                    except OSError:
                        http_failed[0] += 1

            threads = [threading.Thread(target=http_load, daemon=True) for _ in range(2)]
            kills = hups = 0
            with Load(tcp.address, threads=2) as load:
                for thread in threads:
                    thread.start()
                began = time.monotonic()
                next_kill, next_hup = began + 5, began + 10
                while time.monotonic() - began < SOAK_SECONDS:
                    now = time.monotonic()
                    if now >= next_kill:
                        for server in (tcp, http):
                            kills += kill_a_worker(server)
                        next_kill += 5
                    if now >= next_hup:
                        tcp.signal(signal.SIGHUP)
                        http.signal(signal.SIGHUP)
                        hups += 1
                        next_hup += 10
                    time.sleep(0.05)  # the schedule's resolution, not a synchronisation
                stop.set()
                for thread in threads:
                    thread.join(10)
            failed = len(load.failed) + http_failed[0]
            ok = load.ok + http_ok[0]
            rss_end = {name: self._rss(s) for name, s in (("tcp", tcp), ("http", http))}
            print(
                f"soak {SOAK_SECONDS:.0f}s: {ok} ok, {failed} failed, {kills} kills, {hups} HUPs; "
                f"RSS start {rss_start} end {rss_end}"
            )
            # a failure is a request in flight on a killed worker: at most one per client each
            assert failed <= kills * 2
            for server in (tcp, http):
                wait_until(lambda s=server: s.health()[0] == 200, 20, "healthy at the end")

    @staticmethod
    def _rss(server) -> dict[str, float]:
        workers = [rss(pid) for pid in server.worker_pids().values()]
        return {
            "master_mb": round(rss(server.proc.pid) / 1e6, 1),
            "worker_mb": round(max(workers) / 1e6, 1) if workers else 0,
        }


class TestSecurity:
    """Metrics stay private by default; workers never keep root."""

    def test_non_loopback_metrics_bind_warns(self):
        with running("--workers", "1", "--metrics-bind", "0.0.0.0:0") as server:
            server.started()
            warning = server.wait_event("metrics_exposed")[0]
            assert warning["level"] == "warning"
        with running("--workers", "1") as server:
            server.started()
            assert not server.find("metrics_exposed")
            assert server.metrics_address[0] == "127.0.0.1"

    def test_workers_with_user_hold_no_root_id_at_all(self):
        if os.geteuid() != 0:
            import pytest

            pytest.skip("needs root to switch users")
        with running("--workers", "2", "--user", "nobody") as server:
            server.started()
            for pid in server.worker_pids().values():
                status = Path(f"/proc/{pid}/status").read_text()
                ids = {
                    line.split(":")[0]: line.split(":", 1)[1].split()
                    for line in status.splitlines()
                    if line.split(":")[0] in ("Uid", "Gid", "Groups")
                }
                assert "0" not in ids["Uid"] and "0" not in ids["Gid"]
                assert "0" not in ids["Groups"]
                caps = next(line for line in status.splitlines() if line.startswith("CapEff"))
                assert int(caps.split()[1], 16) == 0
