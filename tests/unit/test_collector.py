"""The prometheus Collector: every family present from the first scrape, values as aggregated."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from greenserve.master.slots import SlotTable, WorkerProcess
from greenserve.metrics import catalog
from greenserve.metrics.aggregate import RESTART_REASONS, Aggregator, MasterState
from greenserve.metrics.metrics import build_registry
from greenserve.metrics.stats import WorkerStats

# Every family but the certificate gauge, which exists only with TLS on.
# Not without their feature: the certificate gauge needs TLS, the by-mount counters --static
# (a worker seeds its mounts at 0 from its first report).
FAMILIES = (
    {f.metric for f in catalog.FAMILIES}
    - {catalog.BY_NAME["tls_certificate_expiry_timestamp_seconds"].metric}
    - {f.metric for f in catalog.FAMILIES if f.label == "mount"}
)


class TestCollector:
    """Values read back through registry.get_sample_value."""

    def test_every_family_has_samples_before_any_worker_reports(self):
        aggregator = Aggregator()
        # as the master publishes it from its first turn: its listeners' accept queues too
        liveness = SlotTable(2).liveness()
        aggregator.publish(MasterState(2, 1, liveness, listen_queues=(("127.0.0.1:8001", 0),)))
        registry = build_registry(aggregator)
        families = {
            f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
        assert set(families) >= FAMILIES
        for name in FAMILIES:
            assert families[name].samples, name
            assert families[name].documentation, name
        for reason in RESTART_REASONS:
            assert (
                registry.get_sample_value("greenserve_worker_restarts_total", {"reason": reason})
                == 0
            )
        for worker in ("0", "1"):
            assert (
                registry.get_sample_value(
                    "greenserve_connections_accepted_total", {"worker": worker}
                )
                == 0
            )
        assert registry.get_sample_value("process_resident_memory_bytes") > 0

    def test_values_follow_the_aggregate(self):
        agg, table = Aggregator(), SlotTable(1)
        registry = build_registry(agg)
        worker = WorkerProcess(0, 1, 100, 0.0)
        table.started(worker)
        table.reported(worker, ready=True, retire="", now=0.0)
        agg.publish(MasterState(1, 1, table.liveness()))
        agg.process_started(0, 100)
        stats = WorkerStats()
        stats.connections_accepted = 7
        stats.connections_active = 2
        stats.histograms["event_loop_lag_seconds"].observe(0.003)
        message = stats.snapshot(slot=0, generation=1, ready=True)
        message["pid"] = 100
        agg.apply(message)
        assert registry.get_sample_value("greenserve_workers_alive") == 1
        assert (
            registry.get_sample_value("greenserve_connections_accepted_total", {"worker": "0"}) == 7
        )
        assert registry.get_sample_value("greenserve_connections_active", {"worker": "0"}) == 2
        assert (
            registry.get_sample_value(
                "greenserve_event_loop_lag_seconds_bucket", {"worker": "0", "le": "0.001"}
            )
            == 0
        )
        assert (
            registry.get_sample_value(
                "greenserve_event_loop_lag_seconds_bucket", {"worker": "0", "le": "0.005"}
            )
            == 1
        )
        assert (
            registry.get_sample_value("greenserve_event_loop_lag_seconds_count", {"worker": "0"})
            == 1
        )
        table.exited(worker, 1, 5.0, stopping=False)
        agg.process_exited(0, 100, "exit")
        agg.publish(MasterState(1, 1, table.liveness()))
        assert registry.get_sample_value("greenserve_workers_alive") == 0
        assert (
            registry.get_sample_value("greenserve_worker_restarts_total", {"reason": "exit"}) == 1
        )
        assert (
            registry.get_sample_value("greenserve_connections_accepted_total", {"worker": "0"}) == 7
        )

    def test_snapshot_fits_one_atomic_pipe_write(self):
        """A pickled snapshot stays under PIPE_BUF, so a killed worker cannot tear one."""
        import pickle

        stats = WorkerStats()
        stats.connections_accepted = 2**62
        for n in range(1000):
            stats.histograms["event_loop_lag_seconds"].observe(n / 100)
        assert len(pickle.dumps(stats.snapshot(slot=63, generation=9, ready=True))) < 4096


class TestQuantile:
    """histogram_quantile as Prometheus computes it, used by top for interval latencies."""

    def test_linear_interpolation_and_edges(self):
        from greenserve.tools.monitor import quantile

        buckets = [(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)]
        assert quantile(0.5, buckets) == 0.1
        assert abs(quantile(0.75, buckets) - 0.15) < 1e-9
        assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
        assert quantile(0.99, [(0.1, 0.0), (float("inf"), 5.0)]) == 0.1


def test_the_scrape_is_exactly_the_catalog():
    """What the collector exports, with TLS on, is the catalog: names, types and help."""
    aggregator = Aggregator()
    aggregator.publish(MasterState(1, 1, SlotTable(1).liveness(), tls_expiry=1e9))
    text = generate_latest(build_registry(aggregator)).decode()
    exported = {
        f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("greenserve_")
    }
    assert set(exported) == {f.metric for f in catalog.FAMILIES}
    for family in catalog.FAMILIES:
        assert exported[family.metric].type == family.kind, family.name
        assert exported[family.metric].documentation == family.help, family.name
