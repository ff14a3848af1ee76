"""A request per connection (``Connection: close``, as nginx's proxy_pass speaks to an upstream
by default): hello world against gunicorn's gevent worker and granian. Not run by CI.

    python -m tests.bench.closing [--rounds 5] [--seconds 4] [--baseline DIR]

One worker each on CPU 1 (taskset), ``wrk -t1 -c32 -H "Connection: close"`` on CPU 0, so every
request opens and closes a connection. Interleaved rounds (each starts one contender later);
requests per server CPU-second (user and system time of the server's processes), the median
per contender and greenserve's per-round ratio to each of the others. ``--baseline DIR``: another
checkout of greenserve (a git worktree) as one more contender.
"""

from __future__ import annotations

import shutil
import statistics
import sys

from tests.bench import run
from tests.bench.run import Contender, wrk_rounds

APP = "greenserve.worker.apps:hello"
PIN = ["taskset", "-c", "1"]


def contenders() -> list[Contender]:
    greenserve = [
        *PIN, sys.executable, "-m", "greenserve", APP, "--protocol", "http", "-w", "1",
        "--bind", "127.0.0.1:{port}", "--metrics-bind", "127.0.0.1:0", "--log-level", "warning",
        "--log-format", "json",
    ]  # fmt: skip
    found = [Contender("greenserve", greenserve)]
    found += run.baseline_contenders("greenserve", greenserve)
    gunicorn = [
        *PIN, sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gevent", "-b",
        "127.0.0.1:{port}", "--log-level", "warning", APP,
    ]  # fmt: skip
    found.append(Contender("gunicorn -k gevent", gunicorn))
    granian = shutil.which("granian")
    if granian:
        argv = [
            *PIN, granian, "--interface", "wsgi", "--workers", "1", "--host", "127.0.0.1",
            "--port", "{port}", "--no-log", APP,
        ]  # fmt: skip
        found.append(Contender("granian", argv))
    return found


def main() -> None:
    args = run.parse_bench(run.bench_arguments(__doc__))
    everyone = contenders()
    print('hello, one worker on CPU 1, wrk -t1 -c32 -H "Connection: close" on CPU 0')
    results = wrk_rounds(
        everyone, args.rounds, 32, args.seconds, "-H", "Connection: close", cpu="0"
    )
    ours = results["greenserve"]
    for name, values in results.items():
        line = f"{name:22s} median {statistics.median(values):>9,.0f} req/CPU-s"
        if name != "greenserve":
            ratios = [a / b for a, b in zip(ours, values, strict=True)]
            line += (
                f"; greenserve's ratio {statistics.median(ratios):.2f}x (rounds "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + ")"
            )
        print(line)


if __name__ == "__main__":
    main()
