"""Connections spread fairly across workers, on a shared socket or with --reuse-port."""

from __future__ import annotations

import os
import signal
import socket

from tests.helpers import echo_round_trip, per_worker, running, wait_until


def burst(address: tuple[str, int], count: int) -> list[socket.socket]:
    """Open ``count`` connections at once and prove each is accepted (one round trip each)."""
    socks = [socket.create_connection(address, timeout=10) for _ in range(count)]
    for sock in socks:
        sock.sendall(b"b")
    for sock in socks:
        assert sock.recv(1) == b"b"
    return socks


class TestFairAccepts:
    """A burst of held connections lands evenly (max/min <= 1.25)."""

    def test_shared_socket_burst_is_balanced(self):
        with running("--workers", "2", "--stats-interval", "0.05") as server:
            server.started()
            for size in (50, 200):
                socks = burst(server.address, size)
                try:
                    counts = wait_until(
                        lambda size=size: (lambda c: c if sum(c.values()) == size else None)(
                            per_worker(server, "greenserve_connections_active")
                        ),
                        5,
                        "active counts reported",
                    )
                finally:
                    for sock in socks:
                        sock.close()
                print(f"burst of {size}: {counts}")
                assert max(counts.values()) / max(min(counts.values()), 1) <= 1.25
                wait_until(
                    lambda: sum(per_worker(server, "greenserve_connections_active").values()) == 0,
                    5,
                    "closed",
                )

    def test_reuse_port_serves_balances_and_keeps_a_slot_socket_across_restarts(self):
        with running("--workers", "2", "--reuse-port", "--stats-interval", "0.05") as server:
            server.started()
            socks = burst(server.address, 100)
            counts = wait_until(
                lambda: (lambda c: c if sum(c.values()) == 100 else None)(
                    per_worker(server, "greenserve_connections_active")
                ),
                5,
                "active counts",
            )
            for sock in socks:
                sock.close()
            print(f"--reuse-port burst of 100: {counts}")
            assert min(counts.values()) > 0  # the kernel spreads them; both sockets serve
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            # connections made while slot 0 has no worker wait on its socket, then are served
            results = [echo_round_trip(server.address, b"queued", timeout=10) for _ in range(40)]
            assert results == [b"queued"] * 40
            wait_until(lambda: server.worker_pids().get(0) not in (None, victim), 10, "replaced")

    def test_reuse_port_scale_down_stops_routing_to_the_removed_slot(self):
        with running("--workers", "2", "--reuse-port") as server:
            server.started()
            server.signal(signal.SIGTTOU)
            wait_until(lambda: len(server.worker_pids()) == 1, 10, "one worker")
            # every new connection must reach the remaining worker: none may hang on the
            # removed slot's socket
            results = [echo_round_trip(server.address, b"after", timeout=3) for _ in range(60)]
            assert results == [b"after"] * 60


class TestMetricsShowBalance:
    """Per-worker accepted counts are on /metrics for operators to watch."""

    def test_accepted_per_worker(self):
        with running("--workers", "2", "--stats-interval", "0.05") as server:
            server.started()
            socks = burst(server.address, 40)
            for sock in socks:
                sock.close()
            accepted = wait_until(
                lambda: (lambda c: c if sum(c.values()) >= 40 else None)(
                    per_worker(server, "greenserve_connections_accepted_total")
                ),
                5,
                "accepted counts",
            )
            assert set(accepted) == {"0", "1"} and min(accepted.values()) >= 15
