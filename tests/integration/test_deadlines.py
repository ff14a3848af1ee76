"""--request-timeout, request ids in every log line, the app's own logs and output as JSON."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.helpers import APPS_DIR, per_worker, serving_http, steady_server, wait_until


def get(server, path: str, headers: dict | None = None, timeout: float = 10):
    conn = http.client.HTTPConnection(*server.address, timeout=timeout)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


@pytest.fixture(scope="module")
def deadline_server():
    with steady_server(
        "deadline_app:app",
        "--protocol",
        "http",
        "--workers",
        "1",
        "--request-timeout",
        "1",
        "--access-log",
        "--stats-interval",
        "0.2",
    ) as server:
        yield server


class TestRequestTimeout:
    """A request past its deadline is stopped where it waits; the worker serves on. (A stalled
    stream, a swallowed timeout: tests/unit/test_phases.py, on a fake clock.)"""

    def test_sleeping_view_gets_504_and_its_finally_runs(self, deadline_server):
        started = time.monotonic()
        response, _ = get(deadline_server, "/sleep?s=5")
        elapsed = time.monotonic() - started
        assert response.status == 504 and response.getheader("Connection") == "close"
        assert elapsed < 1.5
        request_id = response.getheader("X-Request-ID")
        event = deadline_server.wait_event("request_timeout", request_id=request_id)[0]
        assert event["path"] == "/sleep" and event["method"] == "GET"
        assert "time.sleep(seconds)" in event["stack"] or "sleep" in event["stack"]
        assert event["elapsed_s"] >= 1.0
        finally_ran = deadline_server.wait_event(
            "finally ran for " + request_id, request_id=request_id
        )[0]
        assert finally_ran["logger"] == "deadline_app"
        wait_until(
            lambda: (
                per_worker(deadline_server, "greenserve_http_request_timeouts_total").get("0", 0)
                >= 1
            ),
            5,
            "request timeouts counted on /metrics",
        )

    def test_slow_requests_time_out_while_fast_ones_are_served(self, deadline_server):
        results: dict[str, list] = {"slow": [], "fast": []}

        def call(kind: str, path: str) -> None:
            response, _ = get(deadline_server, path)
            results[kind].append((response.status, time.monotonic()))

        threads = [threading.Thread(target=call, args=("slow", "/sleep?s=5")) for _ in range(20)]
        for thread in threads:
            thread.start()
        wait_until(  # the slow requests are in flight before the fast ones start
            lambda: (
                per_worker(deadline_server, "greenserve_http_requests_in_flight").get("0", 0) >= 20
            ),
            5,
            "20 slow requests in flight",
        )
        fast = [threading.Thread(target=call, args=("fast", "/fast")) for _ in range(20)]
        for thread in fast:
            thread.start()
        for thread in threads + fast:
            thread.join(15)
        assert [status for status, _ in results["slow"]] == [504] * 20
        assert [status for status, _ in results["fast"]] == [200] * 20
        # Order, not seconds (load shifts both): every fast answer came before the first 504.
        assert max(t for _, t in results["fast"]) < min(t for _, t in results["slow"])


class TestRequestIds:
    """Given or generated, on the response, in the environ and in every log line of the request."""

    def test_given_id_is_used_everywhere(self, deadline_server):
        response, body = get(deadline_server, "/log", {"X-Request-ID": "given-id-123"})
        assert response.getheader("X-Request-ID") == "given-id-123" and body == b"given-id-123"
        app_lines = deadline_server.wait_event("app sees given-id-123")
        assert app_lines[0]["request_id"] == "given-id-123"
        access = deadline_server.wait_event("request", path="/log", request_id="given-id-123")[0]
        assert access["duration_ms"] >= 0 and access["status"] == 200

    def test_each_keep_alive_request_logs_its_own_id(self, deadline_server):
        """One connection, three requests: the id lives in the connection's context, rewritten
        per request (logs.RequestIdCell), so each request's lines carry its own."""
        conn = http.client.HTTPConnection(*deadline_server.address, timeout=10)
        try:
            for number in range(3):
                conn.request("GET", "/log", headers={"X-Request-ID": f"kept-alive-{number}"})
                response = conn.getresponse()
                assert response.read() == f"kept-alive-{number}".encode()
        finally:
            conn.close()
        for number in range(3):
            line = deadline_server.wait_event(f"app sees kept-alive-{number}")[0]
            assert line["request_id"] == f"kept-alive-{number}", line

    def test_200_concurrent_requests_never_share_an_id(self, deadline_server):
        """Each app log line carries the id of its own request (contextvars per greenlet)."""
        errors: list[str] = []

        def call(index: int) -> None:
            wanted = f"concurrent-{index}"
            _, body = get(deadline_server, "/log?s=0.2", {"X-Request-ID": wanted})
            if body.decode() != wanted:
                errors.append(f"{wanted} got {body!r}")

        threads = [threading.Thread(target=call, args=(n,)) for n in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []

        def app_lines() -> list[dict]:
            prefixes = ("app sees concurrent-", "app still sees concurrent-")
            found = [
                e
                for e in list(deadline_server.events)
                if str(e.get("event", "")).startswith(prefixes)
            ]
            return found if len(found) >= 400 else []

        lines = wait_until(app_lines, 10, "400 app log lines")
        assert len(lines) == 400
        for line in lines:
            assert line["event"].endswith(" " + line["request_id"]), line


class TestAppLogs:
    """The app's stdlib logging and stray output become JSON events with the request's id."""

    def test_flask_error_is_one_json_event_with_the_exception(self):
        with serving_http("deadline_app:flask_app") as server:
            server.started()
            response, _ = get(server, "/fail")
            assert response.status == 500
            event = server.wait_event("Exception on /fail [GET]")[0]
            assert event["level"] == "error" and event["logger"] == "deadline_app"
            assert "RuntimeError: flask view failed" in event["exception"]
            assert event["worker"] == 0 and event["request_id"]
            for line in server.lines:  # every line of the log is one JSON object
                assert line.startswith("{"), line

    def test_flask_view_past_its_deadline(self):
        with serving_http("deadline_app:flask_app", "--request-timeout", "0.5") as server:
            server.started()
            started = time.monotonic()
            response, _ = get(server, "/sleep")
            assert response.status == 504 and time.monotonic() - started < 4  # the view: 5 s
            server.wait_event("flask finally ran")

    def test_print_becomes_an_event(self, deadline_server):
        get(deadline_server, "/print")
        event = deadline_server.wait_event("app_output", line="printed by the app")[0]
        assert event["stream"] == "stdout" and event["request_id"]


class TestClosedStdout:
    """A closed stdout (greenserve | head -1) degrades logging; serving goes on."""

    def test_master_and_workers_survive_a_closed_pipe(self, tmp_path):
        import os
        import signal

        from tests.helpers import STARTED_GROUPS, free_port

        port = free_port()
        read_end, write_end = os.pipe()
        stderr = (tmp_path / "stderr.log").open("wb")
        argv = [sys.executable, "-m", "greenserve", "--protocol", "http", "--workers", "1"]
        argv += ["--access-log", "--bind", f"127.0.0.1:{port}", "--metrics-bind", "127.0.0.1:0"]
        argv += ["--log-format", "json"]
        proc = subprocess.Popen(
            argv, cwd=APPS_DIR, stdout=write_end, stderr=stderr, start_new_session=True
        )
        STARTED_GROUPS.append(proc.pid)
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as reader:  # read until a worker serves, as head would
                wait_until(lambda: b"worker_started" in reader.readline(), 20, "worker_started")
            # The pipe's only reader is gone: every log write now fails with EPIPE.
            url = f"http://127.0.0.1:{port}/"
            for _ in range(50):  # each request logs an access line
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200
            proc.send_signal(signal.SIGHUP)  # the master logs, and workers are replaced
            wait_until(
                lambda: (tmp_path / "stderr.log").read_bytes().count(b"worker_started") >= 1,
                20,
                "the replacement worker's log line on stderr",
            )
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
            assert proc.poll() is None
            assert b'"event": "request"' in (tmp_path / "stderr.log").read_bytes()
            assert b"Traceback" not in (tmp_path / "stderr.log").read_bytes()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                assert proc.wait(20) == 0  # a clean stop, even with stdout gone
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                stderr.close()


def test_request_timeout_is_documented_in_help():
    out = subprocess.run(
        [sys.executable, "-m", "greenserve", "--help"], capture_output=True, text=True, cwd=APPS_DIR
    ).stdout
    assert "--request-timeout" in out and "--capture-output" in out
