"""WebSockets side by side: echo of 64-byte messages over 50 connections in lockstep, per server
CPU-second, against gevent-websocket on gevent.pywsgi and uvicorn with websockets; then 10,000
idle WebSockets on one greenserve worker (memory per connection) and one broadcast to all.

    pip install -e '.[bench]' && python -m tests.bench.ws [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
import urllib.request
from typing import Any

from tests.bench.run import (
    Contender,
    _healthy,
    _metric,
    _rss,
    _worker_pid,
    free_port,
    greenserve_command,
    rotated,
    session_cpu_seconds,
    started,
)
from tests.helpers import wait_until

APP = "tests.bench.servers.ws_bench"


def contenders() -> list[Contender]:
    py = sys.executable
    return [
        Contender(
            "greenserve (wsgi.websocket) x1",
            greenserve_command(f"{APP}:greenserve_app", workers=1),
        ),
        Contender("gevent-websocket on pywsgi x1", [py, "-m", APP, "{port}"]),
        Contender("uvicorn + websockets x1", [
            py, "-m", "uvicorn", f"{APP}:asgi_echo", "--port", "{port}", "--log-level",
            "warning", "--ws", "websockets-sansio", "--loop", "uvloop",
        ]),
    ]  # fmt: skip


async def _lockstep(port: int, connections: int, seconds: float) -> int:
    import websockets

    done = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo", max_size=None) as ws:
            message = "x" * 64
            while time.monotonic() < deadline:
                await ws.send(message)
                await ws.recv()
                done += 1

    await asyncio.gather(*(one() for _ in range(connections)))
    return done


def _answers(port: int) -> bool:
    async def probe() -> bool:
        import websockets

        async with websockets.connect(f"ws://127.0.0.1:{port}/echo", open_timeout=2) as ws:
            await ws.send("ping")
            return await ws.recv() == "ping"

    try:
        return asyncio.run(probe())
    except Exception:  # not up yet
        return False


def echo(rounds: int, seconds: float, connections: int = 50) -> dict[str, float]:
    results: dict[str, list[float]] = {}
    for index in range(rounds):
        for contender in rotated(contenders(), index):
            port = free_port()
            with started(contender, port) as proc:
                try:
                    wait_until(lambda p=port: _answers(p), 20, f"{contender.name} answering")
                except AssertionError:
                    print(f"  round {index + 1} {contender.name}: did not start")
                    continue
                before = session_cpu_seconds(proc.pid)
                count = asyncio.run(_lockstep(port, connections, seconds))
                cpu = session_cpu_seconds(proc.pid) - before
            per_cpu = count / cpu if cpu else 0.0
            results.setdefault(contender.name, []).append(per_cpu)
            print(
                f"  round {index + 1} {contender.name:34s} {count / seconds:>9,.0f} msg/s "
                f"{per_cpu:>9,.0f} per server CPU-s",
                flush=True,
            )
    medians = {name: statistics.median(values) for name, values in results.items() if values}
    ours = medians.get("greenserve (wsgi.websocket) x1", 0.0)
    print("\nWebSocket echo, 64 B, 50 connections in lockstep, medians per server CPU-second")
    for name, value in medians.items():
        print(f"  {name:34s} {value:>9,.0f}  greenserve/it {ours / value if value else 0:.2f}x")
    return medians


async def _idle(port: int, count: int) -> list[Any]:
    import websockets

    sockets = []
    for start in range(0, count, 500):
        batch = [
            websockets.connect(f"ws://127.0.0.1:{port}/idle", open_timeout=30)
            for _ in range(min(500, count - start))
        ]
        sockets += await asyncio.gather(*batch)
    return sockets


def idle_and_broadcast(count: int) -> dict[str, float]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count * 2 + 1000), hard))
    port, mport = free_port(), free_port()
    contender = Contender("greenserve", [
        sys.executable, "-m", "greenserve", f"{APP}:greenserve_app", "--protocol", "http", "-w",
        "1", "--bind", f"127.0.0.1:{port}", "--metrics-bind", f"127.0.0.1:{mport}",
        "--max-connections", str(count + 100), "--log-level", "warning", "--log-format", "json",
        "--stats-interval", "0.1",
    ])  # fmt: skip
    with started(contender, port):
        _healthy(mport)
        worker = _worker_pid(mport)

        async def run() -> dict[str, float]:
            before = _rss(worker)
            sockets = await _idle(port, count)
            wait_until(
                lambda: _metric(mport, "greenserve_websocket_connections_active").get("0") == count,
                60,
                "every WebSocket open",
            )
            after = _rss(worker)
            started_at = time.perf_counter()
            loop = asyncio.get_running_loop()
            server_ms = await loop.run_in_executor(
                None,
                lambda: urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/broadcast", timeout=60
                ).read(),
            )
            await asyncio.gather(*(ws.recv() for ws in sockets))
            delivered = time.perf_counter() - started_at
            for ws in sockets:
                await ws.close()
            return {
                "per_connection": (after - before) / count,
                "broadcast_s": delivered,
                "server_send_ms": float(server_ms),
            }

        figures = asyncio.run(run())
    print(
        f"\n{count:,} idle WebSockets on one worker: {figures['per_connection'] / 1024:.1f} KiB "
        f"each; one broadcast to all: sent in {figures['server_send_ms']:.0f} ms, all received "
        f"in {figures['broadcast_s'] * 1000:.0f} ms"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--idle", type=int, default=10_000)
    args = parser.parse_args()
    echo(args.rounds, args.seconds)
    idle_and_broadcast(args.idle)


if __name__ == "__main__":
    main()
