"""OpenTelemetry end to end: greenserve's OTLP exporter against a receiver that
decodes the protobufs, a Flask app whose spans nest under greenserve's, no span lost when a
worker is replaced."""

from __future__ import annotations

import signal
import urllib.request

import pytest

from tests.helpers import running, wait_until
from tests.otlp import Receiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def _env(receiver: Receiver, **extra: str) -> dict[str, str]:
    # a long export interval: only the flush at a worker's exit can send what follows
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    env.update(extra)
    return env


def _get(server, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    host, port = server.address
    request = urllib.request.Request(f"http://{host}:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class TestEndToEnd:
    def test_server_spans_nest_the_apps_own_and_follow_traceparent(self, receiver):
        env = _env(receiver, OTEL_SERVICE_NAME="shop")
        args = ("traced_flask:app", "--otel", "-w", "2", "--stats-interval", "0.2")
        with running(*args, env=env) as server:
            server.started()
            ids = {}
            for n in range(10):
                _, headers, _ = _get(server, f"/order/{n}?q=1", {"User-Agent": "shop-test"})
                ids[str(n)] = headers["X-Request-ID"]
            parent = f"00-{TRACE_ID}-{PARENT_ID}-01"
            _status, headers, _ = _get(server, "/order/child", {"traceparent": parent})
            ids["child"] = headers["X-Request-ID"]
            assert _get(server, "/boom")[0] == 500
            assert receiver.spans == []  # nothing sent before the workers exit (delay 600 s)
            server.signal(signal.SIGTERM)
            assert server.wait_exit(30) == 0
        spans = receiver.spans
        server_spans = receiver.server_spans()
        assert len(server_spans) == 12
        assert all(r["service.name"] == "shop" for r in receiver.resources)
        by_id = {s["span_id"]: s for s in spans}
        orders = [s for s in spans if s["name"] == "load-order"]
        assert len(orders) == 11
        for child in orders:
            parent_span = by_id[child["parent_id"]]  # the app's span nests under greenserve's
            assert parent_span["scope"] == "greenserve"
            assert parent_span["trace_id"] == child["trace_id"]
            number = child["attributes"]["shop.order"]
            attributes = parent_span["attributes"]
            assert attributes["greenserve.request_id"] == ids[number]
            assert attributes["url.path"] == f"/order/{number}"
            assert attributes["http.request.method"] == "GET"
            assert attributes["http.response.status_code"] == 200
            assert attributes["client.address"] == "127.0.0.1"
            assert attributes["network.protocol.version"] == "1.1"
            assert parent_span["kind"] == 2  # SPAN_KIND_SERVER
            assert parent_span["name"] == "GET"
            if number == "child":
                assert parent_span["trace_id"] == TRACE_ID
                assert parent_span["parent_id"] == PARENT_ID
            else:
                assert parent_span["parent_id"] == ""
                assert attributes["url.query"] == "q=1"
                assert attributes["user_agent.original"] == "shop-test"
        boom = next(s for s in server_spans if s["attributes"]["url.path"] == "/boom")
        assert boom["attributes"]["http.response.status_code"] == 500
        assert boom["attributes"]["error.type"] == "500"
        assert boom["status"] == 2  # STATUS_CODE_ERROR
        assert len({s["pid"] for s in server_spans}) >= 1

    def test_sampling_is_parent_based(self, receiver):
        args = ("traced_flask:app", "--otel", "--otel-sample-ratio", "0", "-w", "1")
        with running(*args, env=_env(receiver)) as server:
            server.started()
            for n in range(20):
                _get(server, f"/order/{n}")
            sampled = f"00-{TRACE_ID}-{PARENT_ID}-01"
            _get(server, "/order/in", {"traceparent": sampled})
            _get(server, "/order/out", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
            server.signal(signal.SIGTERM)
            assert server.wait_exit(30) == 0
        names = sorted((s["name"], s["trace_id"]) for s in receiver.spans)
        assert names == [("GET", TRACE_ID), ("load-order", TRACE_ID)]


class TestNoSpanLost:
    @pytest.mark.parametrize("how", ["hup", "ttou", "max_requests"])
    def test_a_replaced_worker_sends_its_spans_before_it_exits(self, receiver, how):
        args = ["traced_flask:app", "--otel", "-w", "2", "--access-log", "--stats-interval", "0.1"]
        if how == "max_requests":
            args += ["--max-requests", "10"]
        with running(*args, env=_env(receiver)) as server:
            server.started()
            for n in range(30):
                assert _get(server, f"/order/{n}")[0] == 200
            if how == "hup":
                server.signal(signal.SIGHUP)
                server.wait_event("reload_complete", timeout=20)
                server.wait_event("worker_exited", count=2, timeout=20)
            elif how == "ttou":
                server.signal(signal.SIGTTOU)
                server.wait_event("worker_exited", timeout=20)
            else:
                server.wait_event("worker_exited", timeout=20)
            exited = {str(e["worker_pid"]) for e in server.find("worker_exited")}
            served = {
                pid: sum(1 for e in server.find("request") if str(e["pid"]) == pid)
                for pid in exited
            }
            assert sum(served.values()) > 0

            def flushed() -> bool:
                spans = receiver.server_spans()
                return all(
                    sum(1 for s in spans if s["pid"] == pid) == count
                    for pid, count in served.items()
                )

            # every request an exited worker served has its span in, while the server runs
            wait_until(flushed, 10, "the exited workers' spans")
            assert not server.find("worker_crashed")
        paths = sorted(s["attributes"]["url.path"] for s in receiver.server_spans())
        assert paths == sorted(f"/order/{n}" for n in range(30))
