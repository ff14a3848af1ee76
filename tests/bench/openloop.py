"""An open-loop HTTP load generator: requests start at a constant rate whatever the server does
(wrk's closed loop waits for each answer, which hides a queue). One new connection per
request, like many independent clients, each carrying X-Request-Start (as a proxy would) with
its start time. Not run by CI.

    python -m tests.bench.openloop URL RATE SECONDS
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402

TIMEOUT = 10.0


def one(host: str, port: int, path: str, results: list) -> None:
    started = time.time()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        f"X-Request-Start: t={int(started * 1e6)}\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(request)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        status = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else "bad response"
    except TimeoutError:
        status = "timeout"
    except OSError as exc:
        status = type(exc).__name__
    results.append((started, time.time() - started, status))


def run(url: str, rate: float, seconds: float) -> dict:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    results: list = []
    greenlets = []
    start = time.monotonic()
    total = int(rate * seconds)
    for index in range(total):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        greenlets.append(gevent.spawn(one, host, port, path, results))
    gevent.joinall(greenlets, timeout=TIMEOUT + 5)
    statuses: dict = {}
    for _, _, status in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = sorted(latency for _, latency, status in results if status == 200)
    # goodput over the time the server took: from the first send to the last answer
    span = max((begun + latency for begun, latency, _ in results), default=0.0) - min(
        (begun for begun, _, _ in results), default=0.0
    )

    def pct(q: float) -> float | None:
        return ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else None

    shed = sorted(latency for _, latency, status in results if status == 503)
    return {
        "shed_p99_ms": shed[min(len(shed) - 1, int(0.99 * len(shed)))] * 1000 if shed else None,
        "offered_per_s": rate,
        "sent": total,
        "answered": len(results),
        "ok_per_s": len(ok) / max(span, seconds),
        "statuses": statuses,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    }


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))))
