"""The app's own metrics from every worker, merged exactly by the master (stdlib only).

Per worker process the master keeps the latest value of each series (rebuilt from the deltas
of appstats.py); a process that exits folds its counter-like series (counters, histogram
buckets, counts and sums, summary counts and sums) into retired totals, like the aggregator
does for greenserve's own counters. So a counter is retired + the live processes' values: it
never goes down when a worker is recycled, crashes, is scaled down or replaced by a reload.

Gauges follow the mode the app gave them, spelled as prometheus_client's ``multiprocess_mode``:
``all``/``liveall`` (the default): one series per worker slot, labelled ``worker``;
``sum``/``livesum``, ``max``/``livemax``, ``min``/``livemin``: over the live processes;
``mostrecent``/``livemostrecent``: the value most recently changed. Only live processes count
in every mode: a dead process's gauge describes nothing that exists (the "live" prefix is what
prometheus_client needs to forget dead pids' files; here nothing remains to forget).

A family is defined by the first process that reports it. A later one with another type,
other label names, other histogram buckets or a name that is greenserve's own is rejected,
counted by reason and reported once (``take_events``); it never reaches /metrics.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from greenserve.metrics.appstats import Key, Spec
from greenserve.metrics.catalog import BY_NAME

COUNTER_LIKE = frozenset(("counter", "histogram", "summary", "gaugehistogram"))
REJECT_REASONS = BY_NAME["app_series_rejected"].seeded
RESERVED_PREFIX = "greenserve_"
_SUM = {"sum", "livesum"}
_MAX = {"max", "livemax"}
_MIN = {"min", "livemin"}
_RECENT = {"mostrecent", "livemostrecent"}
Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]


@dataclass
class Process:
    """One live worker process's series."""

    slot: int
    values: dict[Key, float] = field(default_factory=dict)
    changed: dict[Key, int] = field(default_factory=dict)  # tick of each series' last change
    specs: dict[str, Spec] = field(default_factory=dict)  # its families that were accepted
    refused: dict[str, str] = field(default_factory=dict)  # its families rejected, and why
    refused_series: set[Key] = field(default_factory=set)
    # A per-worker gauge's labels with this process's slot, kept between scrapes: building and
    # sorting them anew was two thirds of a scrape of 64 workers' 1,000 gauges each.
    shown: dict[Key, Labels] = field(default_factory=dict)

    def labelled(self, key: Key) -> Labels:
        """``key``'s labels and the ``worker`` label of this process's slot, sorted."""
        labels = self.shown.get(key)
        if labels is None:
            labels = self.shown[key] = _with_slot(key[2], self.slot)
        return labels


@dataclass(frozen=True)
class MergedFamily:
    name: str
    kind: str
    help: str
    samples: tuple[Sample, ...]  # labels sorted


class AppMetrics:
    """Not thread-safe on its own: the Aggregator calls it under its lock."""

    def __init__(self) -> None:
        self.specs: dict[str, Spec] = {}
        self.live: dict[int, Process] = {}
        self.retired: dict[Key, float] = {}
        self.inherited: dict[Key, float] = {}  # the previous master's totals (USR2)
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self._reported: set[tuple[str, str]] = set()
        self._events: list[dict[str, Any]] = []
        self._tick = 0

    def apply(self, slot: int, pid: int, wire: dict[str, Any]) -> None:
        """One process's delta (``AppDelta.to_wire``), in the order it was sent."""
        self._tick += 1
        process = self.live.setdefault(pid, Process(slot))
        for name, fields in wire.get("families", {}).items():
            spec = Spec(*fields)
            reason = self._conflict(name, spec)
            if reason is None:
                process.specs[name] = spec
                process.refused.pop(name, None)
            else:
                process.specs.pop(name, None)
                process.refused[name] = reason
                self._report(name, reason, pid, spec)
        accepted = process.specs
        for key, value in wire.get("series", {}).items():
            if key[0] in accepted:
                process.values[key] = value
                process.changed[key] = self._tick
            elif key not in process.refused_series:  # each series counted once
                process.refused_series.add(key)
                self.rejected[process.refused.get(key[0], "type")] += 1
        for key in wire.get("removed", ()):
            process.values.pop(key, None)
            process.changed.pop(key, None)
            process.shown.pop(key, None)

    def exited(self, pid: int) -> None:
        """Fold a dead process's counter-like series into the retired totals."""
        process = self.live.pop(pid, None)
        if process is None:
            return
        for key, value in process.values.items():
            spec = self.specs.get(key[0])
            if spec is not None and spec.kind in COUNTER_LIKE:
                self.retired[key] = self.retired.get(key, 0.0) + value

    def totals(self) -> dict[str, Any]:
        """The counter-like totals (retired, inherited and live) with their families, for the
        master that replaces this one (USR2): its counters go on from here."""
        counters = dict(self.inherited)
        for source in (self.retired, *(p.values for p in self.live.values())):
            for key, value in source.items():
                spec = self.specs.get(key[0])
                if spec is not None and spec.kind in COUNTER_LIKE:
                    counters[key] = counters.get(key, 0.0) + value
        specs = {name: tuple(vars(spec).values()) for name, spec in self.specs.items()}
        return {"specs": specs, "counters": counters}

    def inherit(self, totals: dict[str, Any]) -> None:
        """The previous master's latest totals (they grow while its workers drain)."""
        for name, fields in totals.get("specs", {}).items():
            self.specs.setdefault(name, Spec(*fields))
        self.inherited = dict(totals.get("counters", {}))

    def take_events(self) -> list[dict[str, Any]]:
        """What to log since the last call (each rejection once per family and reason)."""
        events, self._events = self._events, []
        return events

    def families(self) -> list[MergedFamily]:
        """Every accepted family, merged, for a scrape."""
        specs = self.specs
        counter_like = {name for name, spec in specs.items() if spec.kind in COUNTER_LIKE}
        per_worker = {name for name, spec in specs.items() if _per_worker(spec)}
        counters: dict[Key, float] = dict(self.retired)
        for key, value in self.inherited.items():
            counters[key] = counters.get(key, 0.0) + value
        samples: dict[str, list[Sample]] = {}
        gauges: dict[Key, list[tuple[int, int, float]]] = {}  # key -> (slot, tick, value)
        processes = sorted(self.live.values(), key=lambda process: process.slot)
        sharing = {p.slot for p, q in itertools.pairwise(processes) if p.slot == q.slot}
        for process in processes:
            slot, changed, labelled = process.slot, process.changed, process.labelled
            alone = slot not in sharing  # else a hand-over: the newer value per series
            for key, value in process.values.items():
                name = key[0]
                if name in counter_like:
                    counters[key] = counters.get(key, 0.0) + value
                elif alone and name in per_worker:  # most of a scrape's lines, straight out
                    samples.setdefault(name, []).append((key[1], labelled(key), value))
                elif name in specs:
                    gauges.setdefault(key, []).append((slot, changed.get(key, 0), value))
        for (name, sample, labels), value in counters.items():
            samples.setdefault(name, []).append((sample, labels, value))
        for (name, sample, labels), found in gauges.items():
            mode = specs[name].mode
            samples.setdefault(name, []).extend(_gauge(mode, sample, labels, found))
        return [
            MergedFamily(name, spec.kind, spec.help, tuple(samples.get(name, ())))
            for name, spec in sorted(self.specs.items())
        ]

    def _conflict(self, name: str, spec: Spec) -> str | None:
        if name.startswith(RESERVED_PREFIX):
            return "reserved"
        if _per_worker(spec) and "worker" in spec.labels:
            return "worker_label"  # ours: the slot of each per-worker series
        known = self.specs.get(name)
        if known is None:
            self.specs[name] = spec
            return None
        if known.kind != spec.kind:
            return "type"
        if known.labels and spec.labels and known.labels != spec.labels:
            return "labels"
        if known.buckets and spec.buckets and known.buckets != spec.buckets:
            return "buckets"
        if (not known.labels and spec.labels) or (not known.buckets and spec.buckets):
            self.specs[name] = spec  # a family first seen without series: now complete
        return None

    def _report(self, name: str, reason: str, pid: int, spec: Spec) -> None:
        if (name, reason) in self._reported:
            return
        self._reported.add((name, reason))
        known = self.specs.get(name)
        self._events.append(
            {
                "event": "app_metric_rejected",
                "metric": name,
                "reason": reason,
                "pid": pid,
                "got": _shown(spec),
                "kept": None if known is None else _shown(known),
            }
        )


def _shown(spec: Spec) -> dict[str, Any]:
    return {"type": spec.kind, "labels": list(spec.labels), "buckets": list(spec.buckets)}


def _per_worker(spec: Spec) -> bool:
    """A gauge shown per worker slot (prometheus_client's default mode, ``all``)."""
    return spec.kind not in COUNTER_LIKE and spec.mode in ("all", "liveall")


def _with_slot(labels: Labels, slot: int) -> Labels:
    return tuple(sorted((*labels, ("worker", str(slot)))))


def _gauge(
    mode: str, sample: str, labels: Labels, found: list[tuple[int, int, float]]
) -> list[Sample]:
    """One gauge series' samples from the live processes' (slot, tick, value)."""
    if mode in _SUM:
        return [(sample, labels, sum(value for _, _, value in found))]
    if mode in _MAX:
        return [(sample, labels, max(value for _, _, value in found))]
    if mode in _MIN:
        return [(sample, labels, min(value for _, _, value in found))]
    if mode in _RECENT:
        return [(sample, labels, max(found, key=lambda item: item[1])[2])]
    # all / liveall: per slot; a slot's two processes during a hand-over show the newer value
    by_slot: dict[int, tuple[int, float]] = {}
    for slot, tick, value in found:
        if slot not in by_slot or tick >= by_slot[slot][0]:
            by_slot[slot] = (tick, value)
    return [
        (sample, _with_slot(labels, slot), value) for slot, (_, value) in sorted(by_slot.items())
    ]
