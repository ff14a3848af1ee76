"""The tracing middleware's short path for unsampled roots, in process."""

from __future__ import annotations

import os
import re

import pytest
from opentelemetry import trace

from greenserve.config import load
from greenserve.worker import tracing as module
from greenserve.worker.tracing import Tracing
from tests.helpers import ROOT
from tests.otlp import Receiver


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def provider(receiver):
    # The exporter reads its endpoint when it is made; a real receiver, so the shutdown's flush
    # is answered instead of retried against a closed port.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        tracing = Tracing(load(["--otel", "--otel-sample-ratio", "0"], {}))
    yield tracing
    tracing.provider.shutdown()


@pytest.fixture(params=["c", "python"])
def tracing(request, provider, monkeypatch):
    """The short path as _tracegate.c builds it, and as Python does without the extension."""
    if request.param == "python":
        monkeypatch.setattr(module, "GATE", None)
    elif module.GATE is None:
        if os.environ.get("CI") == "true":
            pytest.fail("greenserve._tracegate was not built")
        pytest.skip("greenserve._tracegate is not built (no compiler at install)")
    return provider


def _current() -> trace.SpanContext:
    return trace.get_current_span().get_span_context()


def _left() -> object:
    """The context the greenlet's next request starts from (read without making it real)."""
    from opentelemetry import context

    return context._RUNTIME_CONTEXT._current_context.get()


def _environ(**extra: str) -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/", **extra}


def test_an_unsampled_root_gets_fresh_valid_ids_and_leaves_only_the_marker(tracing):
    seen = []

    def app(environ, start_response):
        seen.append(_current())
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = tracing.wrap(app)
    for _ in range(2):
        assert wrapped(_environ(), lambda *a: None) == [b"ok"]
    assert all(s.is_valid and not s.trace_flags.sampled for s in seen)
    assert seen[0].trace_id != seen[1].trace_id  # a made root is not the next request's
    assert _left() is module._PENDING  # not a made root: the next request starts clean


def test_a_streamed_body_runs_under_the_span_until_close(tracing):
    seen = []

    def app(environ, start_response):
        start_response("200 OK", [])

        def body():
            seen.append(_current())
            yield b"a"

        return body()

    body = tracing.wrap(app)(_environ(), lambda *a: None)
    assert list(body) == [b"a"]  # the server iterates the body after the app returned
    assert _current() == seen[0]  # the same root until the body is closed
    body.close()
    assert seen[0].is_valid
    assert _left() is module._PENDING


def test_a_sampled_traceparent_is_followed_at_ratio_zero(tracing, receiver):
    seen = []

    def app(environ, start_response):
        seen.append(_current())
        start_response("200 OK", [])
        return [b"ok"]

    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    before, exported = _left(), len(receiver.server_spans())
    body = tracing.wrap(app)(_environ(HTTP_TRACEPARENT=parent), lambda *a: None)
    body.close()
    assert seen[0].trace_flags.sampled
    assert f"{seen[0].trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert _left() is before
    tracing.provider.force_flush(5000)
    (span,) = receiver.server_spans()[exported:]
    assert span["parent_id"] == "00f067aa0ba902b7"


def test_an_unsampled_roots_context_is_made_only_when_asked_and_children_follow_it(tracing):
    from opentelemetry import context, propagate

    made = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/asks":
            root = _current()
            child = tracing.provider.get_tracer("app").start_span("child")
            headers: dict[str, str] = {}
            propagate.inject(headers)
            made.append((root, child, headers, _current()))
            child.end()
        else:  # nothing asked: the runtime still holds the marker, not a made context
            made.append(context._RUNTIME_CONTEXT._current_context.get() is module._PENDING)
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = tracing.wrap(app)
    assert isinstance(context._RUNTIME_CONTEXT, module._LazyRoots)
    wrapped(_environ(), lambda *a: None)
    wrapped(_environ(PATH_INFO="/asks"), lambda *a: None)
    assert made[0] is True
    root, child, headers, again = made[1]
    assert again == root  # made once per request, then the same
    assert not child.is_recording()
    assert child.get_span_context().trace_id == root.trace_id
    assert headers["traceparent"] == f"00-{root.trace_id:032x}-{root.span_id:016x}-00"
    assert _left() is module._PENDING


def test_an_app_that_raises_after_asking_leaves_the_marker_for_the_next_request(tracing):
    seen = []

    def app(environ, start_response):
        seen.append(_current())
        if len(seen) == 1:
            raise RuntimeError("boom")
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = tracing.wrap(app)
    with pytest.raises(RuntimeError):
        wrapped(_environ(), lambda *a: None)
    assert _left() is module._PENDING
    wrapped(_environ(), lambda *a: None)
    assert seen[0].trace_id != seen[1].trace_id


def test_requests_in_other_greenlets_keep_their_own_roots(tracing):
    import gevent

    seen: dict[int, list] = {0: [], 1: []}

    def app(environ, start_response):
        index = int(environ["PATH_INFO"][1:])
        seen[index].append(_current())
        gevent.sleep(0)  # the other greenlet's request runs here
        seen[index].append(_current())
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = tracing.wrap(app)
    greenlets = [
        gevent.spawn(wrapped, _environ(PATH_INFO=f"/{i}"), lambda *a: None) for i in (0, 1)
    ]
    gevent.joinall(greenlets, timeout=5, raise_error=True)
    assert seen[0][0] == seen[0][1] and seen[1][0] == seen[1][1]
    assert seen[0][0].trace_id != seen[1][0].trace_id


def test_over_another_runtime_context_the_sdk_makes_every_unsampled_root_and_detaches_it(tracing):
    from opentelemetry import context
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    class Custom(ContextVarsRuntimeContext):  # as an OTEL_PYTHON_CONTEXT entry point would be
        pass

    seen = []

    def app(environ, start_response):
        seen.append(_current())
        start_response("200 OK", [])
        return [b"ok"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(context, "_RUNTIME_CONTEXT", Custom())
        wrapped = tracing.wrap(app)
        assert isinstance(context._RUNTIME_CONTEXT, Custom)  # the user's runtime is kept
        for _ in range(2):
            body = wrapped(_environ(), lambda *a: None)
            body.close()  # as the server does once the body is sent
        assert not _current().is_valid
    assert all(s.is_valid and not s.trace_flags.sampled for s in seen)
    assert seen[0].trace_id != seen[1].trace_id


def test_the_gates_abi_is_the_sources_and_ci_has_the_build():
    source = (ROOT / "service" / "greenserve" / "_tracegate.c").read_text()
    match = re.search(r"#define TRACEGATE_ABI (\d+)", source)
    assert match and int(match.group(1)) == module.TRACEGATE_ABI
    if os.environ.get("CI") == "true":
        assert module.GATE is not None, "greenserve._tracegate was not built"


def test_the_gate_samples_the_ratio_and_every_traceparent(tracing, receiver):
    """Which requests take the SDK's path: a traceparent always, roots at the ratio."""
    calls = {"sampled": 0, "app": 0}

    def app(environ, start_response):
        calls["app"] += 1
        return [b"ok"]

    draws = iter([0.5, 0.05, 0.2])

    def sampled(environ, start_response):
        calls["sampled"] += 1

    make = module.GATE.Gate if module.GATE is not None else module.python_gate
    gate = make(
        app, sampled, lambda: next(draws), 0.1, module._lazy_var(), module._PENDING,
        module._Traced, module._repend,
    )  # fmt: skip
    gate(_environ(), None)  # 0.5: not sampled
    gate(_environ(), None)  # 0.05 < 0.1: sampled
    gate(_environ(HTTP_TRACEPARENT="00-x"), None)  # a parent: sampled, nothing drawn
    gate(_environ(), None)  # 0.2: not sampled
    assert calls == {"sampled": 2, "app": 2}
