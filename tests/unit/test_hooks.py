"""Hook declarations, sources and the request wrapper, in process."""

from __future__ import annotations

import inspect

import pytest

from greenserve.hooks import HOOKS, HookError, Hooks, load, parse_sources
from greenserve.worker.request_hooks import with_request_hooks
from tests.helpers import ROOT


class Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []

    def error(self, event: str, **fields: object) -> None:
        self.records.append((event, fields))


def test_the_declarations_are_gunicorns_names_and_arguments():
    gunicorn_args = {
        "on_starting": ("server",),
        "on_reload": ("server",),
        "when_ready": ("server",),
        "pre_fork": ("server", "worker"),
        "post_fork": ("server", "worker"),
        "post_worker_init": ("worker",),
        "worker_int": ("worker",),
        "worker_abort": ("worker",),
        "pre_exec": ("server",),
        "pre_request": ("worker", "req"),
        "post_request": ("worker", "req", "environ", "resp"),
        "child_exit": ("server", "worker"),
        "worker_exit": ("server", "worker"),
        "nworkers_changed": ("server", "new_value", "old_value"),
        "on_exit": ("server",),
    }
    assert {hook.name: hook.args for hook in HOOKS} == gunicorn_args
    assert all(hook.process in ("master", "worker") and hook.when for hook in HOOKS)


def test_the_shipped_example_defines_every_hook_with_its_arguments():
    hooks = load([str(ROOT / "config" / "hooks.py")])
    assert set(hooks.functions) == {hook.name for hook in HOOKS}
    for hook in HOOKS:
        assert tuple(inspect.signature(hooks.functions[hook.name]).parameters) == hook.args


def test_sources_parse_files_modules_and_single_hooks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_sources("hooks.py, pkg.hooks,post_fork=pkg.otel:setup") == (
        str(tmp_path / "hooks.py"),
        "pkg.hooks",
        "post_fork=pkg.otel:setup",
    )
    assert parse_sources("") == ()
    assert parse_sources("post_fork=x.py:f") == (f"post_fork={tmp_path / 'x.py'}:f",)
    for bad in ("bogus=m:f", "post_fork=module", "post_fork=:f"):
        with pytest.raises(ValueError):
            parse_sources(bad)


def test_load_keeps_one_process_hooks_but_checks_all(tmp_path):
    source = tmp_path / "both.py"
    source.write_text(
        "def on_starting(server): pass\ndef post_fork(server, worker): pass\ndef helper(): pass\n"
    )
    assert set(load([str(source)], process="master").functions) == {"on_starting"}
    assert set(load([str(source)], process="worker").functions) == {"post_fork"}
    bad = tmp_path / "bad.py"
    bad.write_text("def post_fork(server, worker): pass\ndef on_exit(): pass\n")
    with pytest.raises(HookError, match=r"on_exit .* must take \(server\)"):
        load([str(bad)], process="worker")


def test_call_logs_a_raise_with_its_traceback_and_returns_false():
    log = Log()

    def broken(server: object) -> None:
        raise RuntimeError("broken")

    hooks = Hooks({"on_starting": broken}, log)
    assert hooks.call("on_starting", object()) is False
    assert hooks.call("on_exit", object()) is True  # not set: nothing to do
    event, fields = log.records[0]
    assert event == "hook_failed" and fields["hook"] == "on_starting"
    assert isinstance(fields["exc_info"], RuntimeError)


def _app(environ, start_response):
    start_response("201 Created", [("Content-Type", "text/plain")])
    return iter([b"one", b"two!"])


def _run(app, path="/x"):
    statuses = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "a=1",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "HTTP_X_A": "b",
        "CONTENT_LENGTH": "0",
    }
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    chunks = list(body)
    getattr(body, "close", lambda: None)()
    return statuses[0], b"".join(chunks)


def test_without_request_hooks_the_app_is_not_wrapped():
    assert with_request_hooks(_app, Hooks({"post_fork": print}), None) is _app


def test_request_hooks_see_the_request_and_the_response_once_it_is_closed():
    seen = []
    hooks = Hooks(
        {
            "pre_request": lambda worker, req: seen.append(
                (req.method, req.path, req.uri, req.version, req.headers)
            ),
            "post_request": lambda worker, req, environ, resp: seen.append(
                (resp.status_code, resp.sent, environ["PATH_INFO"])
            ),
        }
    )
    assert _run(with_request_hooks(_app, hooks, None)) == ("201 Created", b"onetwo!")
    assert seen == [
        ("POST", "/x", "/x?a=1", (1, 0), [("X-A", "b"), ("CONTENT-LENGTH", "0")]),
        (201, 7, "/x"),
    ]


def test_a_raising_pre_request_answers_500_without_calling_the_app():
    called = []
    log = Log()

    def app(environ, start_response):
        called.append(1)
        return _app(environ, start_response)

    def refuse(worker, req):
        raise PermissionError(req.path)

    wrapped = with_request_hooks(app, Hooks({"pre_request": refuse}, log), None)
    status, body = _run(wrapped, "/no")
    assert status.startswith("500") and body == b"Internal Server Error\n"
    assert called == [] and log.records[0][1]["hook"] == "pre_request"


def test_a_raising_post_request_is_logged_after_the_body_went_out():
    log = Log()

    def after(worker, req, environ, resp):
        raise RuntimeError("after")

    status, body = _run(with_request_hooks(_app, Hooks({"post_request": after}, log), None))
    assert (status, body) == ("201 Created", b"onetwo!")
    assert log.records[0][1]["hook"] == "post_request"
