"""Reading a running server from outside: scrape ``/metrics`` and ``/healthz``, turn them into
per-worker rows. Shared by ``greenserve status`` (one scrape) and ``greenserve top`` (rates from
the difference of two scrapes)."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from greenserve.metrics import catalog

Labels = tuple[tuple[str, str], ...]


class Unreachable(Exception):
    """The metrics endpoint did not answer."""


@dataclass(frozen=True)
class Scrape:
    """One scrape: every sample by (name, labels), the time it was taken, and health."""

    taken: float
    samples: dict[tuple[str, Labels], float]
    healthy: bool | None

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def total(self, name: str) -> float | None:
        """Every sample of a family added up; None when it has none."""
        values = [value for (sample, _), value in self.samples.items() if sample == name]
        return sum(values) if values else None

    def by_worker(self, name: str) -> dict[str, float]:
        return {
            dict(labels)["worker"]: value
            for (sample, labels), value in self.samples.items()
            if sample == name and dict(labels).get("worker") is not None and len(labels) == 1
        }

    def buckets(self, name: str, worker: str | None) -> list[tuple[float, float]]:
        """Cumulative (upper bound, count) pairs for one worker, or summed over all workers."""
        summed: dict[float, float] = {}
        for (sample, labels), value in self.samples.items():
            found = dict(labels)
            if sample != name + "_bucket" or (worker is not None and found.get("worker") != worker):
                continue
            bound = float(found["le"])
            summed[bound] = summed.get(bound, 0.0) + value
        return sorted(summed.items())


def fetch(metrics_url: str, timeout: float = 3.0) -> Scrape:
    """Scrape ``metrics_url`` and the ``/healthz`` beside it."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as response:
            text = response.read().decode()
    except (OSError, ValueError) as exc:
        raise Unreachable(f"{metrics_url}: {_reason(exc)}") from None
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    health_url = urllib.parse.urljoin(metrics_url, "/healthz")
    try:
        with urllib.request.urlopen(health_url, timeout=timeout) as response:
            healthy: bool | None = response.status == 200
    except urllib.error.HTTPError as exc:
        healthy = False if exc.code == 503 else None
    except OSError:
        healthy = None
    return Scrape(time.monotonic(), samples, healthy)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(getattr(reason, "strerror", None) or reason)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets (linear within a bucket)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            width = count - previous_count
            share = (rank - previous_count) / width if width else 0.0
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


def _delta_buckets(
    now: list[tuple[float, float]], before: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    old = dict(before)
    return [(bound, max(0.0, count - old.get(bound, 0.0))) for bound, count in now]


@dataclass
class WorkerRow:
    """What ``top`` and ``status`` show for one worker slot (rates are per second)."""

    worker: str
    pid: int | None
    state: str
    active: float
    in_flight: float
    upgraded: float  # connections taken over after an Upgrade (WebSockets), every kind
    accepted: float
    requests: float | None
    bytes_in: float
    bytes_out: float
    rss: float
    restarts: float
    accepted_per_s: float | None = None
    requests_per_s: float | None = None
    bytes_in_per_s: float | None = None
    bytes_out_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    loop_lag_p99_ms: float | None = None
    blocked: float | None = None


@dataclass
class Summary:
    """A server at one moment: master facts, a row per worker, and totals."""

    url: str
    healthy: bool | None
    uptime_seconds: float | None
    generation: int | None
    workers_desired: int | None
    workers_alive: int | None
    listen_queue: float | None = None  # connections waiting in the accept queues now
    workers: list[WorkerRow] = field(default_factory=list)
    totals: WorkerRow | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _rate(now: float | None, before: float | None, seconds: float) -> float | None:
    if now is None or before is None or seconds <= 0:
        return None
    return max(0.0, now - before) / seconds


def _requests(scrape: Scrape, worker: str | None) -> float | None:
    values = [
        value
        for (name, labels), value in scrape.samples.items()
        if name == catalog.sample("http_requests")
        and (worker is None or dict(labels).get("worker") == worker)
    ]
    return sum(values) if values else None


def summarize(url: str, now: Scrape, before: Scrape | None = None) -> Summary:
    """Rows from one scrape; with an earlier one, per-second rates and interval quantiles."""
    seconds = now.taken - before.taken if before else 0.0
    start = now.value("process_start_time_seconds")
    summary = Summary(
        url=url,
        healthy=now.healthy,
        uptime_seconds=time.time() - start if start else None,
        generation=_int(now.value(catalog.sample("generation"))),
        workers_desired=_int(now.value(catalog.sample("workers_desired"))),
        workers_alive=_int(now.value(catalog.sample("workers_alive"))),
        listen_queue=now.total(catalog.sample("listen_queue")),
    )
    pids = now.by_worker(catalog.sample("worker_pid"))
    ready = now.by_worker(catalog.sample("worker_ready"))
    desired = summary.workers_desired
    if desired is not None:
        # TTOU removes the highest slots; their counters stay on /metrics (monotonic totals),
        # but a retired slot with no process is not a worker that is down.
        pids = {w: pid for w, pid in pids.items() if pid or int(w) < desired}
        ready = {w: value for w, value in ready.items() if w in pids}
    for worker in sorted(pids, key=int):
        summary.workers.append(_row(worker, now, before, seconds, pids, ready))
    summary.totals = _row(None, now, before, seconds, pids, ready)
    return summary


def _row(
    worker: str | None,
    now: Scrape,
    before: Scrape | None,
    seconds: float,
    pids: dict[str, float],
    ready: dict[str, float],
) -> WorkerRow:
    def counter(scrape: Scrape | None, name: str) -> float | None:
        if scrape is None:
            return None
        values = scrape.by_worker(name)
        if worker is not None:
            return values.get(worker)
        return sum(values.values()) if values else None

    names = {
        "active": catalog.sample("connections_active"),
        "in_flight": catalog.sample("http_requests_in_flight"),
        "upgraded": catalog.sample("upgraded_connections_active"),
        "accepted": catalog.sample("connections_accepted"),
        "bytes_in": catalog.sample("bytes_received"),
        "bytes_out": catalog.sample("bytes_sent"),
        "rss": catalog.sample("worker_resident_memory_bytes"),
        "restarts": catalog.sample("slot_restarts"),
    }
    values = {key: counter(now, name) or 0.0 for key, name in names.items()}
    if worker is None:
        pid, state = None, f"{sum(ready.values()):.0f}/{len(pids)} ready"
    else:
        pid = int(pids[worker]) or None
        state = "ready" if ready.get(worker) else ("starting" if pid else "down")
    row = WorkerRow(
        worker=worker or "total", pid=pid, state=state, requests=_requests(now, worker), **values
    )
    row.blocked = counter(now, catalog.sample("event_loop_blocked"))
    if before is None:
        return row
    row.accepted_per_s = _rate(values["accepted"], counter(before, names["accepted"]), seconds)
    row.bytes_in_per_s = _rate(values["bytes_in"], counter(before, names["bytes_in"]), seconds)
    row.bytes_out_per_s = _rate(values["bytes_out"], counter(before, names["bytes_out"]), seconds)
    row.requests_per_s = _rate(row.requests, _requests(before, worker), seconds)
    for attr, name, q in (
        ("p50_ms", catalog.sample("http_request_duration_seconds"), 0.5),
        ("p99_ms", catalog.sample("http_request_duration_seconds"), 0.99),
        ("loop_lag_p99_ms", catalog.sample("event_loop_lag_seconds"), 0.99),
    ):
        delta = _delta_buckets(now.buckets(name, worker), before.buckets(name, worker))
        value = quantile(q, delta)
        setattr(row, attr, None if value is None else value * 1000)
    return row
