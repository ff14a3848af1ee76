"""Three greenserve hosts behind a real HAProxy, scraped by a real Prometheus.

Each host is a Linux network namespace with its own address in 198.18.0.0/15 (the range
reserved for network benchmarking), joined to this machine by a veth pair on a bridge. HAProxy
runs with the shipped configuration, adapted to those addresses; Prometheus with the shipped
fleet configuration (file_sd). A client load goes through HAProxy, a new connection per request.
Slow (about a minute): ``pytest -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import (
    APPS_DIR,
    ROOT,
    STARTED_GROUPS,
    ClientLoad,
    free_port,
    need,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEPLOY = ROOT / "deploy"
BRIDGE_ADDRESS = "198.18.0.254"
HOSTS = ("198.18.0.1", "198.18.0.2", "198.18.0.3")
DRAIN_DELAY = 3.0  # above HAProxy's detection: inter 0.5 s x fall 2


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=check)


class Network:
    """A bridge and one namespace per host; everything is removed by ``close``, also on failure."""

    def __init__(self) -> None:
        suffix = os.getpid() % 10000
        self.bridge = f"gsbr{suffix}"
        self.names = [f"gs{suffix}h{n}" for n in range(len(HOSTS))]
        self.links: list[str] = []

    def open(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for index, (name, address) in enumerate(zip(self.names, HOSTS, strict=True)):
            outside, inside = f"{self.bridge}v{index}", f"{self.bridge}p{index}"
            sh("ip", "netns", "add", name)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            self.links.append(outside)
            sh("ip", "link", "set", outside, "master", self.bridge)
            sh("ip", "link", "set", outside, "up")
            sh("ip", "link", "set", inside, "netns", name)
            sh("ip", "-n", name, "addr", "add", f"{address}/24", "dev", inside)
            sh("ip", "-n", name, "link", "set", inside, "up")
            sh("ip", "-n", name, "link", "set", "lo", "up")

    def close(self) -> None:
        for name in self.names:
            pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


class Host:
    """greenserve in one namespace: the app on :8000, metrics and /healthz on :9191."""

    def __init__(self, namespace: str, address: str, log: Path) -> None:
        self.namespace, self.address, self.log = namespace, address, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [
            "ip", "netns", "exec", self.namespace, sys.executable, "-m", "greenserve",
            "greenserve_testapps:environ_echo_remote", "--protocol", "http", "-w", "1",
            "--bind", f"{self.address}:8000", "--metrics-bind", f"{self.address}:9191",
            "--proxy-protocol", "--proxy-allow-from", BRIDGE_ADDRESS,
            "--drain-delay", str(DRAIN_DELAY), "--graceful-timeout", "5",
            "--stats-interval", "0.2", "--log-format", "json",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("GREENSERVE_")}
        with self.log.open("ab") as output:
            self.proc = subprocess.Popen(
                argv,
                cwd=APPS_DIR,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        STARTED_GROUPS.append(self.proc.pid)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}:9191/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def client_address(url: str) -> str:
    """One request through HAProxy; the client address the app saw."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["REMOTE_ADDR"]


def haproxy_config(shipped: str, port: int, stats: int) -> str:
    """The shipped config with this test's addresses and faster checks; the rest as shipped."""
    text = shipped.replace("bind 0.0.0.0:8080", f"bind 127.0.0.1:{port}")
    text = text.replace("bind 127.0.0.1:8404", f"bind 127.0.0.1:{stats}")
    text = text.replace("inter 1s", "inter 500ms")
    text = re.sub(r"    server web\d .*\n", "", text)
    servers = "".join(
        f"    server web{n + 1} {address}:8000 check port 9191\n" for n, address in enumerate(HOSTS)
    )
    return text.replace("\nfrontend stats", servers + "\nfrontend stats")


def prometheus_query(api: str, query: str) -> float | None:
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        url = f"{api}/query?query={urllib.request.quote(query)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.loads(response.read())["data"]["result"]
        return float(result[0]["value"][1])
    return None


def backend_up(stats: int, server: str) -> bool | None:
    """HAProxy's view of one server, from its CSV stats."""
    url = f"http://127.0.0.1:{stats}/stats;csv"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        for line in response.read().decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "greenserve" and fields[1] == server:
                return fields[17].startswith("UP")
    return None


@contextlib.contextmanager
def running_fleet(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Three hosts, HAProxy and Prometheus, as the test and tests/bench/fleet.py use them."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the fleet test needs root for network namespaces")
        pytest.skip("network namespaces need root")
    haproxy, prometheus = need("haproxy"), need("prometheus")
    need("ip")
    network = Network()
    procs: list[subprocess.Popen] = []
    try:
        try:
            network.open()
        except subprocess.CalledProcessError as exc:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"network namespaces are not permitted here: {exc.stderr.strip()}")
        hosts = [
            Host(name, address, tmp_path / f"host{n}.log")
            for n, (name, address) in enumerate(zip(network.names, HOSTS, strict=True))
        ]
        for host in hosts:
            host.start()
        wait_until(lambda: all(h.healthy() for h in hosts), 30, "three healthy hosts")
        port, stats, web = free_port(), free_port(), free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            haproxy_config((DEPLOY / "haproxy" / "haproxy.cfg").read_text(), port, stats)
        )
        procs.append(
            subprocess.Popen(
                [haproxy, "-f", str(config)],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        shutil.copy(DEPLOY / "prometheus" / "recording.yml", tmp_path / "recording.yml")
        scrape = yaml.safe_load((DEPLOY / "prometheus" / "fleet.yml").read_text())
        scrape["global"]["scrape_interval"] = "500ms"  # to keep the test short
        (tmp_path / "fleet.yml").write_text(yaml.safe_dump(scrape))
        (tmp_path / "greenserve-targets.json").write_text(
            json.dumps([{"targets": [f"{address}:9191" for address in HOSTS]}])
        )
        procs.append(
            subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={tmp_path / 'fleet.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{web}",
                ],
                cwd=tmp_path,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for proc in procs:
            STARTED_GROUPS.append(proc.pid)
        wait_until(lambda: all(backend_up(stats, f"web{n}") for n in (1, 2, 3)), 20, "all UP")
        yield {
            "hosts": hosts,
            "url": f"http://127.0.0.1:{port}/",
            "stats": stats,
            "haproxy_pids": [procs[0].pid],
            "api": f"http://127.0.0.1:{web}/api/v1",
            "logs": tmp_path,
        }
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        network.close()


@pytest.fixture()
def fleet(tmp_path):
    with running_fleet(tmp_path) as running:
        yield running


def test_fleet(fleet):
    """Rolling restart with 0 failed, a host killed and detected, real client addresses, and
    Prometheus's sum over the hosts equal to the client's count."""
    hosts, stats = fleet["hosts"], fleet["stats"]
    load = ClientLoad(lambda: client_address(fleet["url"])).start()
    try:
        load.more(300)
        # 1. Rolling restart: TERM (drain: /healthz 503, HAProxy stops routing), wait, start.
        rolling_start, before = time.monotonic(), load.ok
        for number, host in enumerate(hosts, 1):
            assert host.stop() == 0
            host.start()
            wait_until(host.healthy, 30, "the host healthy again")
            wait_until(lambda n=number: backend_up(stats, f"web{n}"), 20, "back in rotation")
            load.more(100)
        rolled = load.ok - before
        print(
            f"\nrolling restart of 3 hosts: {rolled} requests in "
            f"{time.monotonic() - rolling_start:.1f} s, {len(load.failed)} failed"
        )
        assert load.failed == [], load.failed[:5]
        # 2. SIGKILL one host's whole process tree: HAProxy notices, the others serve.
        killed_at = time.monotonic()
        hosts[1].kill()
        wait_until(lambda: backend_up(stats, "web2") is False, 10, "web2 marked DOWN")
        detection = time.monotonic() - killed_at
        failed_after_kill = len(load.failed)
        load.more(200)
        print(
            f"host SIGKILLed: HAProxy stopped routing to it after {detection * 1000:.0f} ms; "
            f"{failed_after_kill} requests failed (in flight on it)"
        )
        # Outcomes, not timings: whatever failed was sent while web2 was dying, before HAProxy
        # marked it down (how many depends on how loaded the machine is); nothing after.
        marked_down = killed_at + detection
        late = [t - marked_down for t in load.failed_at if t > marked_down + 0.5]
        assert late == [], f"failures after web2 was marked down: {late}"
        hosts[1].start()
        wait_until(hosts[1].healthy, 30, "the killed host back")
        wait_until(lambda: backend_up(stats, "web2"), 20, "web2 back in rotation")
        load.more(200)
    finally:
        load.end()
    # 3. Every request reached the app with the client's own address, never HAProxy's.
    assert load.seen == {"127.0.0.1"}, load.seen
    # 4. Prometheus: the sum over the three hosts matches the client's count of successes.
    api = fleet["api"]
    query = "sum(greenserve_http_requests_total)"
    counted = ClientLoad(lambda: client_address(fleet["url"]), threads=2)

    def direct_sum() -> float:
        """The same sum read from each host's own /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for host in hosts:
            url = f"http://{host.address}:9191/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            for family in text_string_to_metric_families(text):
                total += sum(
                    s.value for s in family.samples if s.name == "greenserve_http_requests_total"
                )
        return total

    seen = {"value": None, "since": 0.0}

    def settled() -> float | None:
        """Prometheus's sum, once it equals the hosts' own and has held still for 0.6 s: a
        request served just before is counted only at the next stats flush (0.2 s)."""
        direct = direct_sum()
        now = time.monotonic()
        if direct != seen["value"]:
            seen["value"], seen["since"] = direct, now
            return None
        scraped = prometheus_query(api, query)
        return scraped if now - seen["since"] >= 0.6 and scraped == direct else None

    base = wait_until(settled, 30, "a settled sum before the counted load")
    counted.start()
    counted.more(500)
    counted.end()
    assert counted.failed == []
    seen["value"] = None
    after = wait_until(settled, 30, "a settled sum after the counted load")
    assert after - base == counted.ok, (base, after, counted.ok)
    print(f"Prometheus sum over 3 hosts rose by {counted.ok}, the client's count")
