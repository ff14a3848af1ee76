"""What operators do every day: reload, scale, recycle, recover from stuck workers."""

from __future__ import annotations

import http.client
import os
import pwd
import signal
import socket
from pathlib import Path

import pytest

from tests.helpers import (
    ClientLoad,
    Load,
    echo_round_trip,
    free_port,
    running,
    scrape,
    serving_http,
    wait_totals,
    wait_until,
)


class TestReload:
    """HUP replaces every worker without refusing anyone."""

    def test_hup_under_load_changes_every_pid_and_fails_nothing(self):
        with running("--workers", "2", "--stats-interval", "0.2") as server:
            server.started()
            before = server.worker_pids()
            with Load(server.address) as load:
                wait_until(lambda: load.ok > 200, 10, "load running")
                server.signal(signal.SIGHUP)
                server.wait_event("reload_complete", timeout=15)
                wait_until(
                    lambda: (
                        set(server.worker_pids().values()).isdisjoint(before.values())
                        and len(server.worker_pids()) == 2
                    ),
                    10,
                    "every worker replaced",
                )
                served_at_reload = load.ok
                wait_until(lambda: load.ok > served_at_reload + 200, 10, "serving after reload")
            print(f"HUP under load: {load.ok} connections served, {len(load.failed)} failed")
            assert load.failed == []
            reload = server.find("reload")[0]
            assert reload["generation"] == 2
            totals = wait_totals(server, {"greenserve_generation": 2})
            assert totals["greenserve_worker_restarts_total[('reason', 'reload')]"] == 2

    def test_hup_with_a_broken_config_keeps_the_running_workers(self, tmp_path):
        config = tmp_path / "greenserve.toml"
        config.write_text("workers = 2\n")
        with running("--config", str(config)) as server:
            server.started()
            before = server.worker_pids()
            config.write_text("workers = -3\n")
            server.signal(signal.SIGHUP)
            failure = server.wait_event("reload_failed")[0]
            assert "workers" in failure["error"]
            assert server.worker_pids() == before
            assert echo_round_trip(server.address, b"still") == b"still"

    def test_hup_rereads_the_file_and_the_cli_bind_still_wins(self, tmp_path):
        config = tmp_path / "greenserve.toml"
        new_port = free_port()
        config.write_text("workers = 1\n")
        with running("--config", str(config), "--bind", "127.0.0.1:0") as server:
            server.started()
            old_address = server.address
            config.write_text(f'workers = 2\nbind = "127.0.0.1:{new_port}"\n')
            server.signal(signal.SIGHUP)
            server.wait_event("reload_complete", timeout=15)
            changed = server.find("reload")[0]["changed"]
            # CLI --bind still wins over the file: only workers changed
            assert set(changed) == {"workers"}
            wait_until(lambda: len(server.worker_pids()) == 2, 10, "two workers")
            assert echo_round_trip(old_address, b"same bind") == b"same bind"

    def test_hup_moves_to_a_new_bind_and_closes_the_old(self, tmp_path):
        ports = [free_port(), free_port()]
        config = tmp_path / "greenserve.toml"
        config.write_text(f'workers = 1\nbind = "127.0.0.1:{ports[0]}"\n')
        with running("--config", str(config), default_bind=False) as server:
            server.started()
            assert server.port == ports[0]
            config.write_text(f'workers = 1\nbind = "127.0.0.1:{ports[1]}"\n')
            server.signal(signal.SIGHUP)
            server.wait_event("reload_complete", timeout=15)
            assert server.find("reload")[0]["changed"]["bind"] == [
                f"127.0.0.1:{ports[0]}",
                f"127.0.0.1:{ports[1]}",
            ]
            assert echo_round_trip(("127.0.0.1", ports[1]), b"new bind") == b"new bind"

            def old_closed() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
                except ConnectionRefusedError:
                    return True
                return False

            wait_until(old_closed, 10, "old address closed after the drain")

    def test_reload_to_an_app_that_cannot_load_rolls_back(self, tmp_path):
        config = tmp_path / "greenserve.toml"
        config.write_text('workers = 1\napp = "greenserve_testapps:fail_on_boom"\n')
        with running("--config", str(config)) as server:
            server.started()
            before = server.worker_pids()
            config.write_text('workers = 1\napp = "no_such_module:app"\n')
            server.signal(signal.SIGHUP)
            failure = server.wait_event("reload_failed", timeout=15)[0]
            assert "cannot load" in failure["error"]
            assert server.worker_pids() == before
            assert echo_round_trip(server.address, b"old generation") == b"old generation"
            assert server.proc.poll() is None


class TestScaling:
    """TTIN and TTOU change the worker count, never below one."""

    def test_ttin_ttou(self):
        with running("--workers", "1", "--stats-interval", "0.1") as server:
            server.started()
            server.signal(signal.SIGTTIN)
            wait_until(lambda: len(server.worker_pids()) == 2, 10, "two workers")
            wait_totals(server, {"greenserve_workers_desired": 2, "greenserve_workers_alive": 2})
            server.signal(signal.SIGTTOU)
            wait_until(lambda: len(server.worker_pids()) == 1, 10, "one worker")
            wait_totals(server, {"greenserve_workers_desired": 1, "greenserve_workers_alive": 1})
            server.signal(signal.SIGTTOU)  # never below one
            server.wait_event("signal", signal="SIGTTOU", count=2)
            wait_until(lambda: server.health()[0] == 200, 5, "healthy")
            assert len(server.worker_pids()) == 1
            assert scrape(server)["greenserve_worker_restarts_total[('reason', 'exit')]"] == 0


class TestStuckWorkers:
    """A blocked loop is warned about, then killed with its stack logged, and replaced."""

    def test_spinning_worker_is_killed_with_its_stack_and_replaced(self):
        with running(
            "greenserve_testapps:spin_on_demand",
            "--workers",
            "2",
            "--timeout",
            "2",
            "--stats-interval",
            "0.1",
            "--block-warn",
            "0",
        ) as server:
            server.started()
            before = server.worker_pids()
            stuck = socket.create_connection(server.address, timeout=15)
            stuck.sendall(b"spin")
            timeout_event = server.wait_event("worker_timeout", timeout=10)[0]
            blocked_slot = timeout_event["slot"]
            assert "spin_on_demand" in timeout_event["stack"]
            # the other worker serves throughout
            assert echo_round_trip(server.address, b"others serve") == b"others serve"
            started = [e for e in server.wait_event("worker_started", count=3)]
            replacement = started[-1]
            assert replacement["worker"] == blocked_slot
            assert server.worker_pids()[blocked_slot] != before[blocked_slot]
            assert stuck.recv(10) == b""
            stuck.close()
            # from the last beat (timeout + up to one probe interval before the kill event)
            last_beat = _ts(timeout_event["timestamp"]) - timeout_event["silent_seconds"]
            to_serving = _ts(replacement["timestamp"]) - last_beat
            print(f"blocked worker: last beat to replacement serving {to_serving:.2f}s")
            assert 2.0 <= to_serving <= 4.5
            totals = wait_totals(
                server, {"greenserve_worker_restarts_total[('reason', 'timeout')]": 1}
            )
            assert totals["greenserve_workers_alive"] == 2

    # libev (the default): greenserve's watcher; libuv has no iteration count: gevent's monitor
    @pytest.mark.parametrize("loop", ["libev-cext", "libuv"])
    def test_block_warn_logs_the_stack_and_counts(self, loop):
        with running(
            "greenserve_testapps:spin_on_demand",
            "--workers",
            "1",
            "--block-warn",
            "0.2",
            "--stats-interval",
            "0.1",
            env={"GEVENT_LOOP": loop},
        ) as server:
            server.started()
            assert echo_round_trip(server.address, b"block", timeout=10) == b"block"
            warning = server.wait_event("event_loop_blocked", timeout=10)[0]
            assert warning["level"] == "warning"
            assert warning["blocked_seconds"] >= 0.2
            assert "_blocking_call" in warning["stack"]
            wait_totals(server, {"greenserve_event_loop_blocked_total": 1})


class TestRecycling:
    """--max-requests replaces workers gracefully, one at a time."""

    def test_max_requests_replaces_the_worker_without_failures(self):
        with running("--workers", "1", "--max-requests", "50", "--stats-interval", "0.1") as server:
            server.started()
            first = server.worker_pids()[0]
            for n in range(60):
                assert echo_round_trip(server.address, b"%d" % n) == b"%d" % n
            wait_until(lambda: server.worker_pids().get(0) not in (None, first), 10, "recycled")
            server.wait_event("worker_exited", reason="max_requests")
            totals = wait_totals(
                server, {"greenserve_worker_restarts_total[('reason', 'max_requests')]": 1}
            )
            assert totals["greenserve_connections_accepted_total"] == 60

    def test_never_two_workers_recycle_at_once(self):
        with running(
            "--workers",
            "4",
            "--max-requests",
            "10",
            "--max-requests-jitter",
            "3",
            "--stats-interval",
            "0.05",
        ) as server:
            server.started()
            with Load(server.address, threads=4) as load:
                wait_until(
                    lambda: len(server.find("worker_exited", reason="max_requests")) >= 8,
                    40,
                    "8 recycles",
                )
            assert load.failed == []
            in_progress = 0
            most = 0
            for event in list(server.events):
                if event.get("event") == "worker_recycling":
                    in_progress += 1
                elif event.get("event") == "worker_started" and in_progress:
                    in_progress -= 1  # the replacement serves: the old one may drain now
                most = max(most, in_progress)
            print(f"recycles: {len(server.find('worker_recycling'))}, most at once: {most}")
            assert most == 1


def http_status(address: tuple[str, int]) -> int:
    """One GET / on a new connection: the status (a failure raises, and ClientLoad counts it)."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class TestMemoryAndAgeCaps:
    """--max-worker-rss and --max-worker-lifetime recycle through the hand-over: under load,
    nothing is lost, and each replacement is counted by its reason."""

    def test_a_leaking_app_is_replaced_above_its_rss_cap_and_loses_no_request(self):
        with serving_http(
            "greenserve_testapps:leaky",
            "--max-worker-rss",
            "120",
            "--rss-samples",
            "2",
            "--stats-interval",
            "0.1",
            workers=2,
        ) as server:
            server.started()
            first = set(server.worker_pids().values())

            def get() -> int:
                return http_status(server.address)

            with ClientLoad(get, threads=2, seconds=60) as load:
                wait_until(
                    lambda: len(server.find("worker_exited", reason="rss")) >= 2,
                    45,
                    "two workers replaced for their RSS",
                )
            assert load.failed == [] and load.seen == {200}
            asked = server.find("worker_recycle_requested", reason="rss")
            assert asked and all(event["rss_mib"] > 120 for event in asked)
            assert not first & set(server.worker_pids().values()) or len(asked) >= 2
            wait_totals(server, {"greenserve_worker_restarts_total[('reason', 'rss')]": 2})
            print(f"rss cap: {load.ok} requests, {len(asked)} replaced, 0 failed")

    def test_workers_are_renewed_after_their_lifetime_under_load(self):
        with serving_http(
            "--max-worker-lifetime",
            "1.5",
            "--max-worker-lifetime-jitter",
            "0.5",
            "--stats-interval",
            "0.1",
            workers=2,
        ) as server:
            server.started()

            def get() -> int:
                return http_status(server.address)

            with ClientLoad(get, threads=2, seconds=60) as load:
                wait_until(
                    lambda: len(server.find("worker_exited", reason="lifetime")) >= 3,
                    45,
                    "three workers renewed for their age",
                )
            assert load.failed == [] and load.seen == {200}
            for event in server.find("worker_exited", reason="lifetime"):
                assert event["lived_seconds"] >= 1.5
            wait_totals(server, {"greenserve_worker_restarts_total[('reason', 'lifetime')]": 3})


class TestProcessFacts:
    """pid file, privileges, log files."""

    def test_pid_file_written_and_removed(self, tmp_path):
        pid_file = tmp_path / "greenserve.pid"
        with running("--workers", "1", "--pid-file", str(pid_file)) as server:
            server.started()
            assert pid_file.read_text() == f"{server.proc.pid}\n"
            server.signal(signal.SIGTERM)
            assert server.wait_exit() == 0
        assert not pid_file.exists()

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
    def test_workers_run_as_the_given_user(self):
        nobody = pwd.getpwnam("nobody")
        with running("--workers", "2", "--user", "nobody") as server:
            server.started()
            for pid in server.worker_pids().values():
                uids = _status(pid, "Uid").split()
                gids = _status(pid, "Gid").split()
                assert set(map(int, uids)) == {nobody.pw_uid}
                assert set(map(int, gids)) == {nobody.pw_gid}
            assert _status(server.proc.pid, "Uid").split()[0] == "0"
            assert echo_round_trip(server.address, b"unprivileged") == b"unprivileged"
            assert not server.find("workers_run_as_root")

    def test_usr1_reopens_the_log_file(self, tmp_path):
        log = tmp_path / "greenserve.log"
        with running("--workers", "1", "--log-file", str(log)) as server:
            wait_until(lambda: log.exists() and "worker_started" in log.read_text(), 15, "log")
            rotated = tmp_path / "greenserve.log.1"
            log.rename(rotated)
            server.signal(signal.SIGUSR1)
            wait_until(lambda: log.exists() and "logs_reopened" in log.read_text(), 10, "reopen")
            assert echo_round_trip(_address_from(rotated), b"x") == b"x"
            pid = next(iter(server.worker_pids().values()))
            os.kill(pid, signal.SIGTERM)  # the replacement's events land in the new file
            wait_until(lambda: '"worker": 0' in log.read_text(), 10, "worker lines in new file")
            assert "worker_started" in rotated.read_text()


def _address_from(log: Path) -> tuple[str, int]:
    import json

    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "started":
            host, _, port = event["bind"].rpartition(":")
            return host, int(port)
    raise AssertionError("no started event")


def _status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(field)


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
