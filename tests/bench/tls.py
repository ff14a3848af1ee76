"""TLS side by side: HTTPS hello on keep-alive connections, new handshakes per second (ECDSA
P-256), and memory per idle TLS connection. Part of ``python -m tests.bench.run --only tls``."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.bench.run import (
    Contender,
    _active_reaches,
    _greenserve,
    _healthy,
    _rss,
    _worker_pid,
    baseline_contenders,
    free_port,
    rotated,
    started,
    wrk,
)
from tests.helpers import wait_until


def certificates() -> dict[str, str]:
    """An ECDSA P-256 server certificate for 127.0.0.1 (trustme) in a temporary folder."""
    import trustme

    folder = Path(tempfile.mkdtemp(prefix="greenserve-bench-tls-"))
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    cert = ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.ECDSA)
    paths = {
        "cert": str(folder / "cert.pem"),
        "key": str(folder / "key.pem"),
        "ca": str(folder / "ca.pem"),
        "folder": str(folder),
    }
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    return paths


def contenders(pki: dict[str, str]) -> list[Contender]:
    py = sys.executable
    app = "greenserve.worker.apps:hello"
    greenserve = Contender(
        "greenserve https x2",
        [
            py,
            "-m",
            "greenserve",
            app,
            "--protocol",
            "http",
            "--workers",
            "2",
            "--bind",
            "127.0.0.1:{port}",
            "--metrics-bind",
            "127.0.0.1:0",
            "--log-level",
            "warning",
            "--log-format",
            "json",
            "--certfile",
            pki["cert"],
            "--keyfile",
            pki["key"],
        ],
    )
    out = [
        greenserve,
        *baseline_contenders(greenserve.name, greenserve.argv),
        Contender(
            "gunicorn -k gevent_pywsgi x2 (TLS)",
            [
                py,
                "-m",
                "gunicorn",
                "-w",
                "2",
                "-b",
                "127.0.0.1:{port}",
                "--log-level",
                "warning",
                "-k",
                "gevent_pywsgi",
                "--certfile",
                pki["cert"],
                "--keyfile",
                pki["key"],
                app,
            ],
        ),
    ]
    nginx = shutil.which("nginx")
    if nginx:
        out.append(
            Contender(
                "nginx return 200 x2 (TLS)",
                [
                    py,
                    "-m",
                    "tests.bench.run",
                    "--nginx",
                    nginx,
                    "{port}",
                    pki["cert"],
                    pki["key"],
                ],
            )
        )
    return out


def _ready(port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
        context.wrap_socket(raw) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        return sock.recv(64).startswith(b"HTTP/1.1 200")
    return False


def measure(contender: Contender, seconds: float, close: bool) -> dict[str, Any] | None:
    port = free_port()
    with started(contender, port) as proc:
        try:
            wait_until(lambda: _ready(port), 20, f"HTTPS on {port}")
        except AssertionError:
            return None
        extra = ("-H", "Connection: close") if close else ()
        result = wrk(f"https://127.0.0.1:{port}/", 16 if close else 64, seconds, *extra,
                     sessions=(proc.pid,))  # fmt: skip
    return {"per_s": result.requests_per_s, "per_cpu_s": result.per_cpu_s}


def run(rounds: int, seconds: float) -> dict[str, Any]:
    pki = certificates()
    table: dict[str, dict[str, list[float]]] = {}
    for mode, close in (("keep-alive requests", False), ("new TLS handshakes", True)):
        for index in range(rounds):
            for contender in rotated(contenders(pki), index):
                sample = measure(contender, seconds, close)
                key = table.setdefault(f"{mode}: {contender.name}", {"per_s": [], "per_cpu_s": []})
                if sample is None:
                    print(f"  {mode} round {index + 1} {contender.name}: did not start")
                    continue
                key["per_s"].append(sample["per_s"])
                key["per_cpu_s"].append(sample["per_cpu_s"])
                print(
                    f"  {mode} round {index + 1} {contender.name:36s} {sample['per_s']:>9,.0f}/s"
                    f" {sample['per_cpu_s']:>9,.0f} per server CPU-s",
                    flush=True,
                )
    medians = {
        name: {k: statistics.median(v) if v else 0.0 for k, v in values.items()}
        for name, values in table.items()
    }
    print("\nTLS, medians (per second / per server CPU-second)")
    for name, row in medians.items():
        print(f"  {name:60s} {row['per_s']:>9,.0f} {row['per_cpu_s']:>9,.0f}")
    ratios = {}
    for mode in ("keep-alive requests", "new TLS handshakes"):
        ours = medians.get(f"{mode}: greenserve https x2", {}).get("per_cpu_s", 0.0)
        for other in ("gunicorn -k gevent_pywsgi x2 (TLS)", "nginx return 200 x2 (TLS)"):
            theirs = medians.get(f"{mode}: {other}", {}).get("per_cpu_s", 0.0)
            if ours and theirs:
                ratios[f"{mode}, greenserve / {other}"] = ours / theirs
                print(f"  {mode}: greenserve / {other}: {ours / theirs:.2f}x per CPU-second")
    memory = idle_tls_memory(pki, 2000)
    shutil.rmtree(pki["folder"], ignore_errors=True)
    return {"medians": medians, "ratios": ratios, "memory": memory}


def idle_tls_memory(pki: dict[str, str], connections: int) -> dict[str, float]:
    """RSS growth of one worker per idle TLS connection (handshake done, no request)."""
    port, mport = free_port(), free_port()
    contender = _greenserve(
        port,
        mport,
        "--workers",
        "1",
        "--max-connections",
        str(connections + 100),
        "--certfile",
        pki["cert"],
        "--keyfile",
        pki["key"],
        "--idle-timeout",
        "0",
    )
    context = ssl.create_default_context(cafile=pki["ca"])
    with started(contender, port):
        _healthy(mport)
        worker = _worker_pid(mport)
        before = _rss(worker)
        socks = []
        for _ in range(connections):
            raw = socket.create_connection(("127.0.0.1", port))
            socks.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        _active_reaches(mport, connections, timeout=60)
        after = _rss(worker)
        for sock in socks:
            sock.close()
    per = (after - before) / connections
    print(
        f"\nMemory: {connections:,} idle TLS connections on one worker: "
        f"{per / 1024:.2f} KiB per connection"
    )
    return {"connections": connections, "per_connection": per}
