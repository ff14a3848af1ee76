"""Pipelined HTTP/1.1: hello with wrk sending 16 requests per write, against the same server
unpipelined, and granian the same way. Not run by CI.

    python -m tests.bench.pipeline [--rounds 3] [--seconds 4] [--depth 16]

Two workers each, wrk -t1 -c64, interleaved rounds, requests per server CPU-second (medians).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from tests.bench.run import Contender, free_port, greenserve_command, rotated, started, wait_http
from tests.bench.run import wrk as run_wrk

HELLO = "greenserve.worker.apps:hello"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--depth", type=int, default=16)
    args = parser.parse_args()
    servers = [Contender("greenserve x2", greenserve_command(HELLO))]
    granian = shutil.which("granian")
    if granian:
        servers.append(
            Contender(
                "granian x2",
                [granian, "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1",
                 "--port", "{port}", "--no-log", HELLO],
            )
        )  # fmt: skip
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "pipeline.lua")
        script.write_text(
            "init = function(args)\n  local r = {}\n"
            f'  for i = 1, {args.depth} do r[i] = wrk.format(nil, "/") end\n'
            "  req = table.concat(r)\nend\nrequest = function() return req end\n"
        )
        for round_index in range(args.rounds):
            for contender in rotated(servers, round_index):
                for mode, extra in (("plain", ()), (f"depth {args.depth}", ("-s", str(script)))):
                    port = free_port()
                    with started(contender, port) as proc:
                        wait_http(port)
                        run = run_wrk(
                            f"http://127.0.0.1:{port}/", 64, args.seconds, *extra,
                            sessions=(proc.pid,),
                        )  # fmt: skip
                    name = f"{contender.name} {mode}"
                    results.setdefault(name, []).append(run.per_cpu_s)
                    print(f"  round {round_index + 1} {name:28s} {run.requests_per_s:>10,.0f} "
                          f"req/s {run.per_cpu_s:>10,.0f} req/CPU-s", flush=True)  # fmt: skip
    print("medians, requests per server CPU-second:")
    for name, samples in results.items():
        print(f"  {name:28s} {statistics.median(samples):>10,.0f}")
    for contender in servers:
        plain = statistics.median(results[f"{contender.name} plain"])
        deep = statistics.median(results[f"{contender.name} depth {args.depth}"])
        print(f"{contender.name}: pipelined / plain {deep / plain:.2f}x")


if __name__ == "__main__":
    main()
