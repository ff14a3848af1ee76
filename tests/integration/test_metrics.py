"""/metrics and /healthz from a real master: exact numbers against what real clients sent."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from greenserve.metrics import catalog
from tests.helpers import echo_round_trip, running, scrape, traffic, wait_totals, wait_until

# without TLS, every family but the certificate's expiry
SCRAPED_FAMILIES = [
    f.metric for f in catalog.FAMILIES if f.name != "tls_certificate_expiry_timestamp_seconds"
]

COUNTERS = (
    "greenserve_connections_accepted_total",
    "greenserve_bytes_received_total",
    "greenserve_bytes_sent_total",
)


class TestExactAccounting:
    """Totals equal the traffic real clients sent, across worker deaths."""

    def test_totals_equal_known_traffic(self):
        with running("--workers", "2", "--stats-interval", "0.1") as server:
            server.started()
            traffic(server, 120, 1000)
            wait_totals(
                server,
                {
                    "greenserve_connections_accepted_total": 120,
                    "greenserve_bytes_received_total": 120_000,
                    "greenserve_bytes_sent_total": 120_000,
                    "greenserve_connections_active": 0,
                },
            )

    def test_sigkill_after_flush_loses_nothing_and_new_traffic_adds_exactly(self):
        with running("--workers", "2", "--stats-interval", "0.1") as server:
            server.started()
            traffic(server, 60, 500)
            before = wait_totals(server, {"greenserve_connections_accepted_total": 60})
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            server.wait_event("worker_started", count=3)
            seen = [scrape(server) for _ in range(5)]
            for totals in seen:
                for name in COUNTERS:
                    assert totals[name] >= before[name], name
            wait_totals(server, {name: before[name] for name in COUNTERS})
            traffic(server, 40, 250)
            wait_totals(
                server,
                {
                    "greenserve_connections_accepted_total": 100,
                    "greenserve_bytes_received_total": 40_000,
                    "greenserve_bytes_sent_total": 40_000,
                },
            )
            totals = scrape(server)
            assert totals["greenserve_worker_restarts_total[('reason', 'signal')]"] == 1
            assert totals["greenserve_workers_alive"] == 2

    def test_held_connections_show_as_active(self):
        with running("--workers", "2", "--stats-interval", "0.1") as server:
            server.started()
            held = [socket.create_connection(server.address, timeout=5) for _ in range(40)]
            try:
                for sock in held:  # a round trip proves each one was accepted
                    sock.sendall(b"x")
                    assert sock.recv(1) == b"x"
                wait_totals(server, {"greenserve_connections_active": 40})
            finally:
                for sock in held:
                    sock.close()
            wait_totals(server, {"greenserve_connections_active": 0})

    def test_frozen_master_does_not_slow_workers_and_loses_no_count(self):
        """Master SIGSTOPped 3 s: every client is served; afterwards drops are counted and the
        totals are exact."""
        with running("--workers", "2", "--stats-interval", "0.05") as server:
            server.started()
            server.signal(signal.SIGSTOP)
            served = failed = 0
            try:
                frozen_until = time.monotonic() + 3
                while time.monotonic() < frozen_until:
                    try:
                        assert echo_round_trip(server.address, b"z" * 100, timeout=2) == b"z" * 100
                        served += 1
                    except OSError:
                        failed += 1
            finally:
                server.signal(signal.SIGCONT)
            print(f"master frozen 3 s: {served} connections served, {failed} failed")
            assert failed == 0 and served > 100
            totals = wait_totals(
                server,
                {
                    "greenserve_connections_accepted_total": served,
                    "greenserve_bytes_received_total": served * 100,
                },
            )
            assert totals["greenserve_stats_dropped_total"] > 0
            wait_until(lambda: server.health()[0] == 200, 5, "healthy again")


class TestExposition:
    """The endpoint speaks what scrapers ask for, and real tools accept it."""

    def test_official_parser_help_and_every_family(self):
        with running("--workers", "2") as server:
            server.started()
            families = {f.name: f for f in text_string_to_metric_families(server.metrics_text())}
            for name in (*SCRAPED_FAMILIES, "process_resident_memory_bytes"):
                assert name in families and families[name].documentation, name
            rss = [s.value for s in families["greenserve_worker_resident_memory_bytes"].samples]
            assert len(rss) == 2 and all(v > 1_000_000 for v in rss)

    def test_openmetrics_and_gzip_negotiation(self):
        with running("--workers", "1") as server:
            server.started()
            status, body, headers = server.get(
                "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
            )
            assert status == 200
            assert headers["Content-Type"].startswith("application/openmetrics-text")
            assert body.rstrip().endswith(b"# EOF")
            status, body, headers = server.get("/metrics", {"Accept-Encoding": "gzip"})
            assert headers["Content-Encoding"] == "gzip"
            assert b"greenserve_workers_alive" in gzip.decompress(body)
            assert server.get("/nope")[0] == 404

    def test_promtool_check_metrics(self):
        promtool = shutil.which("promtool")
        if promtool is None:
            if os.environ.get("CI") == "true":
                pytest.fail(
                    "promtool is missing in CI: .ci/run must install the prometheus package"
                )
            pytest.skip("promtool not installed (Debian package prometheus)")
        with running("--workers", "2") as server:
            server.started()
            text = server.metrics_text()
        result = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stdout + result.stderr


class TestHealth:
    """/healthz is the readiness signal and reports a stuck worker."""

    def test_stopped_worker_turns_health_503_then_is_replaced(self):
        with running("--workers", "2", "--timeout", "1", "--stats-interval", "0.1") as server:
            server.started()
            status, body = server.health()
            assert status == 200 and body["status"] == "ok" and len(body["workers"]) == 2
            victim = server.worker_pids()[1]
            os.kill(victim, signal.SIGSTOP)
            status, body = wait_until(
                lambda: (lambda r: r if r[0] == 503 else None)(server.health()), 5, "503"
            )
            assert body["status"] == "degraded"
            assert body["workers"][1]["state"] in ("stale", "dead", "starting")
            assert echo_round_trip(server.address, b"other worker") == b"other worker"
            wait_until(lambda: server.health()[0] == 200, 10, "replaced and healthy")
            assert server.worker_pids()[1] != victim
            timeouts = scrape(server)["greenserve_worker_restarts_total[('reason', 'timeout')]"]
            assert timeouts == 1
            assert server.find("worker_timeout", slot=1)
