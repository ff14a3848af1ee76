"""What a gunicorn user expects on day one: flags, binds, app factories, checks, signals, tools."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pexpect
import pytest

from tests.helpers import (
    ANSI,
    APPS_DIR,
    ROOT,
    echo_round_trip,
    free_port,
    metrics_url,
    running,
    serving_http,
    spawn_top,
    tool,
    wait_until,
)


def http_get(address: tuple[str, int], path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as r:
        return r.read()


def unix_get(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


class TestFlags:
    """Short flags, --version, --help by topic, one-line errors."""

    def test_version_and_grouped_help(self):
        result = tool("--version")
        assert result.returncode == 0 and result.stdout.strip() == "greenserve 0.1.0"
        help_text = tool("--help").stdout
        for heading in ("Serving:", "HTTP (--protocol http):", "Workers and their lifecycle:"):
            assert heading in help_text
        assert "WSGI app" in help_text and "handler(sock, address)" in help_text
        for flag in ("-w N|auto, --workers", "-b ADDRESS, --bind", "-c FILE, --config"):
            assert flag in help_text, flag
        assert "-t S, --timeout" in help_text and "--reuse-port" in help_text

    def test_short_flags_serve(self, tmp_path):
        config = tmp_path / "g.toml"
        config.write_text('protocol = "http"\n')
        with running(
            "-c", str(config), "-w", "1", "-t", "5", "-b", "127.0.0.1:0", default_bind=False
        ) as server:
            server.started()
            assert http_get(server.address) == b"Hello, world!\n"
            assert server.workers == 1

    def test_bad_bind_is_one_line_exit_2(self):
        result = tool("--bind", "unix:relative.sock")
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert "bind" in result.stderr


class TestBinds:
    """Repeatable --bind over TCP, IPv6, unix sockets and inherited descriptors."""

    def test_tcp_and_unix_together_then_the_file_is_removed(self, tmp_path):
        path = str(tmp_path / "app.sock")
        with serving_http(
            "-b",
            "127.0.0.1:0",
            "-b",
            f"unix:{path}",
            "--unix-mode",
            "600",
            workers=2,
            default_bind=False,
        ) as server:
            started = server.started()
            event = server.find("started")[0]
            assert event["binds"][1] == f"unix:{path}"
            assert http_get(started.address) == b"Hello, world!\n"
            assert unix_get(path).endswith(b"Hello, world!\n")
            assert oct(os.stat(path).st_mode & 0o777) == "0o600"
            server.signal(signal.SIGHUP)  # the unix socket is kept across a reload
            server.wait_event("reload_complete", timeout=20)
            assert unix_get(path).endswith(b"Hello, world!\n")
            server.signal(signal.SIGTERM)
            assert server.wait_exit() == 0
        assert not os.path.exists(path)

    def test_tcp_connections_take_nodelay_and_unix_ones_are_served(self, tmp_path):
        """TCP_NODELAY is decided once per listener (protocols/tcp.py): each TCP connection has
        it, and a unix socket beside is served without it (the option would be an error)."""
        path = str(tmp_path / "nodelay.sock")
        with running(
            "greenserve_testapps:tell_nodelay",
            "--protocol", "tcp", "-b", "127.0.0.1:0", "-b", f"unix:{path}",
            default_bind=False,
        ) as server:  # fmt: skip
            started = server.started()
            for _ in range(3):
                for family, address in ((socket.AF_INET, started.address), (socket.AF_UNIX, path)):
                    with socket.socket(family) as sock:
                        sock.settimeout(5)
                        sock.connect(address)
                        sock.sendall(b"x\n")
                        answer = b""
                        while chunk := sock.recv(64):  # the handler answers, then it closes
                            answer += chunk
                    assert answer == (b"nodelay=1" if family == socket.AF_INET else b"unix")

    def test_stale_unix_socket_is_replaced_live_one_refused(self, tmp_path):
        path = str(tmp_path / "stale.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()  # the file stays, nobody listens: what a killed server leaves
        with serving_http("-b", f"unix:{path}", default_bind=False) as server:
            server.wait_event("worker_started", timeout=15)
            assert unix_get(path).endswith(b"Hello, world!\n")
            second = tool("-b", f"unix:{path}", "--metrics-bind", "off")
            assert second.returncode == 1
            assert "address already in use" in second.stdout + second.stderr

    def test_inherited_fd(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GREENSERVE_")}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "greenserve",
                "--protocol",
                "http",
                "-w",
                "1",
                "-b",
                f"fd://{listener.fileno()}",
                "--metrics-bind",
                "off",
                "--log-format",
                "json",
            ],
            cwd=APPS_DIR,
            env=env,
            pass_fds=[listener.fileno()],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from tests.helpers import STARTED_GROUPS

        STARTED_GROUPS.append(proc.pid)
        listener.close()  # only the server holds it now
        try:
            body = wait_until(lambda: _try_get(("127.0.0.1", port)), 15, "served on the fd")
            assert body == b"Hello, world!\n"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(20) == 0

    def test_ipv6_loopback(self):
        if not socket.has_ipv6:
            pytest.skip("no IPv6 in this kernel")
        try:
            probe = socket.socket(socket.AF_INET6)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            pytest.skip("::1 is not configured here")
        with serving_http("-b", "[::1]:0", "--backlog", "64", default_bind=False) as server:
            server.started()
            assert server.address[0] == "::1"
            with urllib.request.urlopen(f"http://[::1]:{server.port}/", timeout=5) as r:
                assert r.read() == b"Hello, world!\n"


def _try_get(address: tuple[str, int]) -> bytes | None:
    try:
        return http_get(address)
    except OSError:
        return None


class TestApps:
    """--chdir, factories, --check-config and --print-config."""

    def test_factory_with_and_without_arguments_from_chdir(self, tmp_path):
        for spec, body in (
            ("factory_app:create_app()", b"hello from default"),
            ('factory_app:create_app("prod", greeting="hi")', b"hi from prod"),
        ):
            with serving_http(spec, "--chdir", str(APPS_DIR), cwd=tmp_path) as server:
                server.started()
                assert http_get(server.address) == body

    def test_check_config(self, tmp_path):
        ok = tool("factory_app:create_app()", "--protocol", "http", "--check-config")
        assert ok.returncode == 0, ok.stderr
        broken = tool("broken_import:app", "--check-config")
        assert broken.returncode == 3 and "broken_import" in broken.stderr
        assert "Traceback" not in broken.stderr
        assert tool("--workers", "zero", "--check-config").returncode == 2

    def test_print_config_names_each_source(self, tmp_path):
        config = tmp_path / "g.toml"
        config.write_text("workers = 3\n")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "greenserve",
                "-c",
                str(config),
                "--print-config",
                "--protocol",
                "http",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=APPS_DIR,
            env={**os.environ, "GREENSERVE_MAX_BODY": "1m"},
        )
        assert result.returncode == 0, result.stderr
        lines = {line.split()[0]: line for line in result.stdout.splitlines()}
        assert lines["workers"].endswith(f"# file {config}") and "= 3" in lines["workers"]
        assert lines["protocol"].endswith("# command line")
        assert lines["max_body"].endswith("# env GREENSERVE_MAX_BODY")
        assert lines["backlog"].endswith("# default")


class TestOperators:
    """Signals by habit, a second instance, a forgotten --protocol http, logs in console form."""

    def test_winch_alrm_prof_do_not_end_the_master(self):
        with running("-w", "1") as server:
            server.started()
            for signum in (signal.SIGWINCH, signal.SIGALRM, signal.SIGPROF):
                server.signal(signum)
            server.wait_event("signal_ignored", count=3)
            assert server.proc.poll() is None
            assert server.health()[0] == 200

    def test_second_instance_names_metrics_bind(self):
        with running("-w", "1") as first:
            first.started()
            host, port = first.metrics_address
            result = tool(
                "-w",
                "1",
                "--bind",
                "127.0.0.1:0",
                "--metrics-bind",
                f"{host}:{port}",
                "--log-format",
                "json",
            )
            assert result.returncode == 1
            assert "--metrics-bind" in result.stdout and "Traceback" not in result.stdout

    def test_protocol_tcp_for_a_wsgi_app_is_named(self):
        with running("flask_app:app", "-w", "1", "--protocol", "tcp") as server:
            server.started()
            event = server.wait_event("protocol_mismatch")[0]
            assert "--protocol http" in event["hint"]


class TestProtocolFollowsTheApp:
    """Without --protocol, what is served follows APP: gunicorn's habits just work."""

    def test_gunicorn_style_command_serves_http(self):
        """greenserve -w 2 -b HOST:PORT app:app, as a gunicorn user types it."""
        port = free_port()
        with running("-w", "2", "-b", f"127.0.0.1:{port}", "flask_app:app") as server:
            server.started()
            assert {e["protocol"] for e in server.find("worker_started")} == {"http"}
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello/x", timeout=5) as r:
                assert r.status == 200

    def test_a_handler_is_served_over_tcp(self):
        with running("greenserve_testapps:slow_echo", "-w", "1") as server:
            server.started()
            assert server.find("worker_started")[0]["protocol"] == "tcp"
            assert echo_round_trip(server.address, b"ping") == b"ping"

    def test_no_app_is_the_echo_service(self):
        with running("-w", "1") as server:
            server.started()
            assert server.find("worker_started")[0]["protocol"] == "tcp"
            assert echo_round_trip(server.address, b"ping") == b"ping"

    def test_explicit_protocol_wins(self):
        with running("greenserve_testapps:environ_echo", "-w", "1", "--protocol", "tcp") as s:
            s.started()
            assert s.find("worker_started")[0]["protocol"] == "tcp"

    def test_an_ambiguous_app_is_an_error_naming_the_flags(self):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "greenserve",
                "greenserve_testapps:ambiguous",
                "-w",
                "1",
                "--bind",
                "127.0.0.1:0",
                "--metrics-bind",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ],
            cwd=APPS_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 3, result.stdout + result.stderr
        [line] = [json.loads(x) for x in result.stdout.splitlines() if "app_load_failed" in x]
        assert "--protocol http or --protocol tcp" in line["error"]
        assert "Traceback" not in result.stdout + result.stderr

    def test_check_config_says_the_same(self):
        result = subprocess.run(
            [sys.executable, "-m", "greenserve", "greenserve_testapps:ambiguous", "--check-config"],
            cwd=APPS_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 3 and "--protocol http or --protocol tcp" in result.stderr

    def test_console_access_log_format(self):
        with serving_http(
            "--access-log",
            "--log-format",
            "console",
            "--access-log-format",
            '{peer} "{method} {path}" {status} {bytes}',
        ) as server:
            wait_until(lambda: "worker_started" in server.output, 15, "worker started")
            host, port = _address_from_console(server)
            http_get((host, port), "/x?y=1")
            wait_until(
                lambda: re.search(r'127\.0\.0\.1:\d+ "GET /x" 200 14', server.output),
                10,
                "the formatted access line",
            )


def _address_from_console(server) -> tuple[str, int]:
    match = wait_until(
        lambda: re.search(r"started\s.*bind=(\S+)", ANSI.sub("", server.output)), 15, "bind"
    )
    host, _, port = match.group(1).rpartition(":")
    return host, int(port)


class TestTools:
    """status and top as an operator uses them after a failed reload or on a small terminal."""

    def test_status_with_a_broken_unrelated_key(self, tmp_path):
        with running("-w", "1") as server:
            server.started()
            host, port = server.metrics_address
            config = tmp_path / "g.toml"
            config.write_text(f'metrics_bind = "{host}:{port}"\nworkers = "many"\nbogus = 1\n')
            result = tool("status", "--config", str(config), "--json")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["generation"] == 1 and isinstance(report["generation"], int)

    def test_retired_slot_is_not_down(self):
        with running("-w", "2", "--stats-interval", "0.1") as server:
            server.started()
            server.signal(signal.SIGTTOU)
            wait_until(lambda: len(server.worker_pids()) == 1, 15, "one worker left")
            wait_until(
                lambda: (
                    "down" not in tool("status", "--metrics", metrics_url(server)).stdout
                    and "1/1 ready" in tool("status", "--metrics", metrics_url(server)).stdout
                ),
                15,
                "status without a down row",
            )

    def test_top_fits_80_columns(self):
        with running("-w", "2", "--stats-interval", "0.2") as server:
            server.started()
            child = spawn_top(server, 30, 80)
            try:
                child.expect(r"total[^\n]*\n")
                screen = ANSI.sub("", child.before + child.after)
                assert "req/s" in screen
                for line in screen.splitlines():
                    assert len(line.rstrip()) <= 80, line
                child.send("q")
                child.expect(pexpect.EOF)
            finally:
                child.close(force=True)


def test_readme_needs_no_nc():
    readme = (ROOT / "README.md").read_text()
    assert "nc -q1" not in readme
