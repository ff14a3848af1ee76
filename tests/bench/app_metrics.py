"""The app's own metrics: what a scrape costs the master, and what a counter per request costs
a worker. Not run by CI.

    python -m tests.bench.app_metrics [--rounds 5] [--seconds 4]

1. Scrape: the master's merge and exposition of W workers x 1,000 app series, in process (all
   counters, then a fifth of them per-worker gauges, which multiply the output by W).
2. Per request: greenserve x2 serving hello, the same app incrementing a prometheus_client
   Counter per request (merged by the master), and the same with the Counter made on
   prometheus_client's MutexValue (what a worker used before greenserve._appvalue); wrk -t1
   -c64, interleaved rounds, requests per server CPU-second, and the ratios to hello.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from greenserve.metrics.aggregate import Aggregator
from greenserve.metrics.appstats import Spec
from greenserve.metrics.metrics import build_app, build_registry
from tests.bench.run import Contender, free_port, greenserve_command, rotated, started, wait_http
from tests.bench.run import wrk as run_wrk

APPS = "tests.bench.servers.counted"
OPENMETRICS = "application/openmetrics-text;version=1.0.0"  # what Prometheus asks for first


def scrape_ms(workers: int, series: int, gauge_share: float, accept: str = "") -> tuple[float, int]:
    """Best of 5 scrapes of the master's /metrics endpoint, and the number of lines."""
    gc.collect()  # a master holds one aggregator: not the garbage of the cases before this one
    aggregator = Aggregator()
    gauges = int(series * gauge_share)
    families = {
        "app_requests": tuple(vars(Spec("counter", "R.", ("route",), "all", ())).values()),
        "app_level": tuple(vars(Spec("gauge", "G.", ("key",), "all", ())).values()),
    }
    for slot in range(workers):
        values = {
            ("app_requests", "app_requests_total", (("route", f"/r{n}"),)): float(n)
            for n in range(series - gauges)
        }
        values.update(
            {("app_level", "app_level", (("key", f"k{n}"),)): float(n) for n in range(gauges)}
        )
        aggregator._app.apply(slot, 1000 + slot, {"families": families, "series": values})
    app = build_app(build_registry(aggregator), aggregator, lambda: None)
    environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "HTTP_ACCEPT": accept}
    best, lines = float("inf"), 0
    for _ in range(5):
        started_at = time.perf_counter()
        body = b"".join(app(environ, lambda status, headers: None))
        best = min(best, time.perf_counter() - started_at)
        lines = len(body.splitlines())
    return best * 1000, lines


def per_request(rounds: int, seconds: float) -> dict[str, list[float]]:
    contenders = [
        Contender("hello", greenserve_command("tests.bench.servers.counted:plain")),
        Contender(
            "hello + Counter.inc()", greenserve_command("tests.bench.servers.counted:counted")
        ),
        Contender(
            "the same on MutexValue",
            greenserve_command("tests.bench.servers.counted:mutex_counted"),
        ),
    ]
    results: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_index in range(rounds):
        for contender in rotated(contenders, round_index):
            port = free_port()
            with started(contender, port) as proc:
                wait_http(port)
                run = run_wrk(f"http://127.0.0.1:{port}/", 64, seconds, sessions=(proc.pid,))
            results[contender.name].append(run.per_cpu_s)
            print(
                f"  round {round_index + 1} {contender.name:24s} {run.per_cpu_s:>9,.0f} req/CPU-s"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--scrape-only", action="store_true")
    args = parser.parse_args()
    print(f"Scrape, {args.workers} workers x 1,000 app series")
    for share in (0.0, 0.2, 1.0):
        for accept in ("", OPENMETRICS):
            took, lines = scrape_ms(args.workers, 1000, share, accept)
            shown = "OpenMetrics" if accept else "text"
            print(f"  {share:.0%} per-worker gauges, {shown}: {took:.1f} ms, {lines:,} lines")
    if args.scrape_only:
        return
    print("Per request: greenserve x2, wrk -t1 -c64")
    results = per_request(args.rounds, args.seconds)
    plain = results["hello"]
    print(f"median req/CPU-s: hello {statistics.median(plain):,.0f}")
    for name in ("hello + Counter.inc()", "the same on MutexValue"):
        counted = results[name]
        ratios = [c / p for p, c in zip(plain, counted, strict=True)]
        print(
            f"  {name}: {statistics.median(counted):,.0f}; per round against hello "
            + " ".join(f"{r:.3f}" for r in ratios)
            + f" (median {statistics.median(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
