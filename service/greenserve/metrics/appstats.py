"""The app's own prometheus_client metrics, read in the worker once per stats interval.

Worker side, stdlib only at import: prometheus_client is looked up in ``sys.modules`` (the
forkserver preloads it, see preload.py), and a snapshot carries the app's part only when
something changed, so an app that registers nothing costs a walk of three collectors it skips
once per interval. Each interval the default registry is
collected (the app's collectors; not prometheus_client's process, GC and platform collectors,
which describe one process), and only the series whose value changed since the last delivered
snapshot travel to the master (``AppDelta``). A snapshot the queue refused is not delivered:
the next delta is taken against what the master has, so nothing is lost (``commit``).

A series is keyed ``(family, sample name, labels)``; a family travels as its ``Spec`` the first
time and whenever it changes. ``_created`` samples are left out: a sum over processes has no
single creation time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str, tuple[tuple[str, str], ...]]

# Where a family's samples put its buckets and quantiles: not labels the app chose.
STRUCTURAL_LABELS = frozenset(("le", "quantile"))
_DEFAULT_COLLECTORS = ("PROCESS_COLLECTOR", "GC_COLLECTOR", "PLATFORM_COLLECTOR")


@dataclass(frozen=True)
class Spec:
    """What must agree across workers for a family's series to add up."""

    kind: str  # prometheus_client's type: counter, gauge, histogram, summary, info, ...
    help: str
    labels: tuple[str, ...]  # label names the app chose, sorted
    mode: str  # a Gauge's multiprocess_mode ("all" for the rest)
    buckets: tuple[str, ...] = ()  # a histogram's "le" bounds


@dataclass
class AppDelta:
    """What changed since the last delivered snapshot; a dict of primitives on the wire."""

    families: dict[str, Spec] = field(default_factory=dict)
    series: dict[Key, float] = field(default_factory=dict)
    removed: list[Key] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "families": {name: tuple(vars(spec).values()) for name, spec in self.families.items()},
            "series": self.series,
            "removed": self.removed,
        }


class AppMetricsReader:
    """Reads the app's registry and keeps what the master was last sent."""

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self.sent: dict[Key, float] = {}
        self.specs: dict[str, Spec] = {}
        self.capped = 0  # series left out by the last read (over max_series)
        self.failures = 0  # collectors that raised
        self._pending: tuple[dict[Key, float], dict[str, Spec]] | None = None

    def delta(self) -> AppDelta | None:
        """The change since the last ``commit``; None when there is none (or no
        prometheus_client at all)."""
        client = sys.modules.get("prometheus_client")
        if client is None:
            return None
        values, specs = self._read(client)
        delta = AppDelta(
            families={name: spec for name, spec in specs.items() if self.specs.get(name) != spec},
            series={key: value for key, value in values.items() if self.sent.get(key) != value},
            removed=[key for key in self.sent if key not in values],
        )
        if not (delta.families or delta.series or delta.removed):
            return None
        self._pending = (values, specs)
        return delta

    def commit(self) -> None:
        """The last delta reached the queue: take it as what the master has."""
        if self._pending is not None:
            self.sent, self.specs = self._pending
            self._pending = None

    def _read(self, client: Any) -> tuple[dict[Key, float], dict[str, Spec]]:
        registry = client.REGISTRY
        skip = {id(getattr(client, name, None)) for name in _DEFAULT_COLLECTORS}
        # The registry's own list (a private attribute, stable since prometheus_client 0.4):
        # collect() of the registry would not say which Gauge each family came from.
        with registry._lock:
            collectors = list(registry._collector_to_names)
        values: dict[Key, float] = {}
        specs: dict[str, Spec] = {}
        capped = 0
        for collector in collectors:
            if id(collector) in skip:
                continue
            mode = getattr(collector, "_multiprocess_mode", "all")
            try:
                families = list(collector.collect())
            except Exception:  # an app's custom collector failing must not stop the worker
                self.failures += 1
                continue
            for family in families:
                labels: set[str] = set()
                buckets: list[str] = []
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                    if key not in values and len(values) >= self.max_series:
                        capped += 1
                        continue
                    values[key] = float(sample.value)
                    labels.update(sample.labels)
                    bound = sample.labels.get("le")
                    if bound is not None and bound not in buckets:
                        buckets.append(bound)
                specs[family.name] = Spec(
                    family.type,
                    family.documentation,
                    tuple(sorted(labels - STRUCTURAL_LABELS)),
                    _mode(family.type, mode),
                    tuple(buckets),
                )
        self.capped = capped
        return values, specs


def _mode(kind: str, mode: str) -> str:
    """How the master merges a family's series that are not counters (see appmerge.py)."""
    if kind == "gauge":
        return mode
    if kind in ("info", "stateset"):
        return "max"  # the same facts in every worker: shown once
    return "all"
