"""greenserve status, top and client against a real running server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pexpect

from tests.helpers import (
    ANSI,
    echo_round_trip,
    free_port,
    metrics_url,
    running,
    scrape,
    spawn_top,
    tool,
    traffic,
    wait_totals,
    wait_until,
)


class TestStatus:
    """status: the same numbers as /metrics, and exit codes scripts can use."""

    def test_json_matches_metrics(self):
        with running("--workers", "2", "--stats-interval", "0.1") as server:
            server.started()
            traffic(server, 30, 200)
            wait_totals(server, {"greenserve_connections_accepted_total": 30})
            result = tool("status", "--json", "--metrics", metrics_url(server))
            assert result.returncode == 0, result.stdout + result.stderr
            report = json.loads(result.stdout)
            totals = scrape(server)
            assert report["healthy"] is True
            assert report["workers_desired"] == 2 == totals["greenserve_workers_desired"]
            assert report["totals"]["accepted"] == 30
            assert report["totals"]["bytes_in"] == totals["greenserve_bytes_received_total"]
            pids = server.worker_pids()
            for row in report["workers"]:
                assert row["pid"] == pids[int(row["worker"])]
                assert row["state"] == "ready"
            assert sum(row["accepted"] for row in report["workers"]) == 30

    def test_a_reader_that_goes_away_ends_it_quietly(self):
        """greenserve status --json | head -1: a closed pipe, not a BrokenPipeError traceback."""
        with running("--workers", "1") as server:
            server.started()
            read_end, write_end = os.pipe()
            os.close(read_end)  # the reader is gone before the first write: EPIPE every time
            command = [sys.executable, "-m", "greenserve", "status", "--json"]
            try:
                result = subprocess.run(
                    [*command, "--metrics", metrics_url(server)],
                    stdout=write_end,
                    stderr=subprocess.PIPE,
                    text=True,
                    timeout=30,
                )
            finally:
                os.close(write_end)
            assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
            assert result.stderr == "", result.stderr

    def test_exit_codes_healthy_degraded_unreachable(self):
        with running("--workers", "2", "--timeout", "30", "--stats-interval", "0.2") as server:
            server.started()
            url = metrics_url(server)
            healthy = tool("status", "--metrics", url)
            assert healthy.returncode == 0, healthy.stdout
            assert "healthy" in healthy.stdout
            host, port = server.metrics_address  # the --metrics-bind form works too
            by_address = tool("status", "--metrics", f"{host}:{port}")
            assert by_address.returncode == 0 and by_address.stdout.startswith(
                f"greenserve at {url}: healthy"
            ), by_address.stdout
            victim = server.worker_pids()[1]
            os.kill(victim, signal.SIGSTOP)
            try:
                degraded = wait_until(
                    lambda: (lambda r: r if r.returncode == 1 else None)(
                        tool("status", "--metrics", url)
                    ),
                    10,
                    "status exit 1",
                )
                assert "DEGRADED" in degraded.stdout
            finally:
                os.kill(victim, signal.SIGCONT)
        unreachable = tool("status", "--metrics", f"http://127.0.0.1:{free_port()}/metrics")
        assert unreachable.returncode == 2
        assert "unreachable" in unreachable.stdout
        as_json = tool("status", "--json", "--metrics", f"http://127.0.0.1:{free_port()}/m")
        assert as_json.returncode == 2 and json.loads(as_json.stdout)["reachable"] is False

    def test_default_url_comes_from_settings(self):
        with running("--workers", "1") as server:
            server.started()
            host, port = server.metrics_address
            result = subprocess.run(
                [sys.executable, "-m", "greenserve", "status", "--json"],
                capture_output=True,
                text=True,
                timeout=20,
                env={**os.environ, "GREENSERVE_METRICS_BIND": f"{host}:{port}"},
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert json.loads(result.stdout)["url"] == f"http://{host}:{port}/metrics"


class TestTop:
    """top in a real pseudo-terminal: a row per worker, live rates, q quits."""

    def test_rows_rates_and_quit(self):
        with running("--workers", "2", "--stats-interval", "0.2") as server:
            server.started()
            child = spawn_top(server, 40, 220)
            stop = threading.Event()

            def load() -> None:
                deadline = time.monotonic() + 15
                while not stop.is_set() and time.monotonic() < deadline:
                    echo_round_trip(server.address, b"top")

            loader = threading.Thread(target=load, daemon=True)
            try:
                child.expect("acc/s")
                loader.start()
                deadline = time.monotonic() + 12
                rate = 0.0
                rows_seen: set[str] = set()
                while time.monotonic() < deadline and not (rate > 0 and len(rows_seen) == 2):
                    child.expect(r"[│┃] *total *[│┃][^\n]*")
                    cells = [c.strip() for c in re.split("[│┃]", ANSI.sub("", child.after))]
                    cells = [c for c in cells if c]
                    rate = float(cells[5]) if cells[5] != "-" else 0.0  # acc/s
                    screen = ANSI.sub("", child.before)
                    for worker in ("0", "1"):
                        if re.search(rf"[│┃] *{worker} *[│┃] *\d+ *[│┃] *ready", screen):
                            rows_seen.add(worker)
                assert rows_seen == {"0", "1"}
                assert rate > 0, "accepted/s never rose above 0 under traffic"
                child.send("q")
                child.expect(pexpect.EOF)
            finally:
                stop.set()
                child.close(force=True)
            assert child.exitstatus == 0

    def test_survives_the_server_going_away(self):
        port = free_port()
        child = pexpect.spawn(
            sys.executable,
            ["-m", "greenserve", "top", "--metrics", f"http://127.0.0.1:{port}/metrics"],
            dimensions=(30, 160),
            encoding="utf-8",
            timeout=10,
        )
        try:
            child.expect("unreachable")
            child.expect("unreachable")  # still refreshing, not crashed
            child.send("q")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0


class TestClient:
    """client round-trips lines, piped and in a terminal."""

    def test_piped_lines_are_echoed(self):
        with running("--workers", "1") as server:
            server.started()
            host, port = server.address
            result = tool("client", f"{host}:{port}", stdin="hello\nworld\n")
            assert result.returncode == 0, result.stderr
            assert result.stdout == "hello\nworld\n"

    def test_interactive_prompt_and_ctrl_d(self):
        with running("--workers", "1") as server:
            server.started()
            host, port = server.address
            child = pexpect.spawn(
                sys.executable,
                ["-m", "greenserve", "client", f"{host}:{port}"],
                encoding="utf-8",
                timeout=10,
            )
            try:
                child.expect(">>: ")
                child.sendline("ping pong")
                child.expect("ping pong\r\n.*ping pong")  # the typed line, then the reply
                child.expect(">>: ")
                child.sendeof()
                child.expect(pexpect.EOF)
            finally:
                child.close(force=True)
            assert child.exitstatus == 0

    def test_nothing_listening_is_one_line_and_exit_1(self):
        result = tool("client", f"127.0.0.1:{free_port()}", stdin="x\n")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot connect to 127.0.0.1" in lines[0]
        assert "refused" in lines[0]
