"""Server hooks: the shipped example through a whole life, what a raise does, bad
sources refused before anything binds."""

from __future__ import annotations

import signal
import socket
import textwrap
import urllib.error
import urllib.request

import pytest

from tests.helpers import ROOT, running, serving_http, tool, wait_until

EXAMPLE = str(ROOT / "config" / "hooks.py")


def _called(server, hook: str) -> list[dict]:
    return server.find("hook_called", hook=hook)


def _get(address: tuple[str, int], path: str) -> int:
    url = f"http://{address[0]}:{address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class TestShippedExample:
    def test_every_hook_of_a_life_runs_once_where_and_when_gunicorn_runs_it(self):
        with serving_http("--hooks", EXAMPLE, "--log-level", "debug", workers=2) as server:
            server.started()
            names = [e.get("hook") or e["event"] for e in server.events]
            # the master's start: on_starting before the bind, when_ready before any worker
            assert names.index("on_starting") < names.index("started")
            assert names.index("when_ready") < names.index("worker_spawned")
            assert len(_called(server, "pre_fork")) == 2
            wait_until(lambda: len(_called(server, "post_worker_init")) == 2, 10, "init")
            post_fork = _called(server, "post_fork")
            assert {e["worker_pid"] for e in post_fork} == set(server.worker_pids().values())
            assert all(e["worker"] in (0, 1) for e in post_fork)  # logged by the worker
            assert _get(server.address, "/hooked") == 200
            pre = server.wait_event("hook_called", hook="pre_request")[0]
            post = server.wait_event("hook_called", hook="post_request")[0]
            assert (pre["method"], pre["path"]) == ("GET", "/hooked")
            assert (post["path"], post["status"]) == ("/hooked", 200)
            server.signal(signal.SIGTTIN)
            changed = server.wait_event("hook_called", hook="nworkers_changed")[0]
            assert (changed["new"], changed["old"]) == (3, 2)
            server.wait_event("worker_started", count=3)
            server.signal(signal.SIGHUP)
            server.wait_event("reload_complete", timeout=20)
            assert _called(server, "on_reload")
            server.signal(signal.SIGTERM)
            assert server.wait_exit(30) == 0
            exits = _called(server, "worker_exit")
            children = _called(server, "child_exit")
            # 3 of the first generation, 2 of the reloaded one (-w 2 on the command line)
            assert len(exits) == len(children) == 5
            assert all(e["code"] == 0 for e in children)
            assert [e["event"] for e in server.events][-1] == "stopped"
            assert _called(server, "on_exit")
            assert not _called(server, "worker_int")
            assert not server.find("hook_failed")

    def test_quit_runs_worker_int(self):
        with serving_http("--hooks", EXAMPLE, workers=1) as server:
            server.started()
            server.signal(signal.SIGQUIT)
            assert server.wait_exit(20) == 0
            assert len(_called(server, "worker_int")) == 1

    def test_worker_abort_runs_in_a_worker_stuck_past_the_timeout(self):
        with running(
            "greenserve_testapps:spin_on_demand",
            "--hooks",
            EXAMPLE,
            "--timeout",
            "2",
            "--stats-interval",
            "0.1",
        ) as server:
            server.started()
            stuck = socket.create_connection(server.address, timeout=15)
            stuck.sendall(b"spin")
            abort = server.wait_event("hook_called", hook="worker_abort", timeout=15)[0]
            timeout = server.wait_event("worker_timeout", timeout=15)[0]
            assert abort["worker"] == timeout["slot"]
            assert "spin_on_demand" in timeout["stack"]  # faulthandler still dumps first
            stuck.close()


RAISING = """
def when_ready(server):
    raise RuntimeError("when_ready broke")

def pre_fork(server, worker):
    raise RuntimeError("pre_fork broke")

def child_exit(server, worker):
    raise RuntimeError("child_exit broke")

def nworkers_changed(server, new_value, old_value):
    raise RuntimeError("nworkers_changed broke")

def pre_request(worker, req):
    if req.path == "/refused":
        raise PermissionError("pre_request broke")

def post_request(worker, req, environ, resp):
    if req.path == "/after":
        raise RuntimeError("post_request broke")
"""


class TestRaisingHooks:
    def test_master_hooks_are_logged_with_traceback_and_the_master_goes_on(self, tmp_path):
        hooks = tmp_path / "raising.py"
        hooks.write_text(RAISING)
        with serving_http("--hooks", str(hooks), workers=1) as server:
            server.started()
            server.signal(signal.SIGTTIN)
            server.wait_event("worker_started", count=2)
            for name in ("when_ready", "pre_fork", "nworkers_changed"):
                failed = server.wait_event("hook_failed", hook=name)[0]
                assert f"{name} broke" in failed["error"]
                assert "Traceback" in failed["exception"]
                assert failed["worker"] == "master"
            server.signal(signal.SIGTTOU)
            server.wait_event("hook_failed", hook="child_exit")
            assert _get(server.address, "/fine") == 200

    def test_pre_request_raising_answers_500_and_post_request_raising_is_logged(self, tmp_path):
        hooks = tmp_path / "raising.py"
        hooks.write_text(RAISING)
        with serving_http("--hooks", str(hooks), "--access-log", workers=1) as server:
            server.started()
            assert _get(server.address, "/refused") == 500
            failed = server.wait_event("hook_failed", hook="pre_request")[0]
            assert "PermissionError" in failed["error"]
            assert _get(server.address, "/after") == 200
            server.wait_event("hook_failed", hook="post_request")
            assert _get(server.address, "/fine") == 200
            assert len(server.find("hook_failed")) == 4  # + when_ready, pre_fork at start
            lines = server.wait_event("request", count=3)
            assert [line["status"] for line in lines[:3]] == [500, 200, 200]

    def test_post_fork_raising_stops_the_start_like_an_app_that_cannot_load(self, tmp_path):
        hooks = tmp_path / "fork.py"
        hooks.write_text("def post_fork(server, worker):\n    raise OSError('no database')\n")
        with serving_http("--hooks", str(hooks), workers=2) as server:
            assert server.wait_exit(30) == 3
            assert "no database" in server.find("hook_failed", hook="post_fork")[0]["error"]
            assert server.find("app_cannot_load")


class TestDeclarations:
    def test_one_hook_by_dotted_path_in_the_config_file(self, tmp_path):
        (tmp_path / "myhooks.py").write_text(
            "def ready(server):\n    server.log.info('ready_hook', workers=server.num_workers)\n"
        )
        config = tmp_path / "greenserve.toml"
        config.write_text(f'hooks = ["when_ready=myhooks:ready"]\nchdir = "{tmp_path}"\n')
        with running("--config", str(config), cwd=tmp_path) as server:
            server.started()
            assert server.find("ready_hook")[0]["workers"] == server.workers

    def test_a_gunicorn_conf_py_moves_over(self, tmp_path):
        conf = tmp_path / "gunicorn.conf.py"
        conf.write_text(
            textwrap.dedent("""
                bind = "0.0.0.0:8000"
                workers = 4

                def post_fork(server, worker):
                    server.log.info("gunicorn_hook", pid=worker.pid, master=server.pid)

                def ssl_context(conf, default_ssl_context_factory):
                    return default_ssl_context_factory()
            """)
        )
        with serving_http("--hooks", str(conf), workers=1) as server:
            server.started()
            event = server.wait_event("gunicorn_hook")[0]
            assert event["pid"] == server.worker_pids()[0]
            assert event["master"] == server.proc.pid
            assert server.find("hook_not_called", hook="ssl_context")


@pytest.mark.parametrize(
    ("source", "content", "message"),
    [
        ("missing.py", None, "does not exist"),
        ("arity.py", "def post_fork(server):\n    pass\n", "must take (server, worker)"),
        ("syntax.py", "def on_starting(server)\n", "failed to import"),
        ("when_ready=json:nope", None, "has no 'nope'"),
        ("twice.py", "def on_exit(server):\n    pass\n", "declared twice"),
        (
            "patch.py",
            "import gevent.monkey\ngevent.monkey.patch_all()\n",
            "monkey-patched the master",
        ),
    ],
)
def test_a_bad_hook_source_is_one_line_and_exit_2_before_binding(
    tmp_path, source, content, message
):
    if content is not None:
        (tmp_path / source).write_text(content)
    path = str(tmp_path / source) if source.endswith(".py") else source
    extra = ["--hooks", f"on_exit={path}:on_exit"] if source == "twice.py" else []
    for args in (["--check-config"], ["--bind", "127.0.0.1:0", "--metrics-bind", "off"]):
        result = tool("--hooks", path, *extra, *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in result.stdout
