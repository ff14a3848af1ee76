"""Keep-alive clients through HUP and USR2: a retiring worker loses no request.

A worker that closed its idle keep-alive connections at once raced clients already sending on
them (wrk saw about one read error per connection per reload). Now it answers the next request
on each with Connection: close, and closes one that stays idle only at its keep-alive timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading

import pytest
import requests

from tests.helpers import ClientLoad, serving_http, wait_until

pytestmark = pytest.mark.slow


def _wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        if os.environ.get("CI") == "true":
            pytest.fail("wrk is missing in CI: .ci/run must install it")
        pytest.skip("wrk not installed (Debian package wrk)")
    return wrk


class SessionLoad(ClientLoad):
    """Threads, each with its own requests.Session: one keep-alive connection per thread."""

    def __init__(self, url: str, threads: int = 8) -> None:
        local = threading.local()

        def get() -> None:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = requests.Session()
            response = session.get(url, timeout=10)
            if response.status_code != 200:
                raise AssertionError(f"status {response.status_code}")

        super().__init__(get, threads, seconds=60)


def _signal_through(server, signum: int) -> None:
    if signum == signal.SIGHUP:
        server.signal(signal.SIGHUP)
        server.wait_event("reload_complete", timeout=30)
        server.wait_event("worker_stopped", timeout=30, count=2)
    else:
        server.signal(signal.SIGUSR2)
        server.wait_event("upgrade_complete", timeout=30)
        server.wait_event("stopped", timeout=40)  # the old master, drained


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR2], ids=["HUP", "USR2"])
class TestKeepAliveThroughReloads:
    """0 failed requests on keep-alive connections, with the two kinds of client users run."""

    def test_requests_session(self, signum):
        with serving_http("--stats-interval", "0.2", workers=2) as server:
            server.started()
            host, port = server.address
            with SessionLoad(f"http://{host}:{port}/") as load:
                load.more(500)
                _signal_through(server, signum)
                load.more(500)
            print(f"\nrequests.Session: {load.ok} requests, {len(load.failed)} failed")
            assert load.failed == [], load.failed[:5]

    def test_wrk(self, signum):
        wrk = _wrk()
        with serving_http("--stats-interval", "0.2", workers=2) as server:
            server.started()
            host, port = server.address
            run = subprocess.Popen(
                [wrk, "-t1", "-c50", "-d6", f"http://{host}:{port}/"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                wait_until(lambda: server.get("/metrics")[1].count(b'code="200"') > 0, 10, "load")
                _signal_through(server, signum)
                output, _ = run.communicate(timeout=30)
            finally:
                if run.poll() is None:
                    run.kill()
            print(output)
            assert re.search(r"\d+ requests in", output), output
            assert "Socket errors" not in output and "Non-2xx" not in output, output
