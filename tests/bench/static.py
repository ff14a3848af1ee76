"""Static files (10 KB each unless --size) served by greenserve --static, by WhiteNoise inside
greenserve, by granian's --static-path-mount, and by nginx (sendfile and its open file cache:
what a C server reaches, against which the Python servers' ratios can be read). Also a bare
gevent handler in greenserve that only reads, stats and sends a response made at start
(servers/bare_static.py): the floor of the design, what no HTTP layer in a gevent worker can
beat. Not run by CI.

    python -m tests.bench.static [--rounds 5] [--seconds 4] [--files 100] [--size 10240]
                                 [--baseline DIR]

Two workers each; wrk -t1 -c64 cycles over the files (a Lua script) on keep-alive connections;
interleaved rounds; requests per server CPU-second (the servers' CPU from /proc, wrk's not), and
greenserve's ratio to each. The files are random bytes (nothing compresses them in transit).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.bench.run import (
    Contender,
    baseline_contenders,
    bench_arguments,
    exec_nginx,
    free_port,
    greenserve_command,
    parse_bench,
    rotated,
    started,
)
from tests.bench.run import wrk as run_wrk
from tests.helpers import wait_until

HELLO = "greenserve.worker.apps:hello"


def contenders(root: Path) -> list[Contender]:
    ours = greenserve_command(HELLO, "--static", f"/static={root}")
    found = [
        Contender("greenserve --static", ours),
        *baseline_contenders("greenserve --static", ours),
        Contender(
            "bare gevent handler (floor)",
            greenserve_command("tests.bench.servers.bare_static:handle", "--protocol", "tcp"),
            {"BENCH_STATIC_ROOT": str(root)},
        ),
        Contender(
            "WhiteNoise in greenserve",
            greenserve_command("tests.bench.servers.whitenoise_app:app"),
            {"BENCH_STATIC_ROOT": str(root)},
        ),
    ]
    granian = shutil.which("granian")
    if granian:
        argv = [
            granian, "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1",
            "--port", "{port}", "--no-log", "--static-path-mount", str(root),
            "--static-path-route", "/static", HELLO,
        ]  # fmt: skip
        found.append(Contender("granian --static-path-mount", argv))
    nginx = shutil.which("nginx")
    if nginx:
        argv = [sys.executable, "-m", "tests.bench.static", "--nginx", nginx, "{port}", str(root)]
        found.append(Contender("nginx (sendfile, cache)", argv))
    return found


def run_nginx(nginx: str, port: str, root: str) -> None:
    """nginx in the foreground, two workers serving ``root`` under /static/ as an nginx user
    would for static files: sendfile, and descriptors and stats kept by its open file cache."""
    exec_nginx(
        nginx,
        "sendfile on; tcp_nopush on; open_file_cache max=1000 inactive=60s;\n"
        f"  server {{ listen 127.0.0.1:{port}; location /static/ {{ alias {root}/; }} }}",
    )


def _serves(url: str, size: int) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200 and len(response.read()) == size
    except OSError:
        return False


def main() -> None:
    if sys.argv[1:2] == ["--nginx"]:
        run_nginx(*sys.argv[2:5])
        return
    parser = bench_arguments(__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--size", type=int, default=10_240, help="bytes per file")
    args = parse_bench(parser)
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # nginx's workers, started as root, read as nobody
        root = Path(tmp, "files")
        root.mkdir()
        for index in range(args.files):
            (root / f"f{index}.bin").write_bytes(os.urandom(args.size))
        script = Path(tmp, "cycle.lua")
        script.write_text(
            f"local i = 0\nrequest = function()\n  i = i % {args.files} + 1\n"
            '  return wrk.format("GET", "/static/f" .. (i - 1) .. ".bin")\nend\n'
        )
        servers = contenders(root)
        results: dict[str, list[float]] = {c.name: [] for c in servers}
        print(f"{args.size:,} B static files x{args.files}, 2 workers, wrk -t1 -c64", flush=True)
        for round_index in range(args.rounds):
            for contender in rotated(servers, round_index):
                port = free_port()
                with started(contender, port) as proc:
                    base = f"http://127.0.0.1:{port}"
                    wait_until(
                        lambda b=base: _serves(f"{b}/static/f0.bin", args.size), 20, "a file"
                    )
                    run = run_wrk(
                        f"{base}/", 64, args.seconds, "-s", str(script), sessions=(proc.pid,)
                    )
                if run.errors:
                    print(f"  round {round_index + 1} {contender.name}: errors", flush=True)
                results[contender.name].append(run.per_cpu_s)
                print(
                    f"  round {round_index + 1} {contender.name:28s} {run.requests_per_s:>9,.0f} "
                    f"req/s  p99 {run.p99_us / 1000:6.2f} ms  {run.per_cpu_s:>9,.0f} req/CPU-s",
                    flush=True,
                )
    ours = results["greenserve --static"]
    print("medians, requests per server CPU-second:")
    for name, samples in results.items():
        print(f"  {name:28s} {statistics.median(samples):>9,.0f}")
    for name, samples in results.items():
        if name != "greenserve --static":
            ratios = [a / b for a, b in zip(ours, samples, strict=True) if b]
            print(
                f"greenserve --static / {name}: median {statistics.median(ratios):.2f}x "
                f"(rounds {' '.join(f'{r:.2f}' for r in ratios)})"
            )


if __name__ == "__main__":
    sys.exit(main())
