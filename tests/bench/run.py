"""Side-by-side benchmarks, interleaved rounds, medians and ratios. Not run by CI.

    pip install -e '.[bench]' && python -m tests.bench.run [--rounds 3] [--seconds 5]

Each round starts every contender in turn (in its own session), drives it with the same load
generator, measures the server's CPU time from /proc (all processes of its session), stops it.
Results go to tests/bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers import wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WORKERS = len(os.sched_getaffinity(0))


@dataclass
class Contender:
    """A server to compare: its command line (``{port}`` substituted) and environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


# --baseline DIR: another checkout of greenserve (a git worktree) run side by side as one more
# contender, so a change's cost is measured interleaved with the code before it.
BASELINE: list[Path] = []


def bench_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options every side-by-side bench takes: --rounds, --seconds and --baseline (read
    with ``parse_bench``)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--baseline", type=Path, help="another greenserve checkout, alongside")
    return parser


def parse_bench(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, with --baseline's checkout added to BASELINE."""
    args = parser.parse_args()
    if args.baseline:
        BASELINE.append(args.baseline.resolve())
    return args


def baseline_contenders(name: str, argv: list[str]) -> list[Contender]:
    return [
        Contender(f"{name} (baseline)", argv, {"PYTHONPATH": str(tree / "service")})
        for tree in BASELINE
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_cpu_seconds(sid: int) -> float:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def wait_port(port: int, timeout: float = 20) -> float:
    """When the server first echoed (monotonic time)."""

    def answered() -> float | None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"ping")
            if s.recv(4) == b"ping":
                return time.monotonic()
        return None

    return wait_until(answered, timeout, f"an echo on port {port}", step=0.01)


def _answers_200(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
    return False


@contextlib.contextmanager
def started(contender: Contender, port: int):
    argv = [part.replace("{port}", str(port)) for part in contender.argv]
    env = {**os.environ, **contender.env}
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def build_echoload() -> Path:
    binary = RESULTS / "echoload"
    RESULTS.mkdir(parents=True, exist_ok=True)
    source = HERE / "echoload.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def echo_contenders() -> list[Contender]:
    py = sys.executable
    gs = [py, "-m", "greenserve", "--workers", str(WORKERS), "--bind", "127.0.0.1:{port}"]
    gs += ["--metrics-bind", "127.0.0.1:0", "--log-level", "warning", "--log-format", "json"]
    contenders = [
        Contender("greenserve", gs),
        *baseline_contenders("greenserve", gs),
        Contender("greenserve (counting off)", gs, {"PYTHONPATH": str(HERE / "nocount")}),
        Contender(
            f"bare StreamServer x{WORKERS}",
            [py, str(HERE / "servers" / "bare_streamserver.py"), "{port}", str(WORKERS)],
        ),
        Contender("seed classic (1 process)", [py, str(HERE / "servers" / "classic.py"), "{port}"]),
    ]
    if importlib.util.find_spec("uvloop"):
        contenders.append(
            Contender(
                f"asyncio+uvloop x{WORKERS}",
                [py, str(HERE / "servers" / "uvloop_echo.py"), "{port}", str(WORKERS)],
            )
        )
    return contenders


def run_echo(rounds: int, seconds: float, connections: int, size: int) -> dict[str, list[dict]]:
    echoload = build_echoload()
    results: dict[str, list[dict]] = {}
    contenders = echo_contenders()
    for round_index in range(rounds):
        for contender in rotated(contenders, round_index):
            port = free_port()
            with started(contender, port) as proc:
                wait_port(port)
                load = [str(echoload), "127.0.0.1", str(port), str(connections), str(size)]
                subprocess.run([*load, "1"], check=True, capture_output=True)  # warm-up
                cpu_before = session_cpu_seconds(proc.pid)
                out = subprocess.run([*load, str(seconds)], check=True, capture_output=True)
                cpu = session_cpu_seconds(proc.pid) - cpu_before
            sample = json.loads(out.stdout)
            sample["server_cpu_seconds"] = cpu
            sample["msgs_per_s"] = sample["messages"] / sample["seconds"]
            sample["msgs_per_cpu_s"] = sample["messages"] / cpu if cpu else 0.0
            results.setdefault(contender.name, []).append(sample)
            print(
                f"  round {round_index + 1} {contender.name:32s}"
                f" {sample['msgs_per_s']:>10,.0f} msg/s"
                f"  {sample['msgs_per_cpu_s']:>10,.0f} msg/CPU-s  client CPU"
                f" {sample['cpu_seconds'] / sample['seconds']:.0%}",
                flush=True,
            )
    return results


HTTP_APPS = {
    "hello": "greenserve.worker.apps:hello",
    "flask": "tests.bench.servers.flask_json:app",
    "64k": "tests.bench.servers.big_response:app",
}
SLOW_APP = "tests.bench.servers.slow_app:app"


def io_bound(seconds: float, connections: int = 1000) -> list[dict[str, Any]]:
    """1,000 connections on an app that waits 50 ms: throughput and the tail."""

    py = sys.executable
    gunicorn = [py, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}", "--log-level", "warning"]
    contenders = [Contender("greenserve http x2", greenserve_command(SLOW_APP))]
    if importlib.util.find_spec("gunicorn"):
        contenders.append(
            Contender(
                "gunicorn -k gevent x2",
                [*gunicorn, "-k", "gevent", "--worker-connections", "1000", SLOW_APP],
            )
        )
    if shutil.which("granian"):
        contenders.append(
            Contender(
                "granian wsgi x2 (512 threads each)",
                [
                    shutil.which("granian"),
                    "--interface",
                    "wsgi",
                    "--workers",
                    "2",
                    "--blocking-threads",
                    "512",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "{port}",
                    "--no-log",
                    SLOW_APP,
                ],
            )
        )
    rows = []
    print(f"\nI/O-bound app (50 ms wait), wrk -t1 -c{connections} -d{seconds:g}")
    for contender in contenders:
        port = free_port()
        with started(contender, port):
            try:
                wait_http(port)
            except AssertionError:
                print(f"  {contender.name}: did not start")
                continue
            run = wrk(f"http://127.0.0.1:{port}/", connections, seconds, warm=False)
        row = {
            "server": contender.name,
            "requests_per_s": run.requests_per_s,
            "p50_us": run.p50_us,
            "p90_us": run.p90_us,
            "p99_us": run.p99_us,
            "errors": run.errors,
        }
        rows.append(row)
        print(
            f"  {row['server']:34s} {row['requests_per_s']:>9,.0f} req/s  p50 "
            f"{row['p50_us'] / 1000:.0f} ms  p90 {row['p90_us'] / 1000:.0f} ms  p99 "
            f"{row['p99_us'] / 1000:.0f} ms{'  (socket errors)' if row['errors'] else ''}",
            flush=True,
        )
    return rows


def rotated(contenders: list[Contender], round_index: int) -> list[Contender]:
    """Each round starts one contender later: the slot in a round is worth a few percent here
    (the same tree measured in the first and second slot: 30,172 and 32,184 TLS requests per
    CPU-second, medians of 5 rounds), so no contender keeps the same one."""
    shift = round_index % len(contenders) if contenders else 0
    return contenders[shift:] + contenders[:shift]


def greenserve_command(app: str, *extra: str, workers: int = 2) -> list[str]:
    """greenserve serving ``app`` over HTTP on ``{port}``, quiet, as every bench starts it."""
    return [
        sys.executable, "-m", "greenserve", app, "--protocol", "http", "--workers", str(workers),
        "--bind", "127.0.0.1:{port}", "--metrics-bind", "127.0.0.1:0", "--log-level", "warning",
        "--log-format", "json", *extra,
    ]  # fmt: skip


def http_contenders(app_name: str = "hello") -> list[Contender]:
    """Two workers each; nginx only for hello (a static 200 from C: the practical ceiling)."""
    py = sys.executable
    app = HTTP_APPS[app_name]
    gunicorn = [py, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}", "--log-level", "warning"]
    contenders = [Contender("greenserve http x2", greenserve_command(app))]
    contenders += baseline_contenders("greenserve http x2", greenserve_command(app))
    if shutil.which("granian"):  # the Rust WSGI server users pick for speed
        granian = [shutil.which("granian"), "--interface", "wsgi", "--workers", "2"]
        contenders.append(
            Contender(
                "granian wsgi x2",
                [*granian, "--host", "127.0.0.1", "--port", "{port}", "--no-log", app],
            )
        )
    nginx = shutil.which("nginx")
    if nginx and app_name == "hello":
        # run as a module from the checkout: as a script it could not import tests.helpers
        contenders.append(
            Contender(
                "nginx return 200 x2", [py, "-m", "tests.bench.run", "--nginx", nginx, "{port}"]
            )
        )
    if importlib.util.find_spec("gunicorn"):
        contenders += [
            Contender("gunicorn -k gevent x2", [*gunicorn, "-k", "gevent", app]),
            Contender("gunicorn -k gevent_pywsgi x2", [*gunicorn, "-k", "gevent_pywsgi", app]),
        ]
    return contenders


def wait_http(port: int, timeout: float = 20) -> None:
    url = f"http://127.0.0.1:{port}/"
    wait_until(lambda: _answers_200(url), timeout, f"HTTP 200 on port {port}")


def _wrk_latency_us(text: str, percentile: str) -> float:
    import re

    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)", text, re.M)
    if not match:
        return float("nan")
    scale = {"us": 1, "ms": 1000, "s": 1_000_000}[match.group(2)]
    return float(match.group(1)) * scale


@dataclass
class WrkRun:
    """One wrk run: what the client saw, and the servers' CPU meanwhile."""

    requests_per_s: float
    p50_us: float
    p90_us: float
    p99_us: float
    cpu_seconds: float
    seconds: float
    errors: bool

    @property
    def per_cpu_s(self) -> float:
        return self.requests_per_s * self.seconds / self.cpu_seconds if self.cpu_seconds else 0.0


def wrk(
    url: str,
    connections: int,
    seconds: float,
    *extra: str,
    sessions: tuple[int, ...] = (),
    warm: bool = True,
    cpu: str = "",
) -> WrkRun:
    """``wrk -t1`` on ``url`` (a 1 s warm-up first), with the CPU of the ``sessions``' processes;
    ``cpu``: the CPUs wrk may run on (taskset's list), else any."""
    import re

    pin = ["taskset", "-c", cpu] if cpu else []
    if warm:
        subprocess.run(
            [*pin, "wrk", "-t1", f"-c{connections}", "-d1", *extra, url], capture_output=True
        )
    before = sum(session_cpu_seconds(pid) for pid in sessions)
    out = subprocess.run(
        [*pin, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}", "--latency", *extra, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = sum(session_cpu_seconds(pid) for pid in sessions) - before
    return WrkRun(
        requests_per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        p50_us=_wrk_latency_us(out, "50"),
        p90_us=_wrk_latency_us(out, "90"),
        p99_us=_wrk_latency_us(out, "99"),
        cpu_seconds=cpu,
        seconds=seconds,
        errors="Socket errors" in out or "Non-2xx" in out,
    )


def wrk_rounds(
    contenders: list[Contender],
    rounds: int,
    connections: int,
    seconds: float,
    *extra: str,
    cpu: str = "",
) -> dict[str, list[float]]:
    """Interleaved rounds of ``wrk`` on ``/`` of each contender (started fresh each round, one
    contender later each round), printed as they come: requests per server CPU-second."""
    results: dict[str, list[float]] = {c.name: [] for c in contenders}
    width = max((len(c.name) for c in contenders), default=0)
    for round_index in range(rounds):
        for contender in rotated(contenders, round_index):
            port = free_port()
            with started(contender, port) as proc:
                wait_http(port)
                result = wrk(
                    f"http://127.0.0.1:{port}/",
                    connections,
                    seconds,
                    *extra,
                    sessions=(proc.pid,),
                    cpu=cpu,
                )
            results[contender.name].append(result.per_cpu_s)
            print(
                f"  round {round_index + 1} {contender.name:{width}s} "
                f"{result.per_cpu_s:>9,.0f} req/CPU-s",
                flush=True,
            )
    return results


def run_http(rounds: int, seconds: float, app_name: str = "hello") -> dict[str, list[dict]]:
    """Interleaved rounds; a contender that does not start is reported and left out."""

    results: dict[str, list[dict]] = {}
    contenders = http_contenders(app_name)
    for round_index in range(rounds):
        for contender in rotated(contenders, round_index):
            port = free_port()
            with started(contender, port) as proc:
                try:
                    wait_http(port)
                except AssertionError as exc:
                    print(f"  round {round_index + 1} {contender.name:30s} did not start: {exc}")
                    results.setdefault(contender.name, [])
                    continue
                run = wrk(f"http://127.0.0.1:{port}/", 64, seconds, sessions=(proc.pid,))
            rps = run.requests_per_s
            sample = {
                "round": round_index + 1,
                "requests_per_s": rps,
                "p50_us": run.p50_us,
                "p99_us": run.p99_us,
                "server_cpu_seconds": run.cpu_seconds,
                "requests_per_cpu_s": run.per_cpu_s,
                "errors": run.errors,
            }
            results.setdefault(contender.name, []).append(sample)
            print(
                f"  round {round_index + 1} {contender.name:30s} {rps:>10,.0f} req/s"
                f"  p99 {sample['p99_us'] / 1000:.2f} ms  {sample['requests_per_cpu_s']:>9,.0f}"
                f" req/CPU-s",
                flush=True,
            )
    return results


def http_table(results: dict[str, list[dict]], title: str) -> list[dict[str, Any]]:
    print(f"\n{title}, wrk -t1 -c64, medians")
    print(f"{'server':30s} {'req/s':>10s} {'p50 ms':>7s} {'p99 ms':>7s} {'req/CPU-s':>10s}")
    rows = []
    for name, samples in results.items():
        if not samples:
            print(f"{name:30s} did not start")
            continue
        row = {
            "server": name,
            "requests_per_s": median(samples, "requests_per_s"),
            "p50_us": median(samples, "p50_us"),
            "p99_us": median(samples, "p99_us"),
            "requests_per_cpu_s": median(samples, "requests_per_cpu_s"),
            "errors": any(s["errors"] for s in samples),
        }
        rows.append(row)
        print(
            f"{name:30s} {row['requests_per_s']:>10,.0f} {row['p50_us'] / 1000:>7.2f}"
            f" {row['p99_us'] / 1000:>7.2f} {row['requests_per_cpu_s']:>10,.0f}"
        )
    return rows


def paired_ratios(results: dict[str, list[dict]], ours: str, other: str) -> list[float]:
    """``ours`` / ``other`` per server CPU-second within each round, in round order. Printed
    beside the medians, not instead of them: granian's own rounds fall into two groups here
    (about 32,000 or 50,000 hello requests per CPU-second), so the ratio of medians depends on
    how many of its rounds were fast, and the rounds show which."""
    key = "requests_per_cpu_s"
    theirs = {s["round"]: s[key] for s in results.get(other, [])}
    return [s[key] / theirs[s["round"]] for s in results.get(ours, []) if theirs.get(s["round"])]


def http_goals(rows: list[dict[str, Any]], app_name: str) -> list[dict]:
    """Ratios per server CPU-second against gunicorn's pywsgi worker and granian."""
    by_name = {row["server"]: row for row in rows}
    ours = by_name.get("greenserve http x2")
    goals: list[dict] = []
    if ours is None:
        return goals
    pywsgi = by_name.get("gunicorn -k gevent_pywsgi x2")
    granian = by_name.get("granian wsgi x2")
    print(f"\nGoals ({app_name})")
    if pywsgi and app_name == "hello":
        goals.append(
            goal(
                "HTTP hello req per CPU-s vs gunicorn gevent_pywsgi",
                ours["requests_per_cpu_s"] / pywsgi["requests_per_cpu_s"],
                3.0,
            )
        )
        goals.append(
            goal(
                "HTTP hello p99 vs gunicorn gevent_pywsgi",
                ours["p99_us"] / pywsgi["p99_us"],
                0.25,
                False,
            )
        )
    if granian and app_name in ("hello", "flask"):  # 64k is a reference, without a goal
        target = 1.0 if app_name == "hello" else 1.1
        goals.append(
            goal(
                f"HTTP {app_name} req per CPU-s vs granian",
                ours["requests_per_cpu_s"] / granian["requests_per_cpu_s"],
                target,
            )
        )
        goals.append(
            goal(f"HTTP {app_name} p99 vs granian", ours["p99_us"] / granian["p99_us"], 1.25, False)
        )
    return goals


def median(samples: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def echo_table(results: dict[str, list[dict]]) -> list[dict[str, Any]]:
    base = results["greenserve"]
    rows = []
    print(f"\nTCP echo, {WORKERS} workers, medians")
    header = f"{'server':32s} {'msg/s':>10s} {'p50 us':>7s} {'p99 us':>7s} {'msg/CPU-s':>10s}"
    print(header + f" {'client CPU':>10s} {'greenserve/it (CPU)':>20s}")
    for name, samples in results.items():
        per_cpu = median(samples, "msgs_per_cpu_s")
        ratio = median(base, "msgs_per_cpu_s") / per_cpu if per_cpu else 0.0
        client = statistics.median(s["cpu_seconds"] / s["seconds"] for s in samples)
        row = {
            "server": name,
            "msgs_per_s": median(samples, "msgs_per_s"),
            "p50_us": median(samples, "p50_us"),
            "p99_us": median(samples, "p99_us"),
            "msgs_per_cpu_s": per_cpu,
            "client_cpu": client,
            "greenserve_ratio_cpu": ratio,
        }
        rows.append(row)
        print(
            f"{name:32s} {row['msgs_per_s']:>10,.0f} {row['p50_us']:>7.0f} {row['p99_us']:>7.0f}"
            f" {per_cpu:>10,.0f} {client:>10.0%} {ratio:>19.3f}x"
        )
    return rows


def goal(label: str, value: float, target: float, higher_is_better: bool = True) -> dict:
    ok = value >= target if higher_is_better else value <= target
    relation = ">=" if higher_is_better else "<="
    print(f"  {'pass ' if ok else 'short'}  {label}: {value:.3f} (goal {relation} {target})")
    return {"goal": label, "value": value, "target": target, "pass": ok}


def scrape_timing(workers: int, scrapes: int) -> dict[str, float]:
    """Time real scrapes of a master with ``workers`` workers' worth of series."""
    port = free_port()
    mport = free_port()
    contender = Contender(
        "greenserve",
        [
            sys.executable,
            "-m",
            "greenserve",
            "--workers",
            str(workers),
            "--bind",
            "127.0.0.1:{port}",
            "--metrics-bind",
            f"127.0.0.1:{mport}",
            "--log-level",
            "warning",
            "--log-format",
            "json",
        ],
    )
    url = f"http://127.0.0.1:{mport}/metrics"
    with started(contender, port):
        _healthy(mport, timeout=120)
        timings = []
        for _ in range(scrapes):
            started_at = time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
            timings.append(time.perf_counter() - started_at)
    return {
        "workers": workers,
        "bytes": len(body),
        "median_ms": statistics.median(timings) * 1000,
        "max_ms": max(timings) * 1000,
    }


def _greenserve(port: int, mport: int, *extra: str) -> Contender:
    return Contender(
        "greenserve",
        [
            sys.executable,
            "-m",
            "greenserve",
            "--bind",
            "127.0.0.1:{port}",
            "--metrics-bind",
            f"127.0.0.1:{mport}",
            "--log-format",
            "json",
            "--stats-interval",
            "0.05",
            *extra,
        ],
    )


def _healthy(mport: int, timeout: float = 30) -> None:
    url = f"http://127.0.0.1:{mport}/healthz"
    wait_until(lambda: _answers_200(url), timeout, "/healthz 200")


def _worker_pid(mport: int, timeout: float = 30) -> int:
    """Worker 0's pid from /metrics. /healthz turns 200 on the worker's ready message, which can
    come before its first stats report: until then the gauge reads 0 (seen on a busy machine)."""
    return int(
        wait_until(lambda: _metric(mport, "greenserve_worker_pid").get("0"), timeout, "worker pid")
    )


def _active_reaches(mport: int, total: int, timeout: float) -> dict[str, float]:
    """Per-worker open connections, once they add up to ``total``."""

    def counts() -> dict[str, float] | None:
        found = _metric(mport, "greenserve_connections_active")
        return found if sum(found.values()) == total else None

    return wait_until(counts, timeout, f"{total} open connections on /metrics")


def _metric(mport: int, name: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{mport}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        sample.labels.get("worker", ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def balance(rounds: int) -> dict[str, Any]:
    """Open connections per worker after a burst of 50 and of 500 held connections."""
    results: dict[str, list[float]] = {}
    for mode, extra in (("shared socket", ()), ("--reuse-port", ("--reuse-port",))):
        for size in (50, 500):
            for _ in range(rounds):
                port, mport = free_port(), free_port()
                with started(_greenserve(port, mport, "--workers", str(WORKERS), *extra), port):
                    wait_port(port)
                    _healthy(mport)
                    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(size)]
                    for sock in socks:
                        sock.sendall(b"b")
                    for sock in socks:
                        sock.recv(1)
                    counts = _active_reaches(mport, size, timeout=5)
                    for sock in socks:
                        sock.close()
                ratio = max(counts.values()) / max(min(counts.values()), 1)
                results.setdefault(f"{mode}, burst of {size}", []).append(ratio)
    print("\nBalance: open connections per worker after a burst, max/min (median of rounds)")
    for name, ratios in results.items():
        each = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"  {name:32s} {statistics.median(ratios):.2f}  (rounds: {each})")
    return {name: statistics.median(r) for name, r in results.items()}


IDLE_REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


def idle_memory(connections: int, mode: str = "echo") -> dict[str, float]:
    """RSS growth of one worker per idle connection at ``connections`` connections.

    ``mode``: "echo" (TCP, nothing sent), "http" (an HTTP worker, nothing sent: a proxy's
    pre-opened pool) or "http after a request" (each answered once, then idle in keep-alive).
    """
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, connections * 2 + 1000), hard))
    port, mport = free_port(), free_port()
    protocol = () if mode == "echo" else ("greenserve.worker.apps:hello", "--protocol", "http")
    limit = ("--max-connections", str(connections + 100), "--keepalive-timeout", "600")
    with started(_greenserve(port, mport, "--workers", "1", *protocol, *limit), port) as proc:
        (wait_port if mode == "echo" else wait_http)(port)
        _healthy(mport)
        worker = _worker_pid(mport)
        if mode == "http after a request":  # a first request: its one-time allocations
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(IDLE_REQUEST)
                sock.recv(4096)
        before = _rss(worker)
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
        if mode == "http after a request":
            for sock in socks:
                sock.sendall(IDLE_REQUEST)
            for sock in socks:
                if not sock.recv(4096).startswith(b"HTTP/1.1 200 "):
                    raise RuntimeError("an idle-memory request was not answered")
        _active_reaches(mport, connections, timeout=30)
        after = _rss(worker)
        for sock in socks:
            sock.close()
        assert proc.poll() is None
    per = (after - before) / connections
    print(
        f"\nMemory, {mode}: {connections:,} idle connections on one worker: "
        f"+{(after - before) / 1e6:.1f} MB, {per / 1024:.2f} KiB per connection"
    )
    return {"connections": connections, "rss_growth_bytes": after - before, "per_connection": per}


def _rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def respawn(rounds: int) -> dict[str, float]:
    """Start to first echo, and SIGKILL of a worker to its replacement serving (from the log)."""
    starts, respawns = [], []
    for _ in range(rounds):
        port, mport = free_port(), free_port()
        argv = [
            part.replace("{port}", str(port))
            for part in _greenserve(port, mport, "--workers", "2").argv
        ]
        began = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        try:
            starts.append(wait_port(port) - began)
            _healthy(mport)
            victim = _worker_pid(mport)
            killed = time.time()
            os.kill(victim, signal.SIGKILL)
            assert proc.stdout is not None
            for line in proc.stdout:
                event = json.loads(line)
                if (
                    event.get("event") == "worker_started"
                    and event.get("worker") == 0
                    and event["pid"] != victim
                ):
                    from datetime import datetime

                    serving = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                    respawns.append(serving.timestamp() - killed)
                    break
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
    result = {
        "start_to_first_echo_s": statistics.median(starts),
        "kill_to_serving_s": statistics.median(respawns),
    }
    print(
        f"\nStart to first echo: median {result['start_to_first_echo_s'] * 1000:.0f} ms; "
        "worker SIGKILL to replacement serving: median "
        f"{result['kill_to_serving_s'] * 1000:.0f} ms ({rounds} rounds)"
    )
    return result


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("echo", "msgs_per_cpu_s", "TCP echo: messages per server CPU-second"),
        ("http_hello", "requests_per_cpu_s", "HTTP hello: requests per server CPU-second"),
        ("http_flask", "requests_per_cpu_s", "Flask JSON: requests per server CPU-second"),
    ]
    panels = [p for p in panels if p[0] in report]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5))
    for ax, (key, field_, title) in zip(np.atleast_1d(axes), panels, strict=True):
        rows = report[key]
        names = [row["server"] for row in rows]
        values = [row[field_] for row in rows]
        colors = ["#2a9d8f" if name.startswith("greenserve") else "#9aa5b1" for name in names]
        ax.barh(names, values, color=colors)
        ax.invert_yaxis()
        ax.set_title(title)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:,.0f}", va="center")
        ax.margins(x=0.25)
        ax.xaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda value, _: f"{value / 1000:.0f}k")
        )
    fig.suptitle(f"greenserve side by side, {WORKERS} CPUs, medians of interleaved rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def exec_nginx(nginx: str, http: str) -> None:
    """Become nginx in the foreground: two workers, no access log, its files in a temporary
    folder of its own, ``http`` (directives and server blocks) inside the http block."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="greenserve-bench-nginx-"))
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = " ".join(f"{kind}_temp_path {folder};" for kind in kinds)
    (folder / "nginx.conf").write_text(
        f"worker_processes 2;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; {temp}\n  {http} }}\n"
    )
    os.execv(
        nginx, [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"]
    )


def run_nginx(nginx: str, port: str, cert: str = "", key: str = "") -> None:
    """Run nginx in the foreground with two workers answering 200 with the hello body; with
    ``cert`` and ``key``, over TLS."""
    tls = f" ssl; ssl_certificate {cert}; ssl_certificate_key {key}" if cert else ""
    exec_nginx(
        nginx,
        f"server {{ listen 127.0.0.1:{port}{tls}; location / {{ default_type text/plain;\n"
        '    return 200 "Hello, world!\\n"; } }',
    )


def main() -> None:
    if sys.argv[1:2] == ["--nginx"]:
        run_nginx(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--scrape-workers", type=int, default=64)
    parser.add_argument(
        "--only",
        choices=("all", "echo", "http", "lifecycle", "tls", "io"),
        default="all",
        help="lifecycle = balance, idle memory, respawn",
    )
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another greenserve checkout (e.g. a git worktree of main) to run alongside",
    )
    args = parser.parse_args()
    if args.baseline:
        # both copies of this module: run as __main__, and imported by tests.bench.tls
        from tests.bench import run as imported

        for registry in {id(BASELINE): BASELINE, id(imported.BASELINE): imported.BASELINE}.values():
            registry.append(args.baseline.resolve())

    shown = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report: dict[str, Any] = {"cpus": WORKERS, "args": shown}
    goals: list[dict] = []
    if args.only == "io":
        report["io_bound"] = io_bound(args.seconds)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "latest-io.json").write_text(json.dumps(report, indent=2))
        return
    if args.only == "tls":
        from tests.bench import tls

        report["tls"] = tls.run(args.rounds, args.seconds)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "latest-tls.json").write_text(json.dumps(report, indent=2))
        return
    if args.only in ("all", "http"):
        for app_name in HTTP_APPS:
            print(f"HTTP {app_name}: wrk -t1 -c64, two workers each")
            http = run_http(args.rounds, args.seconds, app_name)
            report[f"http_{app_name}_raw"] = http
            rows = http_table(http, f"HTTP {app_name}")
            report[f"http_{app_name}"] = rows
            ratios = paired_ratios(http, "greenserve http x2", "granian wsgi x2")
            if ratios:
                print(
                    "per round, greenserve / granian req per CPU-s: "
                    + " ".join(f"{r:.2f}" for r in ratios)
                    + f" (median {statistics.median(ratios):.2f})"
                )
            goals += http_goals(rows, app_name)
    if args.only in ("all", "lifecycle"):
        report["balance"] = balance(args.rounds)
        report["memory"] = idle_memory(args.idle_connections)
        report["memory_http"] = idle_memory(args.idle_connections, "http")
        report["memory_http_after_request"] = idle_memory(
            args.idle_connections, "http after a request"
        )
        report["respawn"] = respawn(args.rounds)
        print("\nGoals")
        for name, ratio in report["balance"].items():
            goals.append(goal(f"balance max/min, {name}", ratio, 1.25, False))
        for key, name in (
            ("memory", "KiB per idle connection"),
            ("memory_http", "KiB per idle HTTP connection"),
            ("memory_http_after_request", "KiB per idle HTTP connection after a request"),
        ):
            goals.append(goal(name, report[key]["per_connection"] / 1024, 10, False))
        goals.append(
            goal(
                "respawn to serving (ms)", report["respawn"]["kill_to_serving_s"] * 1000, 300, False
            )
        )
    if args.only in ("http", "lifecycle"):
        report["goals"] = goals
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"latest-{args.only}.json").write_text(json.dumps(report, indent=2))
        if args.only == "http":
            chart(report, RESULTS / "latest-http.png")
        return
    print(f"TCP echo: {args.connections} connections in lockstep, {args.size}-byte messages")
    echo = run_echo(args.rounds, args.seconds, args.connections, args.size)
    report["echo_raw"] = echo
    report["echo"] = echo_table(echo)
    per_cpu = {row["server"]: row["msgs_per_cpu_s"] for row in report["echo"]}
    print("\nGoals")
    goals = [
        goal(
            "echo per CPU-s vs seed classic",
            per_cpu["greenserve"] / per_cpu["seed classic (1 process)"],
            1.0,
        ),
        goal(
            "echo per CPU-s vs bare StreamServer",
            per_cpu["greenserve"] / per_cpu[f"bare StreamServer x{WORKERS}"],
            0.95,
        ),
        goal(
            "stats cost: counting on / off per CPU-s",
            per_cpu["greenserve"] / per_cpu["greenserve (counting off)"],
            0.97,
        ),
    ]
    scrape = scrape_timing(args.scrape_workers, 20)
    print(
        f"\n/metrics with {scrape['workers']} workers: {scrape['bytes']:,} bytes,"
        f" median {scrape['median_ms']:.1f} ms, max {scrape['max_ms']:.1f} ms"
    )
    goals.append(
        goal(
            f"scrape with {scrape['workers']} workers (ms, median)", scrape["median_ms"], 50, False
        )
    )
    report["scrape"] = scrape
    report["goals"] = goals
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2))
    chart(report, RESULTS / "latest.png")
    print(f"\nraw results: {RESULTS / 'latest.json'}")
    print(
        "\nSummary: " + ", ".join(f"{g['goal']} {'pass' if g['pass'] else 'short'}" for g in goals)
    )


if __name__ == "__main__":
    main()
