"""Throughput of 1, 2 and 3 greenserve hosts through HAProxy on this machine, with CPU per
request (servers and HAProxy share the cores with wrk). Needs root (network namespaces), haproxy,
prometheus and wrk:  python -m tests.bench.fleet [--seconds 5]"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.bench.run import wrk
from tests.fleet.test_fleet import running_fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, running_fleet(Path(folder)) as fleet:
        hosts = fleet["hosts"]
        print(f"{'hosts':>5} {'req/s':>9} {'p99 ms':>7} {'CPU ms/req':>10}")
        for count in (3, 2, 1):
            while len([h for h in hosts if h.proc is not None]) > count:
                victim = [h for h in hosts if h.proc is not None][-1]
                victim.kill()
                victim.proc = None
            sessions = [h.proc.pid for h in hosts if h.proc is not None] + fleet["haproxy_pids"]
            run = wrk(fleet["url"], 32, args.seconds, sessions=tuple(sessions))
            rps, p99_ms = run.requests_per_s, run.p99_us / 1000
            per = run.cpu_seconds / (rps * args.seconds) * 1000
            print(f"{count:>5} {rps:>9,.0f} {p99_ms:>7.2f} {per:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
