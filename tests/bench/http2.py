"""HTTP/2 over TLS: greenserve --http-protocols h2,h1 against gunicorn 27's gevent worker with
the same option and the same certificate, and greenserve's own HTTP/1.1 over TLS. Not run by CI.

    python -m tests.bench.http2 [--rounds 5] [--seconds 5] [--app hello|flask]

Two workers each; h2load (Debian's nghttp2-client) -c 32 on one core of load, -m 10 streams per
connection for HTTP/2, one request at a time per connection for HTTP/1.1 (--h1); interleaved
rounds; requests per server CPU-second (the servers' CPU from /proc, h2load's not).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench.run import (
    HTTP_APPS,
    Contender,
    free_port,
    greenserve_command,
    rotated,
    session_cpu_seconds,
    started,
)
from tests.helpers import wait_until

CLIENTS = 32


def contenders(app: str, cert: Path) -> list[tuple[Contender, bool]]:
    """(server, whether h2load speaks HTTP/2 to it)."""
    tls = ["--certfile", str(cert)]
    found = [
        (Contender("greenserve h2", greenserve_command(app, "--http-protocols", "h2,h1", *tls)),
         True),
        (Contender("greenserve h1 (TLS)", greenserve_command(app, *tls)), False),
    ]  # fmt: skip
    gunicorn = [
        sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gevent", "-b", "127.0.0.1:{port}",
        "--log-level", "warning", "--certfile", str(cert), "--keyfile", str(cert),
        "--http-protocols", "h2,h1", app,
    ]  # fmt: skip
    found.append((Contender("gunicorn 27 -k gevent h2", gunicorn), True))
    return found


def h2load(url: str, h2: bool, seconds: int, requests: int = 0) -> tuple[int, int]:
    """(requests that succeeded, that failed or errored) in ``seconds`` (or ``requests``)."""
    amount = ["-n", str(requests)] if requests else ["-D", str(seconds)]
    argv = [shutil.which("h2load") or "h2load", "-c", str(CLIENTS), *amount, url]
    argv[1:1] = ["-m", "10"] if h2 else ["--h1", "-m", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    found = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored", out)  # fmt: skip
    if found is None:
        raise RuntimeError(f"h2load printed no totals:\n{out}")
    return int(found[1]), int(found[2]) + int(found[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--app", choices=sorted(HTTP_APPS), default="hello")
    args = parser.parse_args()
    import trustme

    with tempfile.TemporaryDirectory() as tmp:
        cert = Path(tmp, "server.pem")
        trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert)
        servers = contenders(HTTP_APPS[args.app], cert)
        results: dict[str, list[float]] = {c.name: [] for c, _ in servers}
        print(f"{args.app} over TLS, 2 workers, h2load -c{CLIENTS}", flush=True)
        for round_index in range(args.rounds):
            for contender in rotated([c for c, _ in servers], round_index):
                h2 = dict((c.name, h) for c, h in servers)[contender.name]
                port = free_port()
                url = f"https://127.0.0.1:{port}/"
                with started(contender, port) as proc:
                    wait_until(lambda u=url, h=h2: h2load_ok(u, h), 20, "an answer over TLS")
                    before = session_cpu_seconds(proc.pid)
                    done, failed = h2load(url, h2, args.seconds)
                    cpu = session_cpu_seconds(proc.pid) - before
                per_cpu = done / cpu if cpu else 0.0
                results[contender.name].append(per_cpu)
                print(
                    f"  round {round_index + 1} {contender.name:26s} {done / args.seconds:>9,.0f}"
                    f" req/s  {per_cpu:>9,.0f} req/CPU-s  failed {failed}",
                    flush=True,
                )
    print("medians, requests per server CPU-second:")
    for name, samples in results.items():
        print(f"  {name:26s} {statistics.median(samples):>9,.0f}")
    ours = results["greenserve h2"]
    for name, samples in results.items():
        if name != "greenserve h2":
            ratios = [a / b for a, b in zip(ours, samples, strict=True) if b]
            print(
                f"greenserve h2 / {name}: median {statistics.median(ratios):.2f}x "
                f"(rounds {' '.join(f'{r:.2f}' for r in ratios)})"
            )


def h2load_ok(url: str, h2: bool) -> bool:
    try:
        done, failed = h2load(url, h2, 0, requests=CLIENTS * 2)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return done > 0 and not failed


if __name__ == "__main__":
    sys.exit(main())
