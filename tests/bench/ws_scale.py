"""WebSockets at scale: N idle WebSockets on greenserve (``wsgi.websocket``, and Flask-Sock
answering the upgrade itself) and on gevent-websocket (one process) with the same app; memory
per connection, then a 100-byte broadcast to all of them through Redis pub/sub (each serving
process sends to its own sockets), then memory again. Not run by CI.

    python -m tests.bench.ws_scale [--count 100000] [--workers 6]
        [--servers greenserve,flask-sock,gevent-websocket] [--deflate]

The clients are plain sockets in processes of at most ``PER_CLIENT`` each, from several
127.0.0.x source addresses, each socket bound to a source port of its own choosing (``source``),
the handshake written by hand and one epoll for the broadcast, so they cost little beside the
servers. ``--deflate``: each handshake offers permessage-deflate, as browsers' do; the clients
never inflate, they wait for the frame. A process may hold only as many sockets as its
open-file limit (this machine: 20,000, and no right to raise it), which bounds the connections
per serving process too: N/workers must stay under it. Needs redis-server.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import resource
import select
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.run import (
    Contender,
    _healthy,
    _metric,
    _rss,
    free_port,
    started,
)
from tests.helpers import running_redis, wait_until

APP = "tests.bench.servers.ws_bench"
HANDSHAKE = (
    b"GET /idle HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
# What browsers send: the offer a server may accept (simple-websocket does, wsgi.websocket not)
DEFLATE = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
BATCH = 1000  # connections opened before their answers are read (under the listen backlog)
# Source ports chosen here, not by the kernel: bind(address, 0) searches for a free port, and
# that search slowed as each address filled: 75,000 WebSockets open after 8 minutes, 85,000
# after 10 (about 80 a second), then client processes failed (2-core VM, 100,000 asked).
FIRST_SOURCE_PORT = 10_000
PORTS_PER_SOURCE = 50_000
PER_CLIENT = 18_000  # sockets per client process, under the open-file limit


def _connects(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def source(index: int) -> socket.socket:
    """A socket bound to the source address and port of the ``index``-th WebSocket (the
    kernel's choice of port only if that one is taken, by a wildcard listener)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    address = f"127.0.0.{2 + index // PORTS_PER_SOURCE}"
    try:
        sock.bind((address, FIRST_SOURCE_PORT + index % PORTS_PER_SOURCE))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        sock.bind((address, 0))
    return sock


def open_websockets(
    port: int, first: int, count: int, handshake: bytes = HANDSHAKE
) -> list[socket.socket]:
    """``count`` WebSockets to /idle, each ``handshake`` answered with a 101; ``first``: the
    index of the first, which picks the source addresses."""
    sockets: list[socket.socket] = []
    for start in range(first, first + count, BATCH):
        batch = []
        for index in range(start, min(start + BATCH, first + count)):
            sock = source(index)
            sock.settimeout(60)
            sock.connect(("127.0.0.1", port))
            sock.sendall(handshake)
            batch.append(sock)
        for sock in batch:
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(1024)
                if not chunk:
                    raise ConnectionError(f"closed after {len(sockets)} WebSockets: {answer!r}")
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 101 "):
                raise ConnectionError(answer[:80])
            sock.setblocking(False)
        sockets += batch
    return sockets


def client(port: int, first: int, count: int, handshake: bytes, pipe: Any) -> None:
    """A client process: opens its WebSockets, says so, then reports when each received the
    broadcast (``time.perf_counter``, the same clock in every process). A failure to open is
    sent instead of the count: the parent stops with it rather than waiting for the count."""
    try:
        sockets = open_websockets(port, first, count, handshake)
    except Exception as exc:
        pipe.send(f"client of WebSockets {first} to {first + count - 1}: {exc!r}")
        return
    pipe.send(len(sockets))
    pipe.recv()  # the broadcast is about to go
    pipe.send(receive_all(sockets, 30))
    pipe.recv()  # the parent has read the servers' figures: close now
    for sock in sockets:
        sock.close()


def receive_all(sockets: list[socket.socket], timeout: float) -> list[float]:
    """When each socket had its whole message (one frame, unmasked, of under 126 bytes: the
    broadcast, compressed or not), on the perf_counter clock."""
    since = time.perf_counter()
    poller = select.epoll(len(sockets) + 1)
    by_fd = {}
    for sock in sockets:
        poller.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = [sock, b""]
    delays: list[float] = []
    deadline = since + timeout
    while by_fd and time.perf_counter() < deadline:
        for fd, _ in poller.poll(0.5):
            entry = by_fd.get(fd)
            if entry is None:
                continue
            with contextlib.suppress(BlockingIOError):
                entry[1] += entry[0].recv(4096)
            if len(entry[1]) >= 2 and len(entry[1]) >= 2 + (entry[1][1] & 0x7F):
                delays.append(time.perf_counter())
                poller.unregister(fd)
                del by_fd[fd]
    poller.close()
    return delays


def registered(redis_client: Any, processes: int) -> int:
    """How many sockets the serving processes' apps hold (``OPEN``), asked through Redis."""
    redis_client.delete("open")
    redis_client.publish("broadcast", b"count")
    wait_until(lambda: redis_client.llen("open") >= processes, 30, "every process counted")
    return sum(int(line.split()[1]) for line in redis_client.lrange("open", 0, -1))


def run(
    name: str, port: int, pids: list[int], count: int, url: str, deflate: bool = False
) -> dict[str, float]:
    """Open, measure memory, broadcast, measure memory again; ``pids``: the serving
    processes; ``deflate``: the clients offer permessage-deflate, as browsers do."""
    handshake = HANDSHAKE[:-2] + DEFLATE + b"\r\n" if deflate else HANDSHAKE
    import multiprocessing

    import redis

    redis_client = redis.Redis.from_url(url)
    redis_client.delete("sent")
    rss_before = sum(_rss(pid) for pid in pids)
    opened = time.perf_counter()
    clients = []
    for first in range(0, count, PER_CLIENT):
        ours, theirs = multiprocessing.Pipe()
        process = multiprocessing.Process(
            target=client,
            args=(port, first, min(PER_CLIENT, count - first), handshake, theirs),
        )
        process.start()
        clients.append((process, ours))
    try:
        total = 0
        for _, pipe in clients:
            if not pipe.poll(600):
                raise TimeoutError("a client process did not open its WebSockets")
            try:
                opened_here = pipe.recv()
            except EOFError:
                raise RuntimeError("a client process ended before opening its WebSockets") from None
            if isinstance(opened_here, str):
                raise RuntimeError(opened_here)
            total += opened_here
        open_s = time.perf_counter() - opened
        wait_until(
            lambda: redis_client.pubsub_numsub("broadcast")[0][1] >= len(pids),
            30,
            "every process subscribed",
        )
        # A Flask-Sock handler registers its socket some time after the 101 the client read
        # (simple-websocket starts its reader thread first): a broadcast at once missed half.
        wait_until(
            lambda: registered(redis_client, len(pids)) >= total, 60, "every socket registered"
        )
        per_connection = (sum(_rss(pid) for pid in pids) - rss_before) / total
        for _, pipe in clients:
            pipe.send("go")
        since = time.perf_counter()
        redis_client.publish("broadcast", b"b" * 100)
        times: list[float] = []
        for _, pipe in clients:
            if not pipe.poll(120):
                raise TimeoutError("a client process did not report")
            times += pipe.recv()
        wait_until(lambda: redis_client.llen("sent") >= len(pids), 30, "every process sent")
        sent = [line.decode().split() for line in redis_client.lrange("sent", 0, -1)]
        # what sending left behind in the servers (a compressor per socket, with deflate)
        after_broadcast = (sum(_rss(pid) for pid in pids) - rss_before) / total
        for _, pipe in clients:
            pipe.send("close")
    finally:
        for process, _ in clients:
            process.join(60)
            if process.is_alive():
                process.kill()
    delays = sorted(t - since for t in times)
    figures = {
        "per_connection_kib": per_connection / 1024,
        "after_broadcast_kib": after_broadcast / 1024,
        "open_s": open_s,
        "sent_ms": max(float(ms) for _, _, ms in sent),
        "received": len(delays),
        "p50_ms": statistics.median(delays) * 1000 if delays else 0.0,
        "p99_ms": delays[max(0, int(len(delays) * 0.99) - 1)] * 1000 if delays else 0.0,
        "all_ms": delays[-1] * 1000 if delays else 0.0,
    }
    print(
        f"{name}: {total:,} idle WebSockets opened in {open_s:.1f} s, "
        f"{figures['per_connection_kib']:.1f} KiB each (RSS of the serving processes / "
        f"connections), {figures['after_broadcast_kib']:.1f} KiB after the broadcast; "
        f"broadcast of 100 B: sent in {figures['sent_ms']:.0f} ms "
        f"(slowest process; per process {', '.join(f'{n} in {ms} ms' for _, n, ms in sent)}), "
        f"received by {len(delays):,}: p50 {figures['p50_ms']:.0f} ms, p99 "
        f"{figures['p99_ms']:.0f} ms, last {figures['all_ms']:.0f} ms",
        flush=True,
    )
    return figures


def greenserve(
    count: int, url: str, workers: int, app: str = "redis_fanout", deflate: bool = False
) -> dict[str, float]:
    """``app``: redis_fanout (``wsgi.websocket``) or flask_sock_fanout (Flask-Sock)."""
    port, mport = free_port(), free_port()
    kind = "wsgi.websocket" if app == "redis_fanout" else "Flask-Sock"
    offer = ", clients offer deflate" if deflate else ""
    contender = Contender(f"greenserve x{workers} ({kind}{offer})", [
        sys.executable, "-m", "greenserve", f"{APP}:{app}({url!r})", "--protocol",
        "http", "-w", str(workers), "--bind", f"127.0.0.1:{port}", "--metrics-bind",
        f"127.0.0.1:{mport}", "--max-connections", str(count // workers + 1000), "--backlog",
        "4096", "--log-level", "warning", "--stats-interval", "0.5",
    ])  # fmt: skip
    with started(contender, port):
        _healthy(mport)

        def worker_pids() -> list[int] | None:
            found = _metric(mport, "greenserve_worker_pid")
            ready = len(found) == workers and all(found.values())
            return [int(pid) for pid in found.values()] if ready else None

        pids = wait_until(worker_pids, 30, "worker pids")
        return run(contender.name, port, pids, count, url, deflate)


def gevent_websocket(count: int, url: str) -> dict[str, float]:
    port = free_port()
    contender = Contender(
        "gevent-websocket on pywsgi x1", [sys.executable, "-m", APP, str(port), url]
    )
    with started(contender, port) as proc:
        wait_until(lambda: _connects(port), 30, "gevent-websocket listening")
        return run(contender.name, port, [proc.pid], count, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument(
        "--servers", default="greenserve", help="greenserve,flask-sock,gevent-websocket"
    )
    parser.add_argument(
        "--deflate", action="store_true", help="clients offer permessage-deflate (greenserve's)"
    )
    args = parser.parse_args()
    # timeout(1) and Ctrl-C alike stop the servers and Redis through the context managers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    with tempfile.TemporaryDirectory() as scratch, running_redis(Path(scratch)) as url:
        for server in args.servers.split(","):
            if server == "greenserve":
                greenserve(args.count, url, args.workers, deflate=args.deflate)
            elif server == "flask-sock":
                greenserve(args.count, url, args.workers, "flask_sock_fanout", args.deflate)
            elif server == "gevent-websocket":
                gevent_websocket(args.count, url)


if __name__ == "__main__":
    main()
