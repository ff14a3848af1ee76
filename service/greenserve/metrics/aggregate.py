"""The master's view of every worker slot, built from the workers' cumulative snapshots.

Per slot it keeps the *retired* totals of the slot's dead processes plus the latest snapshot of each
live one (a slot has two live processes while a reload or a recycle hands it over). A counter's
value is their sum, so it never goes backwards when a worker dies, and a lost snapshot loses
nothing: the next cumulative one carries it. Stdlib only (no prometheus here), so the arithmetic is
tested on its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from greenserve.master.slots import SlotLiveness
from greenserve.metrics.appmerge import AppMetrics, MergedFamily
from greenserve.metrics.catalog import BY_NAME
from greenserve.metrics.stats import COUNTERS, GAUGES, HISTOGRAMS, LABELLED, WIRE_VERSION, Snapshot

RESTART_REASONS = BY_NAME["worker_restarts"].seeded


@dataclass
class Totals:
    """Counters, labelled counters and histogram buckets that add up across processes."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    labelled: dict[str, dict[str, int]] = field(
        default_factory=lambda: {name: {} for name in LABELLED}
    )
    histograms: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            name: {"counts": [0] * (len(b) + 1), "sum": 0.0} for name, b in HISTOGRAMS.items()
        }
    )

    def add(self, snapshot: Snapshot) -> None:
        """Add one process's cumulative snapshot."""
        for name in COUNTERS:
            self.counters[name] += snapshot["counters"].get(name, 0)
        for name, values in snapshot.get("labelled", {}).items():
            merged = self.labelled.setdefault(name, {})
            for key, value in values.items():
                merged[key] = merged.get(key, 0) + value
        for name, hist in snapshot["histograms"].items():
            mine = self.histograms.get(name)
            if mine is None or len(mine["counts"]) != len(hist["counts"]):
                continue  # a snapshot from a build with other buckets: cannot be merged
            mine["counts"] = [a + b for a, b in zip(mine["counts"], hist["counts"], strict=True)]
            mine["sum"] += hist["sum"]

    def plus(self, snapshots: list[Snapshot]) -> Totals:
        """A copy with the live snapshots added."""
        total = Totals(
            dict(self.counters),
            {name: dict(values) for name, values in self.labelled.items()},
            {
                name: {"counts": list(h["counts"]), "sum": h["sum"]}
                for name, h in self.histograms.items()
            },
        )
        for snapshot in snapshots:
            total.add(snapshot)
        return total


@dataclass
class SlotCounters:
    """One worker slot's counters: its live processes' latest snapshots and its dead ones' sums."""

    index: int
    restarts: int = 0
    retired: Totals = field(default_factory=Totals)
    live: dict[int, Snapshot] = field(default_factory=dict)  # pid -> latest snapshot
    pids: set[int] = field(default_factory=set)  # every live process of the slot


@dataclass(frozen=True)
class MasterState:
    """What the master publishes once per loop turn for scrapes: the slot table's liveness and
    the few values only the master knows. Published whole, so a scrape never sees half a change."""

    desired: int = 0
    generation: int = 1
    slots: tuple[SlotLiveness, ...] = ()
    tls_expiry: float | None = None  # the served certificate's notAfter, when TLS is on
    draining: bool = False  # a stop began: load balancers must stop routing here
    listen_queues: tuple[tuple[str, int], ...] = ()  # (bind, connections in its accept queue)


@dataclass(frozen=True)
class SlotView:
    """A consistent copy of one slot for a scrape."""

    index: int
    pid: int | None
    alive: bool
    ready: bool
    report_age: float | None
    restarts: int
    counters: dict[str, int]
    gauges: dict[str, float]
    histograms: dict[str, dict[str, Any]]
    labelled: dict[str, dict[str, int]]


@dataclass(frozen=True)
class View:
    """A consistent copy of the whole aggregate, taken under the lock."""

    desired: int
    slots: tuple[SlotView, ...]
    restarts: dict[str, int]
    generation: int
    tls_expiry: float | None = None
    draining: bool = False
    listen_queues: tuple[tuple[str, int], ...] = ()

    @property
    def alive(self) -> int:
        return sum(1 for slot in self.slots if slot.alive)


class Aggregator:
    """Thread-safe: the master loop writes, scrape threads read ``view()``.

    It keeps counters only. Which process serves a slot and whether it is ready comes from the
    slot table (greenserve.master.slots), published by the master with ``publish``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[int, SlotCounters] = {}
        self._restarts = dict.fromkeys(RESTART_REASONS, 0)
        self._state = MasterState()
        self._app = AppMetrics()  # the app's own prometheus_client metrics (appmerge.py)

    def publish(self, state: MasterState) -> None:
        with self._lock:
            self._state = state

    def process_started(self, slot: int, pid: int) -> None:
        """Snapshots from this process count from now on."""
        with self._lock:
            self._slots.setdefault(slot, SlotCounters(slot)).pids.add(pid)

    def apply(self, message: Snapshot) -> bool:
        """Take a snapshot from one of the slot's live processes; anything else is ignored."""
        if message.get("v") != WIRE_VERSION or "counters" not in message:
            return False
        with self._lock:
            state = self._slots.get(message["slot"])
            pid = message["pid"]
            if state is None or pid not in state.pids:
                return False
            previous = state.live.get(pid)
            if previous is not None and previous["seq"] >= message["seq"]:
                return False
            app = message.pop("app", None)  # a delta: applied once, not kept in the snapshot
            if app is not None:
                self._app.apply(message["slot"], pid, app)
            state.live[pid] = message
            return True

    def process_exited(self, slot: int, pid: int, reason: str | None) -> None:
        """Fold the dead process's last snapshot into the slot's retired totals.

        ``reason`` is a restart reason, or None when the exit was asked for (stop, scale down).
        """
        with self._lock:
            state = self._slots.get(slot)
            if state is None or pid not in state.pids:
                return
            state.pids.discard(pid)
            self._app.exited(pid)
            snapshot = state.live.pop(pid, None)
            if snapshot is not None:
                state.retired.add(snapshot)
            if reason is not None:
                self._restarts[reason] += 1
                state.restarts += 1

    def app_families(self) -> tuple[list[MergedFamily], dict[str, int]]:
        """The app's metrics merged over every process, and the rejected series by reason."""
        with self._lock:
            return self._app.families(), dict(self._app.rejected)

    def app_rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._app.rejected)

    def app_totals(self) -> dict[str, Any]:
        with self._lock:
            return self._app.totals()

    def inherit_app_totals(self, totals: dict[str, Any]) -> None:
        with self._lock:
            self._app.inherit(totals)

    def app_events(self) -> list[dict[str, Any]]:
        """What the merge has to report since the last call (rejected families, once each)."""
        with self._lock:
            return self._app.take_events()

    def view(self) -> View:
        now = time.monotonic()
        with self._lock:
            published = self._state
            liveness = {slot.index: slot for slot in published.slots}
            slots = []
            for index in sorted(set(liveness) | set(self._slots)):
                counted = self._slots.get(index) or SlotCounters(index)
                shown = liveness.get(index) or SlotLiveness(index, None, False, None)
                live = list(counted.live.values())
                total = counted.retired.plus(live)
                slots.append(
                    SlotView(
                        index=index,
                        pid=shown.pid,
                        alive=shown.pid is not None,
                        ready=shown.ready,
                        report_age=None if shown.last_report is None else now - shown.last_report,
                        restarts=counted.restarts,
                        counters=total.counters,
                        gauges={
                            name: sum(s["gauges"].get(name, 0) for s in live) for name in GAUGES
                        },
                        histograms=total.histograms,
                        labelled=total.labelled,
                    )
                )
            return View(
                published.desired,
                tuple(slots),
                dict(self._restarts),
                published.generation,
                published.tls_expiry,
                published.draining,
                published.listen_queues,
            )


def health(view: View, stale_after: float | None) -> tuple[bool, dict[str, Any]]:
    """Healthy when every desired slot has a live, accepting worker that reported recently."""
    workers = []
    healthy = 0
    for slot in view.slots:
        if slot.index >= view.desired:
            continue
        fresh = slot.report_age is not None and (
            stale_after is None or slot.report_age < stale_after
        )
        ok = slot.alive and slot.ready and fresh
        healthy += ok
        state = "ok" if ok else ("stale" if slot.ready else "starting") if slot.alive else "dead"
        workers.append(
            {
                "worker": slot.index,
                "pid": slot.pid,
                "state": state,
                "last_report_seconds": None
                if slot.report_age is None
                else round(slot.report_age, 3),
            }
        )
    ok = healthy == view.desired and not view.draining
    status = "draining" if view.draining else "ok" if ok else "degraded"
    return ok, {"status": status, "desired": view.desired, "workers": workers}
