"""What OpenTelemetry costs a worker: --otel at 1% and 100% sampling against tracing off, on the
built-in hello and on a Flask JSON app. Not run by CI.

    python -m tests.bench.tracing [--rounds 5] [--seconds 4] [--pinned]

greenserve x2 per contender, wrk -t1 -c64, interleaved rounds (each round starts one contender
later), requests per server CPU-second and the median ratio to "off" per app. The spans go to an
OTLP/HTTP sink in this process that answers 200 to every export. ``--pinned``: one worker on
CPU 1 and wrk on CPU 0, so the two do not take turns on a core: on this 2-core machine the
unpinned rounds of the same pair of servers spread over 0.78-1.10, which hides a cost of a few
percent.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import threading

from tests.bench.run import HTTP_APPS, Contender, greenserve_command, wrk_rounds


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--apps", default="hello,flask")
    parser.add_argument("--ratios", default="0.01,1", help="--otel-sample-ratio values to run")
    parser.add_argument("--pinned", action="store_true", help="one worker on CPU 1, wrk on CPU 0")
    args = parser.parse_args()
    pin = ["taskset", "-c", "1"] if args.pinned else []
    workers = 1 if args.pinned else 2
    settings: dict[str, tuple[str, ...]] = {"off": ()}
    for ratio in args.ratios.split(","):
        settings[f"otel {float(ratio):.0%}"] = ("--otel", "--otel-sample-ratio", ratio)
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"}
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
