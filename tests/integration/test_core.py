"""The pre-fork master and its gevent workers, as real processes on real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from greenserve.config import usable_cpus
from tests.helpers import (
    echo_round_trip,
    group_alive,
    port_is_free,
    running,
    tool,
    wait_until,
)


def _client(address: tuple[str, int], rounds: int, index: int) -> int:
    ok = 0
    with socket.create_connection(address, timeout=10) as sock:
        for n in range(rounds):
            payload = f"client {index} round {n}\n".encode()
            sock.sendall(payload)
            received = b""
            while len(received) < len(payload):
                received += sock.recv(4096)
            ok += received == payload
    return ok


class TestServing:
    """Echo over many workers and many concurrent connections."""

    def test_auto_workers_echo_50_clients_20_round_trips(self):
        """--workers auto starts one worker per usable CPU and echoes every round trip."""
        with running("--workers", "auto") as server:
            server.started()
            assert server.workers == usable_cpus()
            wait_until(lambda: len(server.worker_pids()) == usable_cpus(), 5, "worker titles")
            with ThreadPoolExecutor(50) as pool:
                results = list(pool.map(lambda i: _client(server.address, 20, i), range(50)))
            assert results == [20] * 50

    def test_one_worker_serves_200_slow_clients_concurrently(self):
        """200 clients of a handler that sleeps 1 s cooperatively, one worker, all in < 2 s."""
        with running("greenserve_testapps:slow_echo", "--workers", "1") as server:
            server.started()
            started = time.monotonic()
            with ThreadPoolExecutor(200) as pool:
                replies = list(
                    pool.map(lambda i: echo_round_trip(server.address, b"%d" % i), range(200))
                )
            elapsed = time.monotonic() - started
            print(f"200 slow clients on one worker answered in {elapsed:.2f}s")
            assert replies == [b"%d" % i for i in range(200)]
            assert elapsed < 20  # concurrent; one after another would take 200 s

    def test_handler_exception_closes_only_that_connection(self):
        """A raising handler is logged with its traceback; the worker keeps serving."""
        with running("greenserve_testapps:fail_on_boom", "--workers", "1") as server:
            server.started()
            with socket.create_connection(server.address, timeout=5) as doomed:
                doomed.sendall(b"boom\n")
                assert doomed.recv(100) == b""  # closed by the server
            assert echo_round_trip(server.address, b"still here") == b"still here"
            error = server.wait_event("handler_error")[0]
            assert "RuntimeError: boom requested" in error["exception"]
            assert server.worker_pids()  # same worker, alive

    def test_idle_connection_is_closed_after_idle_timeout(self):
        """A silent connection is closed after --idle-timeout; a busy one is not."""
        with running("--workers", "1", "--idle-timeout", "0.5") as server:
            server.started()
            with socket.create_connection(server.address, timeout=5) as idle:
                started = time.monotonic()
                assert idle.recv(10) == b""
                assert 0.4 < time.monotonic() - started < 3

    def test_idle_handler_that_ignores_end_of_file_is_ended(self):
        """A handler that never reads is killed a sweep after its connection was shut down."""
        with running(
            "greenserve_testapps:never_reads", "--workers", "1", "--idle-timeout", "0.4"
        ) as server:
            server.started()
            with socket.create_connection(server.address, timeout=5) as idle:
                started = time.monotonic()
                assert idle.recv(10) == b""
                elapsed = time.monotonic() - started
            assert 0.35 < elapsed < 3
            assert not server.find("handler_error")


class TestWorkerReplacement:
    """Dead workers are replaced in their slot, at once, and serving goes on."""

    def test_killed_worker_is_replaced_within_one_second(self):
        """SIGKILL of a worker: its slot serves again within 1 s; the other keeps serving."""
        with running("--workers", "2") as server:
            server.started()
            before = server.worker_pids()
            killed_at = time.monotonic()
            os.kill(before[0], signal.SIGKILL)
            failures = 0
            for _ in range(50):
                try:
                    assert echo_round_trip(server.address, b"x") == b"x"
                except OSError:
                    failures += 1
            server.wait_event("worker_started", count=3, timeout=5)
            replaced = wait_until(
                lambda: server.worker_pids().get(0) not in (None, before[0]), 2, "new worker 0"
            )
            elapsed = time.monotonic() - killed_at
            print(f"worker replaced and serving {elapsed * 1000:.0f} ms after SIGKILL")
            assert replaced
            assert elapsed < 5  # a fork from the forkserver, not a restart loop (printed above)
            assert failures == 0
            exited = server.wait_event("worker_exited", slot=0)[0]
            assert exited["signal"] == "SIGKILL"


class TestStopping:
    """TERM drains in-flight work; nothing outlives the master."""

    def test_term_lets_20_in_flight_connections_finish(self):
        """TERM while 20 slow requests are in flight: all complete, exit 0, no process left."""
        with running("greenserve_testapps:slow_echo", "--workers", "2") as server:
            server.started()
            with ThreadPoolExecutor(20) as pool:
                socks = [socket.create_connection(server.address, timeout=10) for _ in range(20)]
                for n, sock in enumerate(socks):
                    sock.sendall(b"%d" % n)
                wait_until(
                    lambda: (
                        sum(
                            int(float(line.split()[-1]))
                            for line in server.metrics_text().splitlines()
                            if line.startswith("greenserve_connections_active{")
                        )
                        == 20
                    ),
                    5,
                    "20 active connections",
                )
                server.signal(signal.SIGTERM)
                replies = list(pool.map(lambda s: s.recv(100), socks))
                for sock in socks:
                    sock.close()
            assert replies == [b"%d" % n for n in range(20)]
            assert server.wait_exit(15) == 0
            assert wait_until(lambda: not group_alive(server.proc.pid), 5, "no process left")
            assert port_is_free(server.port)

    def test_term_while_a_worker_boots_stops_at_once(self):
        """A stop during a worker's boot is not lost (it used to wait for the 31 s kill)."""
        with running("slow_import:handle", "--workers", "1") as server:
            server.wait_event("worker_spawned")
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            assert server.wait_exit(10) == 0
            assert time.monotonic() - started < 5

    def test_quit_stops_at_once(self):
        """QUIT does not wait for in-flight connections (a graceful stop would wait 30 s for a
        handler that never ends)."""
        with running("greenserve_testapps:never_reads", "--workers", "1") as server:
            server.started()
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(b"x")
                wait_until(lambda: server.find("worker_started"), 5, "worker")
                started = time.monotonic()
                server.signal(signal.SIGQUIT)
                assert server.wait_exit(10) == 0
                assert time.monotonic() - started < 10

    def test_sigkill_of_master_takes_the_workers_down(self):
        """SIGKILL of the master: its workers are gone within 2 s and the port is free."""
        with running("--workers", "2") as server:
            server.started()
            workers = list(server.worker_pids().values())
            assert len(workers) == 2
            server.signal(signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: not any(_alive(pid) for pid in workers), 2, "workers gone")
            print(f"workers gone {1000 * (time.monotonic() - killed):.0f} ms after master")
            wait_until(lambda: port_is_free(server.port), 2, "port free")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class TestFailuresAtStart:
    """Bad usage, busy addresses and broken apps: one line, the right exit code."""

    def _run(self, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        return tool(*args, "--log-format", "json", timeout=timeout)

    def test_bad_worker_count_is_usage_error(self):
        result = self._run("--workers", "zero", "--bind", "127.0.0.1:0")
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "workers" in lines[0] and "'zero'" in lines[0]
        assert result.stdout == ""

    def test_address_in_use_exits_1_naming_it(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = self._run("--bind", f"127.0.0.1:{port}", "--metrics-bind", "off")
        assert result.returncode == 1
        output = (result.stdout + result.stderr).strip().splitlines()
        assert len(output) == 1
        assert f"cannot bind 127.0.0.1:{port}: address already in use" in output[0]
        assert "Traceback" not in result.stdout + result.stderr

    def test_missing_app_module_exits_3_quickly(self):
        started = time.monotonic()
        result = self._run("no_such_module:app", "--bind", "127.0.0.1:0", "--metrics-bind", "off")
        assert result.returncode == 3
        assert time.monotonic() - started < 10
        assert "no_such_module" in result.stdout
        assert "Traceback" not in result.stdout + result.stderr

    def test_app_whose_import_raises_exits_3_with_traceback_in_one_field(self):
        result = self._run("broken_import:app", "--bind", "127.0.0.1:0", "--metrics-bind", "off")
        assert result.returncode == 3
        failures = [line for line in result.stdout.splitlines() if "app_load_failed" in line]
        assert failures and "this module cannot be imported" in failures[0]
        assert all(line.startswith("{") for line in result.stdout.splitlines())

    def test_app_that_is_not_callable_exits_3(self):
        result = self._run(
            "greenserve_testapps:not_callable", "--bind", "127.0.0.1:0", "--metrics-bind", "off"
        )
        assert result.returncode == 3
        assert "not callable" in result.stdout
