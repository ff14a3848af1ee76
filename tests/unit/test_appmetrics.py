"""The app's own metrics: read in a worker (appstats.py), merged by the master (appmerge.py).

In process: real prometheus_client registries stand in for workers' default registries, and
the merge is driven the way the aggregator drives it, process by process.
"""

from __future__ import annotations

import sys
import types

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from greenserve.metrics.aggregate import Aggregator
from greenserve.metrics.appmerge import AppMetrics
from greenserve.metrics.appstats import AppMetricsReader
from greenserve.metrics.metrics import build_registry


class FakeWorker:
    """One worker process: its own registry, read as appstats reads the default one."""

    def __init__(self, pid: int, slot: int, max_series: int = 10000) -> None:
        self.pid, self.slot = pid, slot
        self.registry = CollectorRegistry()
        self.reader = AppMetricsReader(max_series)
        self.metrics = {
            "requests": Counter("app_requests", "Requests.", ["route"], registry=self.registry),
            "latency": Histogram(
                "app_latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=self.registry
            ),
            "size": Summary("app_size_bytes", "Sizes.", registry=self.registry),
            "queue": Gauge("app_queue", "Per worker.", registry=self.registry),
            "total": Gauge(
                "app_total", "Summed.", multiprocess_mode="livesum", registry=self.registry
            ),
            "peak": Gauge("app_peak", "Max.", multiprocess_mode="max", registry=self.registry),
            "low": Gauge("app_low", "Min.", multiprocess_mode="min", registry=self.registry),
            "last": Gauge(
                "app_last", "Recent.", multiprocess_mode="mostrecent", registry=self.registry
            ),
            "build": Info("app_build", "Build.", registry=self.registry),
        }
        self.metrics["build"].info({"version": "1.2"})

    def delta(self, monkeypatch) -> dict | None:
        client = types.SimpleNamespace(REGISTRY=self.registry)
        monkeypatch.setitem(sys.modules, "prometheus_client", client)
        delta = self.reader.delta()
        monkeypatch.undo()
        return None if delta is None else delta.to_wire()

    def flush(self, merge: AppMetrics, monkeypatch, delivered: bool = True) -> dict:
        """One stats flush: the delta (None when nothing changed) reaches the master or not."""
        wire = self.delta(monkeypatch)
        if wire is None:
            return {"families": {}, "series": {}, "removed": []}
        if delivered:
            merge.apply(self.slot, self.pid, wire)
            self.reader.commit()
        return wire


def exposition(merge: AppMetrics) -> dict:
    """Parse the merged families with the official parser, as Prometheus would read them."""
    aggregator = Aggregator()
    aggregator._app = merge
    text = generate_latest(build_registry(aggregator)).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("app_"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class TestCountersAddUpExactly:
    """N increments spread over workers read N, through recycles, crashes and lost sends."""

    def test_sum_over_workers_and_across_recycles(self, monkeypatch):
        merge = AppMetrics()
        workers = [FakeWorker(100 + slot, slot) for slot in range(3)]
        total = 0
        for round_ in range(4):
            for worker in workers:
                for _ in range(round_ + worker.slot + 1):
                    worker.metrics["requests"].labels("/a").inc()
                    worker.metrics["latency"].observe(0.5)
                    worker.metrics["size"].observe(10)
                    total += 1
                worker.flush(merge, monkeypatch)
            # worker 1 is recycled (max-requests, TTOU, a crash): a new process, same slot
            merge.exited(workers[1].pid)
            workers[1] = FakeWorker(workers[1].pid + 10, 1)
            seen = exposition(merge)
            assert value(seen, "app_requests_total", route="/a") == total
            assert value(seen, "app_latency_seconds_count") == total
            assert value(seen, "app_latency_seconds_bucket", le="1.0") == total
            assert value(seen, "app_latency_seconds_bucket", le="0.1") == 0
            assert value(seen, "app_size_bytes_sum") == 10 * total

    def test_a_refused_send_is_carried_by_the_next_delta(self, monkeypatch):
        merge = AppMetrics()
        worker = FakeWorker(100, 0)
        worker.metrics["requests"].labels("/a").inc(5)
        worker.flush(merge, monkeypatch)
        worker.metrics["requests"].labels("/a").inc(3)
        worker.flush(merge, monkeypatch, delivered=False)  # the queue was full
        worker.metrics["requests"].labels("/b").inc()
        worker.flush(merge, monkeypatch)
        seen = exposition(merge)
        assert value(seen, "app_requests_total", route="/a") == 8
        assert value(seen, "app_requests_total", route="/b") == 1

    def test_deltas_carry_only_what_changed(self, monkeypatch):
        merge = AppMetrics()
        worker = FakeWorker(100, 0)
        worker.metrics["requests"].labels("/a")  # the child exists: its labels are known
        first = worker.flush(merge, monkeypatch)
        assert first["families"] and first["series"]
        worker.metrics["requests"].labels("/a").inc()
        second = worker.flush(merge, monkeypatch)
        assert second["families"] == {}
        assert set(second["series"]) == {("app_requests", "app_requests_total", (("route", "/a"),))}
        assert worker.flush(merge, monkeypatch)["series"] == {}


class TestGaugeModes:
    """multiprocess_mode as prometheus_client spells it; only live processes count."""

    def test_each_mode(self, monkeypatch):
        merge = AppMetrics()
        workers = [FakeWorker(100 + slot, slot) for slot in range(3)]
        for worker, level in zip(workers, (5, 1, 3), strict=True):
            for name in ("queue", "total", "peak", "low", "last"):
                worker.metrics[name].set(level)
            worker.flush(merge, monkeypatch)
        workers[0].metrics["last"].set(7)  # the most recent change
        workers[0].flush(merge, monkeypatch)
        seen = exposition(merge)
        assert [value(seen, "app_queue", worker=str(n)) for n in range(3)] == [5, 1, 3]
        assert value(seen, "app_total") == 9
        assert value(seen, "app_peak") == 5 and value(seen, "app_low") == 1
        assert value(seen, "app_last") == 7
        assert value(seen, "app_build_info", version="1.2") == 1  # once, not per worker
        merge.exited(workers[0].pid)  # a dead worker's gauges describe nothing
        seen = exposition(merge)
        assert ("app_queue", (("worker", "0"),)) not in seen
        assert value(seen, "app_total") == 4 and value(seen, "app_peak") == 3

    def test_a_slot_handing_over_shows_one_series(self, monkeypatch):
        merge = AppMetrics()
        old, new = FakeWorker(100, 0), FakeWorker(101, 0)
        old.metrics["queue"].set(2)
        old.flush(merge, monkeypatch)
        new.metrics["queue"].set(9)
        new.flush(merge, monkeypatch)
        seen = exposition(merge)
        assert value(seen, "app_queue", worker="0") == 9
        assert [k for k in seen if k[0] == "app_queue"] == [("app_queue", (("worker", "0"),))]


class TestBadInput:
    """Disagreeing workers are refused, counted and reported once; /metrics stays valid."""

    @pytest.mark.parametrize(
        ("make", "reason"),
        [
            (lambda r: Gauge("app_requests", "A gauge now.", ["route"], registry=r), "type"),
            (lambda r: Counter("app_requests", "Other labels.", ["path"], registry=r), "labels"),
            (
                lambda r: Histogram("app_requests", "Buckets.", buckets=(5.0,), registry=r),
                "type",
            ),
            (lambda r: Counter("greenserve_mine", "Ours.", registry=r), "reserved"),
            (lambda r: Gauge("app_w", "Has worker.", ["worker"], registry=r), "worker_label"),
        ],
    )
    def test_refused(self, monkeypatch, make, reason):
        merge = AppMetrics()
        good = FakeWorker(100, 0)
        good.metrics["requests"].labels("/a").inc()
        good.flush(merge, monkeypatch)
        bad = FakeWorker(101, 1)
        bad.registry.unregister(bad.metrics["requests"])
        metric = make(bad.registry)
        child = metric.labels("x") if metric._labelnames else metric
        getattr(child, "inc", getattr(child, "observe", None))(1)
        for _ in range(2):
            bad.flush(merge, monkeypatch)
        assert merge.rejected[reason] >= 1
        events = merge.take_events()
        assert [e["reason"] for e in events] == [reason] and merge.take_events() == []
        seen = exposition(merge)  # still parses: the refused series are not in it
        assert value(seen, "app_requests_total", route="/a") == 1

    def test_histogram_buckets_that_differ(self, monkeypatch):
        merge = AppMetrics()
        one, two = FakeWorker(100, 0), FakeWorker(101, 1)
        two.registry.unregister(two.metrics["latency"])
        other = Histogram("app_latency_seconds", "L.", buckets=(0.5,), registry=two.registry)
        one.metrics["latency"].observe(0.2)
        other.observe(0.2)
        one.flush(merge, monkeypatch)
        two.flush(merge, monkeypatch)
        assert merge.rejected["buckets"] >= 1
        assert value(exposition(merge), "app_latency_seconds_count") == 1

    def test_a_series_explosion_is_capped_in_the_worker(self, monkeypatch):
        worker = FakeWorker(100, 0, max_series=50)
        for n in range(200):
            worker.metrics["requests"].labels(f"/user/{n}").inc()
        wire = worker.delta(monkeypatch)
        assert len(wire["series"]) == 50 and worker.reader.capped > 150

    def test_a_failing_collector_is_counted_not_raised(self, monkeypatch):
        worker = FakeWorker(100, 0)

        class Broken:
            def collect(self):
                raise RuntimeError("app bug")

        worker.registry.register(Broken())
        assert worker.delta(monkeypatch)["series"]
        assert worker.reader.failures == 1


def test_no_prometheus_client_no_cost(monkeypatch):
    monkeypatch.delitem(sys.modules, "prometheus_client", raising=False)
    assert AppMetricsReader(10).delta() is None


class TestRendering:
    """The app's families written by render_app read back as prometheus_client writes them."""

    @staticmethod
    def merged(monkeypatch) -> Aggregator:
        merge = AppMetrics()
        for slot in range(2):
            worker = FakeWorker(200 + slot, slot)
            odd = Counter(
                "app_odd",
                'Help with \\ and "quotes"\nand a newline.',
                ["v"],
                registry=worker.registry,
            )
            odd.labels('a "quoted" \\ back\nslash').inc(2)
            worker.metrics["requests"].labels("/a").inc()
            worker.metrics["latency"].observe(0.5)
            worker.metrics["size"].observe(3)
            worker.metrics["queue"].set(slot + 1)
            worker.metrics["total"].set(4)
            worker.flush(merge, monkeypatch)
        aggregator = Aggregator()
        aggregator._app = merge
        return aggregator

    @staticmethod
    def parsed(text: str, openmetrics: bool) -> dict:
        from prometheus_client.openmetrics.parser import (
            text_string_to_metric_families as om_families,
        )

        parse = om_families if openmetrics else text_string_to_metric_families
        return {
            (family.name, family.type, s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse(text)
            for s in family.samples
            if s.name.startswith("app_") and not s.name.endswith("_created")
        }

    @pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
    def test_same_samples_as_prometheus_client(self, monkeypatch, openmetrics):
        from prometheus_client.openmetrics.exposition import generate_latest as om_latest

        from greenserve.metrics.metrics import AppCollector, render_app

        aggregator = self.merged(monkeypatch)
        registry = CollectorRegistry()
        registry.register(AppCollector(aggregator))
        reference = (om_latest if openmetrics else generate_latest)(registry).decode()
        fast = render_app(aggregator.app_families()[0], openmetrics).decode()
        if openmetrics:
            fast += "# EOF\n"
        assert self.parsed(fast, openmetrics) == self.parsed(reference, openmetrics)
        assert self.parsed(fast, openmetrics)  # not two empty sets

    @pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
    def test_each_value_written_as_prometheus_client_writes_it(self, openmetrics):
        from prometheus_client.utils import floatToGoString

        from greenserve.metrics.appmerge import MergedFamily
        from greenserve.metrics.metrics import render_app

        values = [0.0, -0.0, 1.5, 999999.5, 1e6, 1.5e7, 1e-05, -3e9, 1e300, 3]
        values += [float("nan"), float("inf"), float("-inf")]
        samples = tuple(("app_level", (("n", str(n)),), v) for n, v in enumerate(values))
        family = MergedFamily("app_level", "gauge", "Level.", samples)
        lines = render_app([family], openmetrics).decode().splitlines()[2:]
        assert [line.split(" ")[1] for line in lines] == list(map(floatToGoString, values))

    @pytest.mark.parametrize(
        "accept",
        ["", "text/plain;version=0.0.4", "application/openmetrics-text;version=1.0.0"],
    )
    def test_the_endpoint_in_each_format(self, monkeypatch, accept):
        import gzip

        from greenserve.metrics.metrics import build_app

        aggregator = self.merged(monkeypatch)
        app = build_app(build_registry(aggregator), aggregator, lambda: None)
        seen = {}
        environ = {
            "PATH_INFO": "/metrics",
            "REQUEST_METHOD": "GET",
            "HTTP_ACCEPT": accept,
            "HTTP_ACCEPT_ENCODING": "gzip",
        }
        body = b"".join(app(environ, lambda status, headers: seen.update(headers)))
        text = gzip.decompress(body).decode()
        openmetrics = seen["Content-Type"].startswith("application/openmetrics-text")
        assert openmetrics == accept.startswith("application/openmetrics-text")
        samples = self.parsed(text, openmetrics)
        assert any(key[2] == "app_requests_total" for key in samples)
        if openmetrics:
            assert text.endswith("# EOF\n") and text.count("# EOF") == 1
        assert "greenserve_workers_alive" in text
