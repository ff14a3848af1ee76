"""The files in deploy/ work as they are: real supervisord, Prometheus, promtool, systemd."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from tests.helpers import (
    ROOT,
    STARTED_GROUPS,
    echo_round_trip,
    free_port,
    group_alive,
    need,
    port_is_free,
    running,
    running_prometheus,
    wait_until,
)

DEPLOY = ROOT / "deploy"
PYTHON_BIN = str(Path(sys.executable).parent)


def titles(sid: int, prefix: str) -> dict[int, str]:
    found = {}
    for pid in group_alive(sid):
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if title.startswith(prefix):
                found[pid] = title
    return found


class Supervisor:
    """supervisord from a copy of deploy/, in the foreground, in its own session."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.dir = tmp_path / "deploy"
        shutil.copytree(DEPLOY, self.dir)
        self.conf = str(self.dir / "supervisord.conf")
        self.env = {**os.environ, **env, "PATH": PYTHON_BIN + os.pathsep + os.environ["PATH"]}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", self.conf],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        STARTED_GROUPS.append(self.proc.pid)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", self.conf, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )

    def status(self) -> str:
        return self.ctl("status", "greenserve").stdout

    def masters(self) -> dict[int, str]:
        return titles(self.proc.pid, "greenserve: master")

    def workers(self) -> dict[int, str]:
        return titles(self.proc.pid, "greenserve: worker")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        for pid in group_alive(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class TestSupervisord:
    """A real supervisord runs the shipped config and manages greenserve properly."""

    def test_full_lifecycle(self, tmp_path):
        port, metrics = free_port(), free_port()
        sup = Supervisor(
            tmp_path,
            {
                "GREENSERVE_BIND": f"127.0.0.1:{port}",
                "GREENSERVE_METRICS_BIND": f"127.0.0.1:{metrics}",
                "GREENSERVE_WORKERS": "2",
            },
        )
        try:
            wait_until(lambda: "RUNNING" in sup.status(), 30, "RUNNING")
            wait_until(lambda: len(sup.workers()) == 2, 15, "two workers")
            wait_until(lambda: _echo(port), 10, "echo")
            log = sup.dir / "greenserve.log"
            events = [json.loads(line) for line in log.read_text().splitlines()]
            assert events and all("event" in e for e in events)

            before = set(sup.workers())
            assert sup.ctl("signal", "HUP", "greenserve").returncode == 0
            wait_until(
                lambda: len(sup.workers()) == 2 and before.isdisjoint(sup.workers()),
                20,
                "every worker replaced by HUP",
            )
            assert _echo(port)

            assert sup.ctl("stop", "greenserve").returncode == 0
            assert "STOPPED" in sup.status()
            wait_until(lambda: not sup.masters() and not sup.workers(), 10, "nothing left")
            assert not titles(sup.proc.pid, "greenserve")
            assert port_is_free(port)

            assert sup.ctl("start", "greenserve").returncode == 0
            wait_until(lambda: len(sup.workers()) == 2, 30, "started again")
            (master,) = sup.masters()
            old_workers = set(sup.workers())
            os.kill(master, signal.SIGKILL)
            wait_until(lambda: sup.masters() and master not in sup.masters(), 30, "new master")
            wait_until(lambda: old_workers.isdisjoint(sup.workers()), 10, "old workers gone")
            wait_until(lambda: len(sup.workers()) == 2, 30, "new workers")
            wait_until(lambda: _echo(port), 10, "serving resumed")

            assert sup.ctl("shutdown").returncode == 0
            sup.proc.wait(30)
            wait_until(lambda: not group_alive(sup.proc.pid), 10, "nothing left at all")
        except BaseException:
            output = sup.proc.stdout.read1().decode() if sup.proc.poll() is not None else ""
            print(f"--- supervisord ---\n{output}")
            with contextlib.suppress(OSError):
                print((sup.dir / "greenserve.log").read_text()[-5000:])
            raise
        finally:
            sup.close()

    def test_program_section_has_the_settings_that_matter(self):
        """The conf.d file is for machines we cannot start here: read what must be in it."""
        text = (DEPLOY / "supervisor" / "greenserve.conf").read_text()
        settings = dict(
            line.split("=", 1)
            for line in text.splitlines()
            if "=" in line and not line.startswith(";")
        )
        assert settings["stopsignal"] == "TERM"
        assert int(settings["stopwaitsecs"]) > 30
        assert settings["stopasgroup"] == settings["killasgroup"] == "true"
        assert settings["redirect_stderr"] == "true"
        for line in text.splitlines():
            if "=" in line and not line.startswith(";"):
                index = text.splitlines().index(line)
                assert text.splitlines()[index - 1].startswith(";"), f"no comment for {line}"


def _echo(port: int) -> bool:
    try:
        return echo_round_trip(("127.0.0.1", port), b"supervised") == b"supervised"
    except OSError:
        return False


class TestPrometheus:
    """promtool accepts everything shipped; a real Prometheus scrapes greenserve through it."""

    def test_promtool_config_rules_and_rule_tests(self):
        promtool = need("promtool")
        folder = DEPLOY / "prometheus"
        for args in (
            ["check", "config", "prometheus.yml"],
            ["check", "config", "fleet.yml"],
            ["check", "rules", "alerts.yml"],
            ["check", "rules", "recording.yml"],
            ["test", "rules", "alerts_test.yml"],
        ):
            result = subprocess.run(
                [promtool, *args], cwd=folder, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, result.stdout + result.stderr

    def test_every_dashboard_query_passes_promtool(self, tmp_path):
        promtool = need("promtool")
        dashboard = json.loads((DEPLOY / "grafana" / "greenserve.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert len(exprs) >= 8
        rules = {
            "groups": [
                {
                    "name": "dashboard",
                    "rules": [
                        {
                            "record": f"dashboard:query_{n}",
                            "expr": expr.replace("$__rate_interval", "1m").replace(
                                "$instance", ".*"
                            ),
                        }
                        for n, expr in enumerate(exprs)
                    ],
                }
            ]
        }
        path = tmp_path / "dashboard_rules.yml"
        path.write_text(yaml.safe_dump(rules))
        result = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        titles_ = {p["title"] for p in dashboard["panels"]}
        for wanted in (
            "Throughput",
            "Active connections",
            "HTTP latency quantiles",
            "Worker restarts by reason",
            "Memory per worker",
        ):
            assert wanted in titles_

    def test_real_prometheus_scrapes_greenserve(self, tmp_path):
        with running("--workers", "2") as server:
            server.started()
            with running_prometheus(tmp_path, server.metrics_address) as api:

                def target_up():
                    with contextlib.suppress(OSError, ValueError):
                        data = _get_json(f"{api}/targets")
                        targets = data["data"]["activeTargets"]
                        return targets and targets[0]["health"] == "up"
                    return False

                wait_until(target_up, 40, "Prometheus target up", step=0.25)

                def alive():
                    with contextlib.suppress(OSError, ValueError):
                        result = _get_json(f"{api}/query?query=greenserve_workers_alive")
                        values = result["data"]["result"]
                        return values and float(values[0]["value"][1]) == 2
                    return False

                wait_until(alive, 20, "greenserve_workers_alive == 2 in Prometheus", step=0.25)
                rules = _get_json(f"{api}/rules")["data"]["groups"][0]["rules"]
                assert {r["name"] for r in rules} >= {"GreenserveDown", "GreenserveWorkerTimeouts"}


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class TestSystemd:
    """The unit file passes systemd-analyze verify (where systemd-analyze exists)."""

    def test_unit_verifies(self, tmp_path):
        analyze = need("systemd-analyze")
        text = (DEPLOY / "systemd" / "greenserve.service").read_text()
        greenserve = shutil.which("greenserve", path=PYTHON_BIN + os.pathsep + os.environ["PATH"])
        assert greenserve
        unit = tmp_path / "greenserve.service"
        unit.write_text(text.replace("/usr/local/bin/greenserve", greenserve))
        socket_unit = tmp_path / "greenserve.socket"
        socket_unit.write_text((DEPLOY / "systemd" / "greenserve.socket").read_text())
        result = subprocess.run(
            [analyze, "verify", str(unit), str(socket_unit)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "greenserve.service" not in result.stderr, result.stderr
        for directive in (
            "KillMode=mixed",
            "Type=notify",
            "NotifyAccess=all",
            "WatchdogSec=",
            "Requires=greenserve.socket",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "NoNewPrivileges=true",
            "ProtectSystem=strict",
            "LimitNOFILE=",
        ):
            assert directive in text
        stop = int(re.search(r"TimeoutStopSec=(\d+)", text).group(1))
        assert stop > 30


class TestLoadBalancers:
    """HAProxy's config and the Kubernetes manifests pass their own validators."""

    def test_haproxy_config_is_valid(self):
        haproxy = need("haproxy")
        path = DEPLOY / "haproxy" / "haproxy.cfg"
        result = subprocess.run(
            [haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        text = path.read_text()
        for directive in (
            "option httpchk GET /healthz",
            "send-proxy-v2",
            "option redispatch",
            "slowstart",
            "prometheus-exporter",
            "fall 2",
            "rise 2",
        ):
            assert directive in text, directive

    def test_haproxy_starts_under_a_20000_file_limit(self, tmp_path):
        """The shipped config (its listeners moved to free loopback ports) starts and serves
        its stats page with ulimit -n 20000, as on many hosts."""
        haproxy = need("haproxy")
        web, stats = free_port(), free_port()
        text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
        text = text.replace("bind 0.0.0.0:8080", f"bind 127.0.0.1:{web}")
        text = text.replace("bind 127.0.0.1:8404", f"bind 127.0.0.1:{stats}")
        config = tmp_path / "haproxy.cfg"
        config.write_text(text)
        proc = subprocess.Popen(
            ["bash", "-c", f'ulimit -n 20000 && exec "{haproxy}" -db -f "{config}"'],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        STARTED_GROUPS.append(proc.pid)
        try:

            def stats_page() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(proc.stdout.read().decode())
                with contextlib.suppress(OSError):
                    url = f"http://127.0.0.1:{stats}/metrics"
                    with urllib.request.urlopen(url, timeout=2) as response:
                        return response.status == 200
                return False

            wait_until(stats_page, 20, "HAProxy's stats page")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)

    def test_kubernetes_manifests_validate(self):
        import kubernetes_validate

        folder = DEPLOY / "kubernetes"
        kinds = set()
        for path in sorted(folder.glob("*.yaml")):
            for document in yaml.safe_load_all(path.read_text()):
                kinds.add(document["kind"])
                if document["apiVersion"].startswith("monitoring.coreos.com"):
                    continue  # a CRD of the Prometheus Operator: no schema ships with the validator
                kubernetes_validate.validate(document, "1.30.0", strict=True)
        assert {"Deployment", "Service", "PodDisruptionBudget", "PodMonitor"} <= kinds
        deployment = yaml.safe_load((folder / "deployment.yaml").read_text())
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        args = container["args"]
        drain = float(args[args.index("--drain-delay") + 1])
        graceful = float(args[args.index("--graceful-timeout") + 1])
        assert spec["terminationGracePeriodSeconds"] > drain + graceful
        assert {"readinessProbe", "livenessProbe", "startupProbe", "resources"} <= set(container)
        env = {item["name"]: item for item in container["env"]}
        assert env["GREENSERVE_WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == (
            "limits.cpu"
        )


def kubelet_environment(folder: Path, cpus: str) -> tuple[list[str], dict[str, str]]:
    """The Deployment's container args and the environment the kubelet would give it: its env
    entries (limits.cpu resolved) and, as if enableServiceLinks were on, the service links of
    every Service in the folder (what a namespace with a Service named greenserve injects)."""
    deployment = yaml.safe_load((folder / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for item in container["env"]:
        env[item["name"]] = item.get("value", cpus)
    for document in yaml.safe_load_all((folder / "service.yaml").read_text()):
        name = document["metadata"]["name"].upper().replace("-", "_")
        ip = "10.96.0.12"
        env[f"{name}_SERVICE_HOST"] = ip
        for index, port in enumerate(document["spec"]["ports"]):
            number, proto = port["port"], port.get("protocol", "TCP")
            if index == 0:
                env[f"{name}_SERVICE_PORT"] = str(number)
                env[f"{name}_PORT"] = f"{proto.lower()}://{ip}:{number}"
            env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
            prefix = f"{name}_PORT_{number}_{proto}"
            env[prefix] = f"{proto.lower()}://{ip}:{number}"
            env.update({f"{prefix}_PROTO": proto.lower(), f"{prefix}_PORT": str(number)})
            env[f"{prefix}_ADDR"] = ip
    return container["args"], env


class TestKubernetesPod:
    """The shipped Deployment's container, started as the kubelet starts it."""

    def test_starts_with_the_injected_environment_and_serves(self):
        folder = DEPLOY / "kubernetes"
        args, env = kubelet_environment(folder, cpus="2")
        assert "GREENSERVE_SERVICE_HOST" in env and "GREENSERVE_PORT_80_TCP_ADDR" in env
        # Only loopback here: the pod's addresses become free ports on 127.0.0.1, and its app
        # one of the test apps; every other argument is the manifest's own.
        args = list(args)
        args[0] = "flask_app:app"
        args[args.index("--bind") + 1] = f"127.0.0.1:{free_port()}"
        args[args.index("--metrics-bind") + 1] = f"127.0.0.1:{free_port()}"
        with running(*args, env=env) as server:
            server.started()
            assert server.workers == 2
            status, _, _ = server.get("/healthz")
            assert status == 200
            assert not server.find("unknown_environment_setting"), server.output

    def test_an_unknown_setting_is_a_warning_that_names_the_closest(self):
        with running("-w", "1", env={"GREENSERVE_WORKRES": "2"}) as server:
            server.started()
            [warning] = server.wait_event("unknown_environment_setting")
            assert warning["name"] == "GREENSERVE_WORKRES"
            assert warning["closest"] == "GREENSERVE_WORKERS"
            assert echo_round_trip(server.address, b"ping") == b"ping"

    def test_the_deployment_turns_service_links_off(self):
        deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
        assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False
