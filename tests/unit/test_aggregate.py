"""The aggregator's arithmetic: retired totals, restarts, stale snapshots, histogram merges."""

from __future__ import annotations

import time

from greenserve.master.slots import SlotTable, WorkerProcess
from greenserve.metrics.aggregate import Aggregator, MasterState, health
from greenserve.metrics.catalog import LAG_BUCKETS
from greenserve.metrics.stats import WorkerStats


def _snapshot(stats: WorkerStats, slot: int, pid: int, ready: bool = True) -> dict:
    message = stats.snapshot(slot=slot, generation=1, ready=ready)
    message["pid"] = pid
    return message


class TestCounters:
    """Counters are retired totals plus the live snapshot, and never go backwards."""

    def test_live_snapshot_is_the_value(self):
        agg = Aggregator()
        agg.process_started(0, 100)
        stats = WorkerStats()
        stats.connections_accepted, stats.bytes_received = 3, 30
        assert agg.apply(_snapshot(stats, 0, 100))
        slot = agg.view().slots[0]
        assert slot.counters["connections_accepted"] == 3
        assert slot.counters["bytes_received"] == 30

    def test_restart_keeps_the_dead_process_counts(self):
        agg = Aggregator()
        agg.process_started(0, 100)
        old = WorkerStats()
        old.connections_accepted = 5
        agg.apply(_snapshot(old, 0, 100))
        agg.process_exited(0, 100, "signal")
        assert agg.view().slots[0].counters["connections_accepted"] == 5
        agg.process_started(0, 101)
        new = WorkerStats()
        new.connections_accepted = 2
        agg.apply(_snapshot(new, 0, 101))
        view = agg.view()
        assert view.slots[0].counters["connections_accepted"] == 7
        assert view.restarts["signal"] == 1
        assert view.restarts["exit"] == 0

    def test_snapshots_from_other_pids_and_old_sequences_are_ignored(self):
        agg = Aggregator()
        agg.process_started(0, 100)
        stats = WorkerStats()
        stats.bytes_sent = 10
        first = _snapshot(stats, 0, 100)
        stats.bytes_sent = 20
        second = _snapshot(stats, 0, 100)
        assert agg.apply(second)
        assert not agg.apply(first)  # older sequence number
        assert not agg.apply(_snapshot(stats, 0, 999))  # not the live process
        assert agg.view().slots[0].counters["bytes_sent"] == 20

    def test_dropped_snapshot_loses_nothing(self):
        """Snapshots are cumulative: skipping one changes nothing once the next arrives."""
        agg = Aggregator()
        agg.process_started(0, 100)
        stats = WorkerStats()
        for n in range(1, 6):
            stats.connections_accepted = n * 10
            message = _snapshot(stats, 0, 100)
            if n in (2, 3):
                stats.stats_dropped += 1
                continue
            agg.apply(message)
        counters = agg.view().slots[0].counters
        assert counters["connections_accepted"] == 50
        assert counters["stats_dropped"] == 2

    def test_gauges_come_from_the_live_process_only(self):
        agg = Aggregator()
        agg.process_started(0, 100)
        stats = WorkerStats()
        stats.connections_active = 4
        agg.apply(_snapshot(stats, 0, 100))
        assert agg.view().slots[0].gauges["connections_active"] == 4
        agg.process_exited(0, 100, None)
        assert agg.view().slots[0].gauges["connections_active"] == 0
        assert agg.view().restarts == dict.fromkeys(agg.view().restarts, 0)


class TestHistograms:
    """Histogram buckets and sums merge across restarts."""

    def test_merge_across_restart(self):
        agg = Aggregator()
        agg.process_started(0, 100)
        old = WorkerStats()
        lag = old.histograms["event_loop_lag_seconds"]
        lag.observe(0.0005)
        lag.observe(0.2)
        agg.apply(_snapshot(old, 0, 100))
        agg.process_exited(0, 100, "timeout")
        agg.process_started(0, 101)
        new = WorkerStats()
        new.histograms["event_loop_lag_seconds"].observe(100.0)
        agg.apply(_snapshot(new, 0, 101))
        merged = agg.view().slots[0].histograms["event_loop_lag_seconds"]
        assert sum(merged["counts"]) == 3
        assert merged["counts"][0] == 1  # <= 1 ms
        assert merged["counts"][LAG_BUCKETS.index(0.25)] == 1
        assert merged["counts"][-1] == 1  # +Inf
        assert abs(merged["sum"] - 100.2005) < 1e-9


def _published(agg: Aggregator, table: SlotTable, generation: int = 1) -> None:
    agg.publish(MasterState(table.desired(), generation, table.liveness()))


class TestHealth:
    """Healthy only when every desired slot is alive, accepting and reporting.

    Liveness comes from the slot table, published by the master; the aggregator adds counters.
    """

    def test_health_states(self):
        agg, table = Aggregator(), SlotTable(2)
        _published(agg, table)
        ok, body = health(agg.view(), stale_after=30)
        assert not ok and body["status"] == "degraded"
        workers = [WorkerProcess(slot, 1, pid, 0.0) for slot, pid in ((0, 10), (1, 11))]
        for worker in workers:
            table.started(worker)
            agg.process_started(worker.slot, worker.pid)
        _published(agg, table)
        ok, body = health(agg.view(), 30)
        assert not ok and {w["state"] for w in body["workers"]} == {"starting"}
        for worker in workers:
            table.reported(worker, ready=True, retire="", now=time.monotonic())
        _published(agg, table)
        ok, body = health(agg.view(), 30)
        assert ok and body["status"] == "ok"
        ok, body = health(agg.view(), stale_after=0.0)
        assert not ok and {w["state"] for w in body["workers"]} == {"stale"}
        table.exited(workers[1], -9, 5.0, stopping=False)
        agg.process_exited(1, 11, "signal")
        _published(agg, table)
        ok, body = health(agg.view(), 30)
        assert not ok and body["workers"][1]["state"] == "dead"
        agg.publish(MasterState(2, 1, table.liveness(), draining=True))
        ok, body = health(agg.view(), 30)
        assert not ok and body["status"] == "draining"

    def test_scaling_changes_desired(self):
        agg, table = Aggregator(), SlotTable(1)
        table.resize(3, 0.0)
        _published(agg, table)
        view = agg.view()
        assert view.desired == 3 and len(view.slots) == 3


class TestHandOver:
    """Two live processes in one slot (reload, recycle): both count, nothing is lost."""

    def test_old_and_new_process_both_count_until_the_old_exits(self):
        agg = Aggregator()
        agg.process_started(0, 100)
        old = WorkerStats()
        old.connections_accepted, old.connections_active = 10, 2
        agg.apply(_snapshot(old, 0, 100))
        agg.process_started(0, 200)  # the replacement starts; the old one drains
        new = WorkerStats()
        new.connections_accepted, new.connections_active = 3, 1
        agg.apply(_snapshot(new, 0, 200))
        old.connections_accepted, old.connections_active = 12, 0
        assert agg.apply(_snapshot(old, 0, 100))  # the draining process still reports
        slot = agg.view().slots[0]
        assert slot.counters["connections_accepted"] == 15
        assert slot.gauges["connections_active"] == 1
        agg.process_exited(0, 100, "reload")
        view = agg.view()
        assert view.slots[0].counters["connections_accepted"] == 15
        assert view.restarts["reload"] == 1
        assert view.restarts["reload"] == 1


def test_worker_stats_types_every_catalog_attribute_and_nothing_else():
    """WorkerStats' annotations (what mypy checks ``stats.x += 1`` against) are its slots, which
    come from the catalog."""
    assert set(WorkerStats.__annotations__) == set(WorkerStats.__slots__)
