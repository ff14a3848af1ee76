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

from greenserve.stats import COUNTERS, GAUGES, HISTOGRAMS, LABELLED, WIRE_VERSION, Snapshot

RESTART_REASONS = ("exit", "signal", "timeout", "max_requests", "reload")


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
class SlotState:
    """One worker slot: its live processes and what its dead predecessors counted."""

    index: int
    pid: int | None = None  # the slot's current process (the newest)
    generation: int = 0
    ready: bool = False
    last_report: float | None = None
    restarts: int = 0
    retired: Totals = field(default_factory=Totals)
    live: dict[int, Snapshot] = field(default_factory=dict)  # pid -> latest snapshot
    pids: set[int] = field(default_factory=set)  # every live process of the slot


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
    tls_expiry: float | None = None  # the served certificate's notAfter, when TLS is on
    draining: bool = False  # a stop began: load balancers must stop routing here

    @property
    def alive(self) -> int:
        return sum(1 for slot in self.slots if slot.alive)


class Aggregator:
    """Thread-safe: the master loop writes, scrape threads read ``view()``."""

    def __init__(self, desired: int) -> None:
        self._lock = threading.Lock()
        self._desired = desired
        self._slots: dict[int, SlotState] = {}
        self._restarts = dict.fromkeys(RESTART_REASONS, 0)
        self._generation = 1
        self._tls_expiry: float | None = None
        self._draining = False
        for index in range(desired):
            self._slots[index] = SlotState(index)

    def set_desired(self, desired: int) -> None:
        with self._lock:
            self._desired = desired
            for index in range(desired):
                self._slots.setdefault(index, SlotState(index))

    def set_draining(self) -> None:
        with self._lock:
            self._draining = True

    def set_tls_expiry(self, timestamp: float | None) -> None:
        with self._lock:
            self._tls_expiry = timestamp

    def set_generation(self, generation: int) -> None:
        with self._lock:
            self._generation = generation

    def process_started(self, slot: int, pid: int, generation: int) -> None:
        """A new process becomes the slot's current one (an old one may still be draining)."""
        with self._lock:
            state = self._slots.setdefault(slot, SlotState(slot))
            state.pid, state.generation = pid, generation
            state.ready, state.last_report = False, None
            state.pids.add(pid)

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
            state.live[pid] = message
            if pid == state.pid:
                state.ready = state.ready or bool(message["ready"])
                state.last_report = time.monotonic()
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
            snapshot = state.live.pop(pid, None)
            if snapshot is not None:
                state.retired.add(snapshot)
            if pid == state.pid:
                state.pid, state.ready, state.last_report = None, False, None
            if reason is not None:
                self._restarts[reason] += 1
                state.restarts += 1

    def view(self) -> View:
        now = time.monotonic()
        with self._lock:
            slots = []
            for state in sorted(self._slots.values(), key=lambda s: s.index):
                live = list(state.live.values())
                total = state.retired.plus(live)
                slots.append(
                    SlotView(
                        index=state.index,
                        pid=state.pid,
                        alive=state.pid is not None,
                        ready=state.ready,
                        report_age=None if state.last_report is None else now - state.last_report,
                        restarts=state.restarts,
                        counters=total.counters,
                        gauges={
                            name: sum(s["gauges"].get(name, 0) for s in live) for name in GAUGES
                        },
                        histograms=total.histograms,
                        labelled=total.labelled,
                    )
                )
            return View(
                self._desired,
                tuple(slots),
                dict(self._restarts),
                self._generation,
                self._tls_expiry,
                self._draining,
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
