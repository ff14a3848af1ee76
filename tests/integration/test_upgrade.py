"""USR2 binary upgrade, socket activation and sd_notify, with real processes and real load."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.helpers import (
    APPS_DIR,
    ROOT,
    STARTED_GROUPS,
    ClientLoad,
    free_port,
    group_alive,
    http_ok,
    need,
    port_is_free,
    running,
    serving_http,
    wait_until,
)


class Load(ClientLoad):
    """Client threads, a new connection per request, counting successes and failures."""

    def __init__(self, port: int, threads: int = 4) -> None:
        super().__init__(lambda: http_ok(f"http://127.0.0.1:{port}/"), threads, seconds=60)

    def wait_for(self, count: int, timeout: float = 30) -> None:
        self.more(count, timeout)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


SHIPPED_CONFIG = ROOT / "config" / "greenserve.toml"
DEFAULT_METRICS = 9191  # the default --metrics-bind port, and the shipped config's


class Scrapes(ClientLoad):
    """A load balancer's health checks and Prometheus' scrapes on the metrics address.

    /healthz must answer 200 throughout, never a draining master's 503; a "stale" worker (one
    whose report came late on a loaded machine) is the load's doing, not the upgrade's.
    """

    def __init__(self, port: int) -> None:
        def scrape() -> None:
            http_ok(f"http://127.0.0.1:{port}/metrics")
            try:
                http_ok(f"http://127.0.0.1:{port}/healthz")
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read())
                states = {w["state"] for w in body["workers"]} - {"ok"}
                if body["status"] != "degraded" or states != {"stale"}:
                    raise AssertionError(f"/healthz {exc.code}: {body}") from None

        super().__init__(scrape, threads=2, seconds=60)


def _usr2_on_the_default_metrics_address(
    server_pid: int, port: int, signal_master: Callable[[], None], wait_complete: Callable[[], None]
) -> tuple[Load, Scrapes]:
    with Load(port) as load, Scrapes(DEFAULT_METRICS) as scrapes:
        load.wait_for(300)
        scrapes.more(20)
        signal_master()
        wait_complete()
        wait_until(lambda: not alive(server_pid), 40, "the old master gone")
        load.wait_for(1000)
        scrapes.more(20)
    return load, scrapes


class TestUpgradeWithTheDefaults:
    """USR2 as users run it: the shipped config, metrics on their default address."""

    def _new_master(self, old: int) -> int:
        [pid] = [p for p in group_alive(old) if p != old and "master" in _title(p)] or [None]
        return pid

    def test_shipped_config(self):
        for port in (8001, DEFAULT_METRICS):
            assert port_is_free(port), f"port {port} is taken: this test needs the defaults"
        with running(
            "greenserve_testapps:environ_echo",
            "-c",
            str(SHIPPED_CONFIG),
            default_bind=False,
            default_metrics=False,
        ) as server:
            server.started()
            assert server.metrics_address == ("127.0.0.1", DEFAULT_METRICS)
            load, scrapes = _usr2_on_the_default_metrics_address(
                server.proc.pid,
                8001,
                lambda: server.signal(signal.SIGUSR2),
                lambda: server.wait_event("upgrade_complete", timeout=30),
            )
            assert load.failed == [] and scrapes.failed == [], (load.failed, scrapes.failed)
            new = wait_until(lambda: self._new_master(server.proc.pid), 10, "the new master")
            os.kill(new, signal.SIGTERM)
            wait_until(lambda: not alive(new), 40, "the new master stopped")

    def test_shipped_systemd_unit(self, tmp_path):
        """ExecStart's command line on a socket as greenserve.socket hands it (LISTEN_FDS)."""
        unit = (ROOT / "deploy" / "systemd" / "greenserve.service").read_text()
        exec_start = re.search(r"^ExecStart=(\S+) (.*)$", unit, re.M).group(2).split()
        assert exec_start == ["--config", "/etc/greenserve/greenserve.toml"]
        assert port_is_free(DEFAULT_METRICS), "port 9191 is taken: this test needs the default"
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(2048)
        port = holder.getsockname()[1]
        log = tmp_path / "masters.log"
        master = _activated(
            holder, log, "greenserve_testapps:environ_echo", "--config", str(SHIPPED_CONFIG)
        )
        try:
            wait_until(lambda: _get(port), 20, "the master serving")
            wait_until(lambda: _healthy(DEFAULT_METRICS), 20, "/healthz 200: every worker ready")
            load, scrapes = _usr2_on_the_default_metrics_address(
                master.pid,
                port,
                lambda: os.kill(master.pid, signal.SIGUSR2),
                lambda: wait_until(
                    lambda: "upgrade_complete" in log.read_text(), 30, "upgrade_complete"
                ),
            )
            assert load.failed == [] and scrapes.failed == [], (load.failed, scrapes.failed)
        except BaseException:
            print(log.read_text())
            raise
        finally:
            for pid in group_alive(master.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not group_alive(master.pid), 40, "every master stopped")
            holder.close()


def _healthy(port: int) -> bool:
    try:
        http_ok(f"http://127.0.0.1:{port}/healthz")
    except OSError:
        return False
    return True


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class TestBinaryUpgrade:
    """USR2: a new master on the same sockets takes over with no failed request."""

    def test_usr2_under_load(self, tmp_path):
        pid_file = tmp_path / "greenserve.pid"
        port = free_port()
        notes = Notifications(tmp_path)
        with serving_http(
            "-b",
            f"127.0.0.1:{port}",
            "--pid-file",
            str(pid_file),
            "--stats-interval",
            "0.2",
            workers=2,
            env={"NOTIFY_SOCKET": notes.path},
            default_bind=False,
        ) as server:
            server.started()
            old = server.proc.pid
            assert read_pid(pid_file) == old
            with Load(port) as load:
                load.wait_for(500)
                signalled = time.monotonic()
                server.signal(signal.SIGUSR2)
                server.wait_event("upgrade_complete", timeout=30)
                took = time.monotonic() - signalled
                new = wait_until(
                    lambda: (read_pid(pid_file) or old) != old and read_pid(pid_file),
                    10,
                    "the new master's pid in the pid file",
                )
                wait_until(lambda: not alive(old), 30, "the old master gone")
                load.wait_for(1500)
            print(
                f"\nUSR2 to new master serving: {took * 1000:.0f} ms; "
                f"{load.ok} requests during the test, {len(load.failed)} failed"
            )
            assert load.failed == [], load.failed[:5]
            assert load.ok >= 2000
            assert alive(new)
            assert server.find("upgrade_handed_over")
            assert not Path(str(pid_file) + ".oldbin").exists()
            notes.wait(f"MAINPID={new}")  # systemd (NotifyAccess=all) follows the new master
            # the new master serves and reports; stop it (the test's process group holds it)
            os.kill(new, signal.SIGTERM)
            wait_until(lambda: not alive(new), 30, "the new master stopped")
            assert not pid_file.exists()

    def test_a_new_master_that_cannot_load_leaves_the_old_serving(self, tmp_path):
        config = tmp_path / "g.toml"
        config.write_text('protocol = "http"\nworkers = 1\n')
        pid_file = tmp_path / "g.pid"
        with running("-c", str(config), "--pid-file", str(pid_file)) as server:
            server.started()
            config.write_text('protocol = "http"\nworkers = 1\napp = "broken_import:app"\n')
            server.signal(signal.SIGUSR2)
            event = server.wait_event("upgrade_failed", timeout=30)[0]
            assert "code 3" in event["error"]
            assert read_pid(pid_file) == server.proc.pid
            assert not Path(str(pid_file) + ".oldbin").exists()
            with urllib.request.urlopen(
                f"http://{server.address[0]}:{server.port}/", timeout=5
            ) as r:
                assert r.status == 200


def _activated(port_holder: socket.socket, log: Path, *args: str) -> subprocess.Popen:
    """greenserve started as systemd starts a socket-activated service: fd 3, LISTEN_PID."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENSERVE_", "LISTEN_"))}
    env["LISTEN_FDS"] = "1"
    fd = port_holder.fileno()
    move = f"exec 3<&{fd} {fd}<&-; " if fd != 3 else ""  # systemd passes fd 3
    command = f"{move}export LISTEN_PID=$$; exec {sys.executable} -m greenserve " + " ".join(args)
    with log.open("ab") as output:
        proc = subprocess.Popen(
            ["bash", "-c", command],  # dash takes one-digit fds only
            cwd=APPS_DIR,
            env=env,
            pass_fds=[fd],
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    STARTED_GROUPS.append(proc.pid)
    return proc


class TestSocketActivation:
    """LISTEN_FDS: greenserve serves the sockets it is given, which outlive a restart."""

    def test_real_systemd_socket_activate_http_and_echo(self):
        tool = need("systemd-socket-activate")
        for protocol, probe, expect in (
            ("http", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"Hello, world!"),
            ("tcp", b"echo me\n", b"echo me\n"),
        ):
            port = free_port()
            proc = subprocess.Popen(
                [
                    tool,
                    "-l",
                    f"127.0.0.1:{port}",
                    "-E",
                    "PATH",
                    "-E",
                    "HOME",
                    sys.executable,
                    "-m",
                    "greenserve",
                    "--protocol",
                    protocol,
                    "-w",
                    "1",
                    "--metrics-bind",
                    "off",
                    "--log-format",
                    "json",
                ],
                cwd=APPS_DIR,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            STARTED_GROUPS.append(proc.pid)
            try:
                sock = wait_until(lambda p=port: _connect(p), 10, "the activation socket")
                with sock:  # the first connection starts greenserve, which then answers it
                    sock.sendall(probe)
                    data = b""
                    deadline = time.monotonic() + 20
                    while expect not in data and time.monotonic() < deadline:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                assert expect in data, data
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)

    def test_restart_under_load_refuses_nothing(self, tmp_path):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(2048)
        port = holder.getsockname()[1]
        args = ("--protocol", "http", "-w", "2", "--metrics-bind", "off", "--log-format", "json")
        log = tmp_path / "masters.log"
        first = _activated(holder, log, *args)
        try:
            try:
                wait_until(lambda: _get(port), 20, "the first master serving")
            except AssertionError:
                print(log.read_text())
                raise
            with Load(port) as load:
                load.wait_for(300)
                restarted = time.monotonic()
                os.killpg(first.pid, signal.SIGTERM)  # systemctl restart: stop ...
                assert first.wait(30) == 0
                second = _activated(holder, log, *args)  # ... and start, on the same socket
                load.wait_for(1000, timeout=40)
                took = time.monotonic() - restarted
            print(
                f"\nrestart through socket activation: {load.ok} requests, "
                f"{len(load.failed)} failed, back to serving within {took * 1000:.0f} ms"
            )
            assert load.failed == [], load.failed[:5]
        finally:
            for proc in (first, locals().get("second")):
                if proc is not None and proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(20)
            holder.close()


def _connect(port: int) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    except OSError:
        return None
    return sock


def _get(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


class Notifications:
    """A datagram socket in the test standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def collect(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return [m for _, m in self.messages]
            self.messages.append((time.monotonic(), data.decode()))

    def wait(self, text: str, timeout: float = 20) -> float:
        def seen() -> float | None:
            self.collect()
            hits = [t for t, m in self.messages if text in m.split("\n")]
            return hits[-1] if hits else None

        return wait_until(seen, timeout, f"notification {text}")


class TestNotify:
    """READY only once serving; RELOADING then READY on HUP; STOPPING; watchdog from the loop."""

    def test_lifecycle_notifications(self, tmp_path):
        notes = Notifications(tmp_path)
        port = free_port()
        with serving_http(
            "-b",
            f"127.0.0.1:{port}",
            workers=2,
            env={"NOTIFY_SOCKET": notes.path},
            default_bind=False,
        ) as server:
            ready_at = notes.wait("READY=1")
            # READY means serving: the port answers at once, and the workers were up before it
            assert _get(port)
            assert len(server.find("worker_started")) == 2
            started = server.find("worker_started")[-1]
            assert "STATUS=2/2 workers ready, generation 1" in "\n".join(notes.collect())
            assert ready_at  # recorded
            server.signal(signal.SIGHUP)
            reloading = notes.wait("RELOADING=1")
            assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in notes.collect())
            server.wait_event("reload_complete", timeout=20)
            ready_again = notes.wait("READY=1")
            assert ready_again > reloading
            server.signal(signal.SIGTERM)
            notes.wait("STOPPING=1")
            assert server.wait_exit() == 0
            assert started

    def test_watchdog_pings_stop_while_the_master_is_frozen(self, tmp_path):
        notes = Notifications(tmp_path)
        env = {"NOTIFY_SOCKET": notes.path, "WATCHDOG_USEC": "400000"}  # pings every 0.2 s
        with running("-w", "1", env=env) as server:
            notes.wait("READY=1")
            time.sleep(1.0)  # measuring a rate over a window, not synchronising
            notes.collect()
            pings = [t for t, m in notes.messages if m == "WATCHDOG=1"]
            window = [t for t in pings if t >= pings[-1] - 1.0]
            assert 3 <= len(window) <= 7, len(window)
            server.signal(signal.SIGSTOP)
            try:
                notes.collect()
                before = len([m for _, m in notes.messages if m == "WATCHDOG=1"])
                time.sleep(1.0)  # the frozen master must send nothing in this window
                notes.collect()
                after = len([m for _, m in notes.messages if m == "WATCHDOG=1"])
                assert after - before <= 1  # at most one already in flight
            finally:
                server.signal(signal.SIGCONT)
            notes.wait("WATCHDOG=1")
