"""The app's own prometheus_client metrics on greenserve's /metrics: real Flask and Django apps
with their usual exporters, 2 workers, recycles and reloads, and a real Prometheus."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import threading
import urllib.request

import requests

from tests.helpers import running_prometheus, serving_http, wait_until


def app_samples(server) -> dict:
    """Every sample of /metrics, parsed with the official parser."""
    from prometheus_client.parser import text_string_to_metric_families

    _, body, _ = server.get("/metrics")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def send(server, path: str, count: int) -> set[int]:
    """``count`` requests, each on a new connection held open until the last is answered: a
    worker that holds more connections than its sibling lets the next one go to it, so both
    workers take some. (Closed one by one, a fast worker could see each close before the next
    connection arrived, both stood at zero, and the one that went idle last took them all.)"""
    host, port = server.address
    pids = set()
    with contextlib.ExitStack() as held:
        for _ in range(count):
            session = held.enter_context(requests.Session())
            response = session.get(f"http://{host}:{port}{path}", timeout=10)
            assert response.status_code == 200
            if response.headers.get("Content-Type", "").startswith("application/json"):
                pids.add(response.json().get("pid"))
    return pids


def wait_count(server, name: str, expected: float, **labels: str) -> dict:
    def reached():
        samples = app_samples(server)
        return samples if total(samples, name, **labels) == expected else None

    try:
        return wait_until(reached, 15, f"{name} == {expected}")
    except AssertionError:
        print("seen:", total(app_samples(server), name, **labels))
        raise


# Without a compiler at install the worker keeps prometheus_client's own value; CI builds it.
LOCK_FREE = (
    {"greenserve._appvalue.Value"}
    if os.environ.get("CI") == "true"
    else {"greenserve._appvalue.Value", "prometheus_client.values.MutexValue"}
)


def made_with(server) -> str:
    host, port = server.address
    reply = requests.get(f"http://{host}:{port}/value-class", timeout=10)
    return reply.json()["made_with"]


class TestFlask:
    """prometheus_flask_exporter and the app's own Counter/Histogram/Gauge, unmodified."""

    def test_exact_through_recycles_and_reloads(self):
        with serving_http(
            "metrics_flask:app", "--stats-interval", "0.2", "--max-requests", "40", workers=2
        ) as server:
            server.started()
            sent = 0
            seen = []
            for step in ("spread", "max-requests", "ttou", "hup"):
                pids = send(server, "/order/book", 30)
                sent += 30
                if step == "spread":
                    assert len(pids) == 2, pids  # both workers served: a sum, not one's view
                if step == "ttou":
                    server.signal(signal.SIGTTOU)
                    server.wait_event("workers_scaled", timeout=10)
                if step == "hup":
                    server.signal(signal.SIGHUP)
                    server.wait_event("reload_complete", timeout=30)
                samples = wait_count(server, "shop_orders_total", sent, kind="book")
                seen.append(total(samples, "shop_orders_total"))
                assert total(samples, "flask_http_request_total", status="200") == sent
                assert total(samples, "shop_basket_items_count") == sent
                assert total(samples, "shop_basket_items_bucket", le="5.0") == sent
                assert total(samples, "flask_http_request_duration_seconds_count") == sent
            assert seen == sorted(seen)  # never down
            assert server.find("worker_exited")  # recycles and reloads did happen
            gauges = {ls for (n, ls), _ in app_samples(server).items() if n == "shop_worker_pid"}
            assert all(dict(ls).get("worker") for ls in gauges)  # per worker by default
            assert made_with(server) in LOCK_FREE  # last: it is a request Flask counts

    def test_a_killed_worker_never_makes_a_counter_go_down(self):
        with serving_http("metrics_flask:app", "--stats-interval", "0.2", workers=2) as server:
            server.started()
            send(server, "/order/pen", 40)
            before = total(wait_count(server, "shop_orders_total", 40), "shop_orders_total")
            pid = next(iter(server.worker_pids().values()))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            server.wait_event("worker_exited", timeout=10)
            values = []
            for _ in range(10):
                values.append(total(app_samples(server), "shop_orders_total"))
            send(server, "/order/pen", 10)
            after = total(wait_count(server, "shop_orders_total", before + 10), "shop_orders_total")
            assert min(values) >= before and after == before + 10


class TestUsr2:
    """A binary upgrade: the new master's counters go on from the old one's, never down."""

    def test_counters_carry_over(self):
        with serving_http("metrics_flask:app", "--stats-interval", "0.2", workers=2) as server:
            server.started()
            send(server, "/order/mug", 30)
            wait_count(server, "shop_orders_total", 30)
            seen: list[float] = []
            stop = threading.Event()

            def scrape_all() -> None:
                while not stop.is_set():
                    with contextlib.suppress(OSError):
                        seen.append(total(app_samples(server), "shop_orders_total"))

            scraper = threading.Thread(target=scrape_all, daemon=True)
            scraper.start()
            try:
                server.signal(signal.SIGUSR2)
                server.wait_event("upgrade_complete", timeout=30)
                send(server, "/order/mug", 20)  # served by either master's workers
                server.wait_event("stopped", timeout=40)  # the old master, drained
                wait_count(server, "shop_orders_total", 50)
            finally:
                stop.set()
                scraper.join(10)
            assert seen and min(seen) >= 30, seen[:5]
            drops = [(a, b) for a, b in itertools.pairwise(seen) if b < a]
            assert drops == [], drops[:5]


class TestDjango:
    """django-prometheus, set up as its README says, unmodified."""

    def test_requests_counted_once_over_workers(self):
        with serving_http(
            "fw_django.wsgi:application",
            "--stats-interval",
            "0.2",
            workers=2,
            env={"DJANGO_SETTINGS_MODULE": "fw_django.settings_prometheus"},
        ) as server:
            server.started()
            send(server, "/json", 25)
            samples = wait_count(
                server, "django_http_responses_total_by_status_total", 25, status="200"
            )
            assert total(samples, "django_http_requests_total_by_method_total", method="GET") == 25


class TestRealPrometheus:
    """Prometheus scrapes it and sums what it sees: the client's count."""

    def test_promql_over_the_merged_counter(self, tmp_path):
        with serving_http("metrics_flask:app", "--stats-interval", "0.2", workers=2) as server:
            server.started()
            with running_prometheus(tmp_path, server.metrics_address, rules=False) as api:
                send(server, "/order/cup", 50)
                query = "sum(shop_orders_total)"
                url = f"{api}/query?query={urllib.request.quote(query)}"

                def summed():
                    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                        with urllib.request.urlopen(url, timeout=5) as response:
                            result = json.loads(response.read())["data"]["result"]
                        return float(result[0]["value"][1]) == 50
                    return False

                wait_until(summed, 40, "sum(shop_orders_total) == 50 in Prometheus", step=0.25)
