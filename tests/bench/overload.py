"""Overload, open loop: goodput and answers at 1x, 2x and 3x a server's capacity. Not run by CI.

    python -m tests.bench.overload [--seconds 8]

One worker on CPU 1 (taskset), the load generator (tests/bench/openloop.py) on CPU 0, an app
that spends 2 ms of CPU per request. Capacity is measured first with wrk (closed loop, 16
connections; greenserve's limited variants are offered the figure of the same server without
a limit); then each contender gets 0.5x (the unloaded p99), 1x, 2x and 3x of it, one new
connection per request, every request carrying X-Request-Start. The table: successful answers
per second, 503s, requests that got no answer (timeouts, resets), p99 of the successes, and the
server's RSS after each step.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

from tests.bench.run import Contender, free_port, started, wait_http

APP = "tests.bench.servers.cpu_app:app"
GENERATOR = ["taskset", "-c", "0", sys.executable, "-m", "tests.bench.openloop"]


def greenserve(*extra: str) -> list[str]:
    return [
        "taskset", "-c", "1", sys.executable, "-m", "greenserve", APP, "-w", "1",
        "--bind", "127.0.0.1:{port}", "--metrics-bind", "127.0.0.1:0", "--log-level", "warning",
        "--log-format", "json", "--backlog", "2048", *extra,
    ]  # fmt: skip


PEERS = [
    Contender(
        "gunicorn -k gevent",
        ["taskset", "-c", "1", sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gevent",
         "-b", "127.0.0.1:{port}", "--log-level", "warning", "--backlog", "2048", APP],
    ),
    Contender(
        "granian (backpressure 64)",
        ["taskset", "-c", "1", "granian", "--interface", "wsgi", "--workers", "1", "--host",
         "127.0.0.1", "--port", "{port}", "--no-log", "--backpressure", "64", APP],
    ),
]  # fmt: skip
LIMITS = "0.005,0.002"  # --max-queue-time values run beside the server without a limit


def contenders(limits: str) -> list[Contender]:
    """greenserve without a limit first (its capacity is the one its variants are offered)."""
    return [Contender("greenserve, no limit", greenserve())] + [
        Contender(f"greenserve --max-queue-time {limit}", greenserve("--max-queue-time", limit))
        for limit in limits.split(",")
    ]


def capacity(port: int) -> float:
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c16", "-d3", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Only successes: under a queue-time limit wrk's own 16 connections may be shed, and a 503
    # counted as capacity offered the open loop four times what the server can do.
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate * (total - int(failed.group(1))) / total if failed else rate


def openloop(port: int, rate: float, seconds: float) -> dict:
    out = subprocess.run(
        [*GENERATOR, f"http://127.0.0.1:{port}/", str(rate), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _ms(value: float | None) -> float:
    return float("nan") if value is None else value


def rss_mb(pid: int) -> float:
    total = 0
    for child in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{child}/statm") as handle:
                total += int(handle.read().split()[1]) * 4096
        except OSError:
            pass
    return total / 1e6


def _children(pid: int) -> list[int]:
    found = []
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    for line in out.stdout.split():
        found.append(int(line))
        found += _children(int(line))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--peers", action="store_true", help="gunicorn and granian too")
    parser.add_argument("--limits", default=LIMITS, help="--max-queue-time values to run")
    args = parser.parse_args()
    print(
        f"{'server':34s} {'load':>5s} {'offered/s':>9s} {'ok/s':>7s} {'503':>6s} "
        f"{'no answer':>9s} {'p99 ms':>8s} {'503 p99':>8s} {'RSS MB':>7s}"
    )
    greenserve_peak = 0.0
    ours = contenders(args.limits)
    for contender in [*ours, *(PEERS if args.peers else [])]:
        port = free_port()
        with started(contender, port) as proc:
            wait_http(port)
            # A limit sheds part of wrk's own closed loop (16 first requests at once): the same
            # server without a limit has measured the capacity its variants are offered.
            limited = contender in ours[1:]
            peak = greenserve_peak if limited else capacity(port)
            if contender is ours[0]:
                greenserve_peak = peak
            for load in (0.5, 1, 2, 3):
                result = openloop(port, peak * load, args.seconds)
                statuses = result["statuses"]
                lost = result["sent"] - statuses.get("200", 0) - statuses.get("503", 0)
                p99 = result["p99_ms"]
                ok = result["ok_per_s"]
                print(
                    f"{contender.name:34s} {load:>4g}x {peak * load:>9.0f} {ok:>7.0f}"
                    f" {statuses.get('503', 0):>6d} {lost:>9d}"
                    f" {_ms(p99):>8.1f} {_ms(result['shed_p99_ms']):>8.1f}"
                    f" {rss_mb(proc.pid):>7.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
