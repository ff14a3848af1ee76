"""The master's view of every worker slot, built from the workers' cumulative snapshots.

Per slot it keeps the *retired* totals of the slot's dead processes plus the latest snapshot of its
live one. A counter's value is their sum, so it never goes backwards when a worker dies, and a lost
snapshot loses nothing: the next cumulative one carries it. Stdlib only (no prometheus here), so the
arithmetic is tested on its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from greenserve.stats import COUNTERS, GAUGES, HISTOGRAMS, LABELLED, WIRE_VERSION, Snapshot

RESTART_REASONS = ("exit", "signal", "timeout", "max_requests", "reload")


def _zero_histograms() -> dict[str, dict[str, Any]]:
    return {name: {"counts": [0] * (len(b) + 1), "sum": 0.0} for name, b in HISTOGRAMS.items()}


@dataclass
class SlotState:
    """One worker slot: the live process (if any) and what its dead predecessors counted."""

    index: int
    pid: int | None = None
    generation: int = 0
    started_at: float = 0.0
    ready: bool = False
    last_report: float | None = None
    restarts: int = 0
    retired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    retired_histograms: dict[str, dict[str, Any]] = field(default_factory=_zero_histograms)
    retired_labelled: dict[str, dict[str, int]] = field(
        default_factory=lambda: {name: {} for name in LABELLED}
    )
    live: Snapshot | None = None

    def labelled(self) -> dict[str, dict[str, int]]:
        live = self.live.get("labelled", {}) if self.live else {}
        return {
            name: _add_counts(retired, live.get(name, {}))
            for name, retired in self.retired_labelled.items()
        }

    def counters(self) -> dict[str, int]:
        live = self.live["counters"] if self.live else {}
        return {name: self.retired[name] + live.get(name, 0) for name in COUNTERS}

    def gauges(self) -> dict[str, float]:
        live = self.live["gauges"] if self.live else {}
        return {name: live.get(name, 0) for name in GAUGES}

    def histograms(self) -> dict[str, dict[str, Any]]:
        live = self.live["histograms"] if self.live else {}
        return {
            name: _add_histograms(retired, live.get(name))
            for name, retired in self.retired_histograms.items()
        }


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    merged = dict(a)
    for key, value in b.items():
        merged[key] = merged.get(key, 0) + value
    return merged


def _add_histograms(a: dict[str, Any], b: dict[str, Any] | None) -> dict[str, Any]:
    """Bucket-wise sum of two wire-format histograms with the same bounds."""
    if not b:
        return {"counts": list(a["counts"]), "sum": a["sum"]}
    return {
        "counts": [x + y for x, y in zip(a["counts"], b["counts"], strict=True)],
        "sum": a["sum"] + b["sum"],
    }


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
        for index in range(desired):
            self._slots[index] = SlotState(index)

    def set_desired(self, desired: int) -> None:
        with self._lock:
            self._desired = desired
            for index in range(desired):
                self._slots.setdefault(index, SlotState(index))

    def set_generation(self, generation: int) -> None:
        with self._lock:
            self._generation = generation

    def process_started(self, slot: int, pid: int, generation: int) -> None:
        with self._lock:
            state = self._slots.setdefault(slot, SlotState(slot))
            state.pid, state.generation = pid, generation
            state.started_at = time.monotonic()
            state.ready, state.last_report, state.live = False, None, None

    def apply(self, message: Snapshot) -> bool:
        """Take a snapshot from the slot's live process; anything else is ignored."""
        if message.get("v") != WIRE_VERSION or "counters" not in message:
            return False
        with self._lock:
            state = self._slots.get(message["slot"])
            if state is None or state.pid != message["pid"]:
                return False
            if state.live is not None and state.live["seq"] >= message["seq"]:
                return False
            state.live = message
            state.ready = state.ready or bool(message["ready"])
            state.last_report = time.monotonic()
            return True

    def process_exited(self, slot: int, pid: int, reason: str | None) -> None:
        """Fold the dead process's last snapshot into the slot's retired totals.

        ``reason`` is a restart reason, or None when the exit was asked for (stop, scale down).
        """
        with self._lock:
            state = self._slots.get(slot)
            if state is None or state.pid != pid:
                return
            if state.live is not None:
                for name in COUNTERS:
                    state.retired[name] += state.live["counters"].get(name, 0)
                state.retired_labelled = state.labelled()
                for name, hist in state.live["histograms"].items():
                    retired = state.retired_histograms.get(name)
                    state.retired_histograms[name] = (
                        _add_histograms(retired, hist) if retired else _add_histograms(hist, None)
                    )
            state.pid, state.live, state.ready, state.last_report = None, None, False, None
            if reason is not None:
                self._restarts[reason] += 1
                state.restarts += 1

    def view(self) -> View:
        now = time.monotonic()
        with self._lock:
            slots = tuple(
                SlotView(
                    index=state.index,
                    pid=state.pid,
                    alive=state.pid is not None,
                    ready=state.ready,
                    report_age=None if state.last_report is None else now - state.last_report,
                    restarts=state.restarts,
                    counters=state.counters(),
                    gauges=state.gauges(),
                    histograms=state.histograms(),
                    labelled=state.labelled(),
                )
                for state in sorted(self._slots.values(), key=lambda s: s.index)
            )
            return View(self._desired, slots, dict(self._restarts), self._generation)


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
    ok = healthy == view.desired
    return ok, {"status": "ok" if ok else "degraded", "desired": view.desired, "workers": workers}
