"""What OpenTelemetry costs a worker: --otel at 1% and 100% sampling against tracing off, on the
built-in hello and on a Flask JSON app. Not run by CI.

    python -m tests.bench.tracing [--rounds 5] [--seconds 4] [--pinned]
    python -m tests.bench.tracing --instructions [--ratios 0.01]    # needs valgrind, h2load

greenserve x2 per contender, wrk -t1 -c64, interleaved rounds (each round starts one contender
later), requests per server CPU-second and the median ratio to "off" per app. The spans go to an
OTLP/HTTP sink in this process that answers 200 to every export. ``--pinned``: one worker on
CPU 1 and wrk on CPU 0, so the two do not take turns on a core: on this 2-core machine the
unpinned rounds of the same pair of servers spread over 0.78-1.10, which hides a cost of a few
percent.

``--instructions`` counts instead of timing: one worker serving each app under valgrind
(callgrind, following the forkserver's children), its counters zeroed after a warm-up, then
20,000 keep-alive requests from ``h2load --h1 -c16`` and a dump; the worker's instructions per
request, off and at each ratio. The count leaves out the kernel's part of each request, which
tracing does not change, so its ratio is an upper bound of the CPU-time ratio.
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import signal
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path

from tests.bench.run import (
    HTTP_APPS,
    ROOT,
    Contender,
    free_port,
    greenserve_command,
    wait_http,
    wrk_rounds,
)

COUNTED = 20_000


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _h2load(port: int, requests: int) -> None:
    out = subprocess.run(
        ["h2load", "--h1", "-n", str(requests), "-c", "16", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    if f"{requests} succeeded" not in out.stdout:
        raise SystemExit(out.stdout[-1000:])


def worker_instructions(app: str, extra: tuple[str, ...], env: dict[str, str]) -> float:
    """Instructions per request of one worker under callgrind (see the module's docstring)."""
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        argv = [
            "valgrind", "--tool=callgrind", "--trace-children=yes",
            f"--callgrind-out-file={scratch}/cg.%p",
            *greenserve_command(HTTP_APPS[app], *extra, workers=1),
        ]  # fmt: skip
        argv = [part.replace("{port}", str(port)) for part in argv]
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONHASHSEED": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_http(port, timeout=300)
            _h2load(port, 2000)  # warm
            subprocess.run(["callgrind_control", "-z"], capture_output=True, timeout=120)
            _h2load(port, COUNTED)
            subprocess.run(["callgrind_control", "-d"], capture_output=True, timeout=120)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=300)
        # the window's dumps (".1"): the worker's is the one that did the work
        totals = [
            int(found.group(1))
            for dump in Path(scratch).glob("cg.*.1")
            if (found := re.search(r"^summary: (\d+)", dump.read_text(), re.M))
        ]
    return max(totals) / COUNTED


def count_instructions(app: str, settings: dict[str, tuple[str, ...]], env: dict[str, str]) -> None:
    counts = {}
    for name, extra in settings.items():
        counts[name] = worker_instructions(app, extra, env)
        ratio = counts[name] / counts["off"]
        print(f"  {app} {name}: {counts[name]:,.0f} instructions per request ({ratio:.3f} of off)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--apps", default="hello,flask")
    parser.add_argument("--ratios", default="0.01,1", help="--otel-sample-ratio values to run")
    parser.add_argument("--pinned", action="store_true", help="one worker on CPU 1, wrk on CPU 0")
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    args = parser.parse_args()
    pin = ["taskset", "-c", "1"] if args.pinned else []
    workers = 1 if args.pinned else 2
    settings: dict[str, tuple[str, ...]] = {"off": ()}
    for ratio in args.ratios.split(","):
        settings[f"otel {float(ratio):.0%}"] = ("--otel", "--otel-sample-ratio", ratio)
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"}
    if args.instructions:
        for app in args.apps.split(","):
            print(f"{app}: one greenserve worker under callgrind, h2load --h1 -c16")
            count_instructions(app, settings, env)
        sink.shutdown()
        return
    for app in args.apps.split(","):
        contenders = [
            Contender(
                name, [*pin, *greenserve_command(HTTP_APPS[app], *extra, workers=workers)], env
            )
            for name, extra in settings.items()
        ]
        where = ", pinned" if args.pinned else ""
        print(f"{app}: greenserve x{workers}, wrk -t1 -c64{where}")
        cpu = "0" if args.pinned else ""
        results = wrk_rounds(contenders, args.rounds, 64, args.seconds, cpu=cpu)
        off = results["off"]
        for name in list(settings)[1:]:
            ratios = [r / o for o, r in zip(off, results[name], strict=True)]
            print(
                f"  {app} {name}: median {statistics.median(results[name]):,.0f} req/CPU-s against "
                f"{statistics.median(off):,.0f} off; per round "
                + " ".join(f"{r:.3f}" for r in ratios)
                + f" (median {statistics.median(ratios):.3f})"
            )
    sink.shutdown()


if __name__ == "__main__":
    main()
