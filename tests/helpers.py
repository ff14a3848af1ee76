"""Running real greenserve processes in tests: own session, deadlines, output on failure."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from greenserve.worker.protocols.phase import ConnectionPhase

ROOT = Path(__file__).resolve().parent.parent
APPS_DIR = Path(__file__).resolve().parent / "apps"
STARTED_GROUPS: list[int] = []


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    step: float = 0.02,
    sleep: Callable[[float], Any] = time.sleep,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds.
    ``sleep=gevent.sleep`` for a predicate that greenlets of this process make true."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        sleep(step)


class Server:
    """A greenserve master started in its own session; its JSON log lines are collected."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path = APPS_DIR,
        default_bind: bool = True,
        default_metrics: bool = True,
    ) -> None:
        """``default_bind=False``: do not add ``--bind 127.0.0.1:0`` (the config file binds);
        ``default_metrics=False``: nor ``--metrics-bind 127.0.0.1:0`` (the user's default)."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GREENSERVE_")}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        defaults = []
        if default_bind and not any(a.startswith("--bind") for a in args):
            defaults += ["--bind", "127.0.0.1:0"]
        if default_metrics and not any(a.startswith("--metrics-bind") for a in args):
            defaults += ["--metrics-bind", "127.0.0.1:0"]
        if "--log-format" not in args:
            defaults += ["--log-format", "json"]
        self.argv = [sys.executable, "-m", "greenserve", *args, *defaults]
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        STARTED_GROUPS.append(self.proc.pid)
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self.events.append(event)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.events)
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_event(self, event: str, timeout: float = 10, count: int = 1, **fields: Any) -> Any:
        def found() -> Any:
            hits = self.find(event, **fields)
            if len(hits) >= count:
                return hits
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) before {event}")
            return None

        return wait_until(found, timeout, f"log event {event} {fields}")

    def started(self, timeout: float = 15) -> Server:
        """Wait for every worker to be accepting (the /healthz readiness signal)."""
        event = self.wait_event("started", timeout)[0]
        self.address = _address(event["bind"])
        self.metrics_address = _address(event["metrics"]) if event["metrics"] != "off" else None
        self.workers = event["workers"]
        self.wait_event("worker_started", timeout, count=self.workers)
        if self.metrics_address:
            wait_until(lambda: self.health()[0] == 200, timeout, "/healthz 200")
        return self

    @property
    def port(self) -> int:
        return self.address[1]

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
        assert self.metrics_address is not None
        host, port = self.metrics_address
        request = urllib.request.Request(f"http://{host}:{port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    def health(self) -> tuple[int, Any]:
        try:
            status, body, _ = self.get("/healthz")
        except OSError:
            return 0, None
        return status, json.loads(body)

    def metrics_text(self) -> str:
        status, body, _ = self.get("/metrics")
        assert status == 200
        return body.decode()

    def worker_pids(self) -> dict[int, int]:
        """Slot -> pid of the live worker processes, read from /proc by process title."""
        pids = {}
        for pid in _session_pids(self.proc.pid):
            title = _cmdline(pid)
            if title.startswith("greenserve: worker "):
                pids[int(title.split()[2])] = pid
        return pids

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait_exit(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout}s") from None

    def close(self) -> None:
        """End the whole process group, politely first."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._reader.join(5)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def group_alive(pgid: int) -> list[int]:
    return _session_pids(pgid)


def echo_round_trip(address: tuple[str, int], payload: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for a socket bound to port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on the port (as greenserve binds: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


@contextlib.contextmanager
def running(*args: str, **kwargs: Any) -> Iterator[Server]:
    server = Server(*args, **kwargs)
    try:
        yield server
    except BaseException:
        print(f"--- server output ({' '.join(server.argv)}) ---\n{server.output}")
        raise
    finally:
        server.close()


def serving_http(*args: str, workers: int = 1, **kwargs: Any) -> Any:
    """``running`` with ``--protocol http`` and ``workers`` workers (one unless said)."""
    return running(*args, "--protocol", "http", "-w", str(workers), **kwargs)


def by_label(server: Server, name: str, label: str) -> dict[str, float]:
    """One metric summed over the workers, by the value of ``label`` (a reason, a code)."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(server.metrics_text()):
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels[label]
                totals[key] = totals.get(key, 0) + sample.value
    return totals


def per_worker(server: Server, name: str) -> dict[str, float]:
    """One metric's value per worker slot, read from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(server.metrics_text()):
        for sample in family.samples:
            if sample.name == name and "worker" in sample.labels:
                values[sample.labels["worker"]] = sample.value
    return values


SPLIT_MODES = ("whole", "bytewise", "random-split")


def split(data: bytes, mode: str, seed: int = 0) -> list[bytes]:
    """``data`` as one piece, a byte at a time, or cut at a few random (seeded) points."""
    import random

    if mode == "whole" or len(data) < 2:
        return [data]
    if mode == "bytewise":
        return [data[index : index + 1] for index in range(len(data))]
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(4, len(data) - 1)))
    return [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]


class HttpResponse:
    """One response read off a byte stream."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"HttpResponse({self.status}, {self.headers}, {self.body[:60]!r})"


def parse_responses(raw: bytes, head_indexes: frozenset[int] = frozenset()) -> list[HttpResponse]:
    """Every response in ``raw``, interim ones included, framed as a client would frame them.

    ``head_indexes``: positions (among final responses) of the ones answering HEAD. Fails on
    bytes that are not a response, which is how a desynchronised connection shows.
    """
    out: list[HttpResponse] = []
    finals = 0
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {raw[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), f"not a status line: {raw[:200]!r}"
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), f"bad header line {line!r}"
            key = name.lower()
            headers[key] = headers[key] + "," + value.strip() if key in headers else value.strip()
        if status < 200 or status in (204, 304) or (finals in head_indexes and status >= 200):
            body, raw = b"", rest
        elif "transfer-encoding" in headers:
            assert headers["transfer-encoding"] == "chunked", headers
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body += rest[:size]
                assert rest[size : size + 2] == b"\r\n", "bad chunk framing"
                rest = rest[size + 2 :]
                if size == 0:
                    break
            raw = rest
        elif "content-length" in headers:
            length = int(headers["content-length"])
            body, raw = rest[:length], rest[length:]
        else:
            body, raw = rest, b""
        out.append(HttpResponse(status, headers, body))
        if status >= 200:
            finals += 1
    return out


def final_responses(
    raw: bytes, head_first: bool = False
) -> list[tuple[int, dict[str, str], bytes]]:
    """(status, headers, body) of each final response in ``raw``, interim ones skipped;
    ``head_first``: the first answers a HEAD request, so it has no body."""
    heads = frozenset({0}) if head_first else frozenset()
    return [(r.status, r.headers, r.body) for r in parse_responses(raw, heads) if r.status >= 200]


class ScriptedSocket(ConnectionPhase):
    """What the HTTP layer needs of a socket, in memory: ``recv`` reads a script of chunks (one
    chunk per call, then end of stream), ``sendall`` appends to ``sent``. Its phase and
    deadlines are the real ones (ConnectionPhase): a test can sweep it with a fake clock."""

    def __init__(self, chunks: list[bytes], now: float | None = None, hold: bool = False) -> None:
        """``hold``: at the end of the script a read waits (for ``more`` or a shutdown) instead
        of returning end-of-stream, as a client that keeps its connection open."""
        import collections

        self.chunks = collections.deque(chunks)
        self.sent = bytearray()
        self.hold = hold
        self.closed_by_server = False
        self.waiting: Any = None  # a gevent Event while a held read waits
        self.accepted(time.monotonic() if now is None else now)
        self._sock = self  # what ConnectionPhase.shut_down shuts: ``shutdown`` below
        self.out = None  # nothing held (CountingSocket: a corked batch or a slow peer's bytes)
        self.spill = False  # takes every write whole, so never holds any

    def recv(self, size: int) -> bytes:
        while not self.chunks:
            if not self.hold or self.closed_by_server:
                return b""
            from gevent.event import Event

            self.waiting = Event()
            self.waiting.wait()
        chunk = self.chunks.popleft()
        if len(chunk) > size:
            self.chunks.appendleft(chunk[size:])
            chunk = chunk[:size]
        self.rx += len(chunk)
        return chunk

    def more(self, chunk: bytes) -> None:
        """The client sends ``chunk`` (a held read returns it)."""
        self.chunks.append(chunk)
        if self.waiting is not None:
            self.waiting.set()

    @property
    def watched(self) -> ScriptedSocket:
        return self

    def recv_after_wait(self, size: int) -> bytes:
        return self.recv(size)

    def sendall(self, data: bytes) -> None:
        if self.closed_by_server:
            raise BrokenPipeError("the server shut this connection")
        self.sent += data
        self.tx += len(data)

    def fileno(self) -> int:
        raise OSError("an in-memory socket has no file descriptor")

    def shutdown(self, how: int) -> None:
        self.chunks.clear()
        self.closed_by_server = True
        if self.waiting is not None:
            self.waiting.set()


def in_process_handler(app: Any, flags: tuple[str, ...] = (), **changes: Any) -> Any:
    """An HttpHandler serving ``app`` in this process (no listener), from ``--protocol http``
    and ``flags`` with ``changes`` to the Settings, logging through structlog as configured."""
    import structlog

    from greenserve.config import load
    from greenserve.metrics.stats import WorkerStats
    from greenserve.worker.protocols.http_handler import HttpHandler

    settings = load(["--protocol", "http", *flags], {}).with_changes(**changes)
    return HttpHandler(
        app,
        settings,
        stats=WorkerStats(),
        log=structlog.get_logger(),
        server_address=("127.0.0.1", 8000),
    )


def serve_in_process(
    app: Any, chunks: list[bytes], address: Any = ("127.0.0.1", 40000), **changes: Any
) -> tuple[bytes, list[dict]]:
    """Run one HTTP connection through the real protocol code, with no socket and no process.

    ``address``: the peer's, as accept gives it (a Unix socket's: "" or a path).
    ``changes``: Settings fields to change from the defaults (1 MiB bodies, 5 s header timeout).

    Returns what the server wrote and the log events it emitted (structlog's capture_logs).
    """
    from structlog.testing import capture_logs

    with capture_logs() as events:
        handler = in_process_handler(app, ("--max-body", "1m", "--header-timeout", "5"), **changes)
        sock = ScriptedSocket(chunks)
        handler.handle(sock, address)
    return bytes(sock.sent), events


def need(tool: str) -> str:
    """A Debian tool the test needs: skip locally without it, fail under CI=true."""
    import pytest

    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing in CI: .ci/run must install it")
        pytest.skip(f"{tool} not installed")
    return path


class ClientLoad:
    """Client threads calling ``request`` in a loop (bounded in time) until stopped.

    ``ok`` counts calls that returned, ``failed`` the exceptions of the others (with when they
    happened), ``seen`` the distinct values the calls returned (other than None).
    """

    def __init__(self, request: Callable[[], Any], threads: int = 4, seconds: float = 200) -> None:
        self.request = request
        self.seconds = seconds
        self.ok = 0
        self.failed: list[str] = []
        self.failed_at: list[float] = []
        self.seen: set[Any] = set()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                value = self.request()
            except Exception as exc:  # every failure is counted: a load thread never dies quietly
                with self.lock:
                    self.failed.append(repr(exc))
                    self.failed_at.append(time.monotonic())
                continue
            with self.lock:
                self.ok += 1
                if value is not None:
                    self.seen.add(value)

    def start(self) -> ClientLoad:
        for thread in self.threads:
            thread.start()
        return self

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def __enter__(self) -> ClientLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.end()

    def more(self, count: int, timeout: float = 30) -> None:
        """Wait for ``count`` more successful calls."""
        target = self.ok + count
        wait_until(lambda: self.ok >= target, timeout, f"{count} more requests")


def http_ok(url: str) -> None:
    """One GET on a new connection; raises unless it is a 200."""
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
        if response.status != 200:
            raise AssertionError(f"status {response.status}")


@contextlib.contextmanager
def steady_server(*args: str, **kwargs: Any) -> Iterator[Server]:
    """A started server whose workers must all still be the same processes at the end."""
    with running(*args, **kwargs) as server:
        server.started()
        initial = server.worker_pids()
        yield server
        assert server.worker_pids() == initial, "a worker died or restarted"


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything until the server closes; fails if it does not close within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data
    finally:
        sock.close()


def exchange(address: tuple[str, int], data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on a new connection and read until the server closes (a reset, for unread
    input, counts as the end too)."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.sendall(data)
    except ConnectionResetError:
        sock.close()
        return b""
    return read_all(sock, timeout)


def v2(command: int, family: int, body: bytes, tlvs: bytes = b"") -> bytes:
    """A PROXY protocol v2 header."""
    from greenserve.proxy import V2_SIGNATURE

    payload = body + tlvs
    return (
        V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) + payload
    )


def ipv4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def scrape(server) -> dict[str, float]:
    """Totals over workers of every sample, keyed by name (plus labels other than worker)."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(server.metrics_text()):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "worker"}
            key = sample.name + ("" if not labels else str(sorted(labels.items())))
            totals[key] = totals.get(key, 0) + sample.value
    return totals


def traffic(server, connections: int, size: int) -> None:
    payload = b"m" * size
    for _ in range(connections):
        assert echo_round_trip(server.address, payload) == payload


def wait_totals(server, expected: dict[str, float], timeout: float = 5) -> dict[str, float]:
    def matches():
        totals = scrape(server)
        return totals if all(totals.get(k) == v for k, v in expected.items()) else None

    try:
        return wait_until(matches, timeout, f"totals {expected}")
    except AssertionError:
        got = {k: scrape(server).get(k) for k in expected}
        raise AssertionError(f"expected {expected}, scraped {got}") from None


def settled_totals(server, quiet: float = 0.5, timeout: float = 10) -> dict[str, float]:
    """Totals once they stopped changing for ``quiet`` seconds (late flushes have landed)."""
    last: dict[str, tuple[dict[str, float], float]] = {}

    def stable():
        totals = scrape(server)
        keys = ("greenserve_connections_accepted_total", "greenserve_bytes_received_total")
        current = {k: totals[k] for k in keys}
        now = time.monotonic()
        if "seen" not in last or last["seen"][0] != current:
            last["seen"] = (current, now)
            return None
        return totals if now - last["seen"][1] >= quiet else None

    return wait_until(stable, timeout, "totals to settle", step=0.05)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tool(*args: str, stdin: str | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    """``greenserve ARGS`` run to its end, in its own session, with no GREENSERVE_* settings."""
    return subprocess.run(
        [sys.executable, "-m", "greenserve", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=APPS_DIR,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("GREENSERVE_")},
    )


def metrics_url(server) -> str:
    host, port = server.metrics_address
    return f"http://{host}:{port}/metrics"


def spawn_top(server, rows: int, columns: int) -> Any:
    """``greenserve top`` on the server, in a real pseudo-terminal of that size (pexpect)."""
    import pexpect

    return pexpect.spawn(
        sys.executable,
        ["-m", "greenserve", "top", "--metrics", metrics_url(server)],
        dimensions=(rows, columns),
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)},
        encoding="utf-8",
        timeout=15,
    )


def echo_once(address: tuple[str, int]) -> None:
    if echo_round_trip(address, b"load", timeout=5) != b"load":
        raise AssertionError("echo came back wrong")


class Load(ClientLoad):
    """Client threads opening a new connection per echo round trip until stopped."""

    def __init__(self, address: tuple[str, int], threads: int = 4) -> None:
        super().__init__(lambda: echo_once(address), threads)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on 127.0.0.1 (a free port, nothing saved to disk), in its own
    process group, ended with it; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [need("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: _redis_answers(port), 10, "redis-server answering PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


@contextlib.contextmanager
def running_prometheus(
    tmp_path: Path, target: tuple[str, int], rules: bool = True
) -> Iterator[str]:
    """A real Prometheus from the shipped deploy/prometheus/prometheus.yml scraping ``target``
    every second (only the interval is changed, to keep tests short); yields its API URL."""
    import yaml

    prometheus = need("prometheus")
    shipped = ROOT / "deploy" / "prometheus"
    config = yaml.safe_load((shipped / "prometheus.yml").read_text())
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"{target[0]}:{target[1]}"]
    config["global"]["scrape_interval"] = "1s"
    if rules:
        shutil.copy(shipped / "alerts.yml", tmp_path / "alerts.yml")
    else:
        config.pop("rule_files", None)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = free_port()
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    STARTED_GROUPS.append(proc.pid)
    try:
        yield f"http://127.0.0.1:{web}/api/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
