"""The lock-free value behind an app's metrics in a worker (greenserve._appvalue, appvalue.py)
against the prometheus_client value it stands in for."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
    values,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from greenserve.metrics import appvalue
from tests.helpers import ROOT

SOURCE = ROOT / "service" / "greenserve" / "_appvalue.c"
VALUE = appvalue.lock_free_value()
needs_build = pytest.mark.skipif(
    VALUE is None and os.environ.get("CI") != "true",
    reason="greenserve._appvalue is not built (no compiler at install)",
)
CREATED = re.compile(rb"^\S+_created(\{[^}]*\})? \S+$", re.MULTILINE)
EXEMPLAR_TIME = re.compile(rb"(# \{[^}]*\} \S+) \S+$", re.MULTILINE)


@contextlib.contextmanager
def value_class(cls: Any) -> Iterator[None]:
    saved = values.ValueClass
    values.ValueClass = cls
    try:
        yield
    finally:
        values.ValueClass = saved


def test_the_abi_is_the_sources_and_ci_has_the_build():
    match = re.search(r"#define APPVALUE_ABI (\d+)", SOURCE.read_text())
    assert match and int(match.group(1)) == appvalue.APPVALUE_ABI
    if os.environ.get("CI") == "true":
        assert VALUE is not None, "greenserve._appvalue was not built"


def exercise(registry: CollectorRegistry) -> None:
    """What apps do to each kind of metric, exemplars and in-progress gauges included."""
    counter = Counter("orders", "Orders.", ["kind"], registry=registry)
    counter.labels("book").inc()
    counter.labels("book").inc(2.5)
    counter.labels("pen").inc(1, exemplar={"trace_id": "abc"})
    gauge = Gauge("level", "Level.", registry=registry)
    gauge.set(7)
    gauge.inc(3)
    gauge.dec(1.5)
    with gauge.track_inprogress():
        pass
    timed = Gauge("last", "Last set.", multiprocess_mode="mostrecent", registry=registry)
    timed.set(4.25)
    histogram = Histogram("size", "Size.", buckets=(1, 5, 10), registry=registry)
    for observed in (0.5, 3, 3, 9, 50):
        histogram.observe(observed)
    histogram.observe(2, exemplar={"trace_id": "def"})
    summary = Summary("took", "Took.", registry=registry)
    summary.observe(0.25)
    summary.observe(1.0)
    Info("build", "Build.", registry=registry).info({"version": "1"})
    Enum("state", "State.", states=["up", "down"], registry=registry).state("down")


def exposed(cls: Any, render: Callable[[CollectorRegistry], bytes]) -> bytes:
    with value_class(cls):
        registry = CollectorRegistry()
        exercise(registry)
    # creation and exemplar times are the clock's, not the value's
    return EXEMPLAR_TIME.sub(rb"\1", CREATED.sub(b"", render(registry)))


@needs_build
@pytest.mark.parametrize("render", [generate_latest, openmetrics_latest])
def test_every_kind_of_metric_reads_as_with_prometheus_clients_value(render):
    assert exposed(VALUE, render) == exposed(values.MutexValue, render)


@needs_build
def test_increments_from_real_threads_are_never_lost():
    value = VALUE("counter", "n", "n_total", (), (), "")
    per_thread, threads = 50_000, 4
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as the GIL allows
    try:
        workers = [
            threading.Thread(target=lambda: [value.inc(1) for _ in range(per_thread)])
            for _ in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
    finally:
        sys.setswitchinterval(switch)
    assert value.get() == per_thread * threads


@needs_build
def test_bad_amounts_raise_like_prometheus_clients():
    value = VALUE("gauge", "g", "g", (), (), "", multiprocess_mode="all")
    with pytest.raises(TypeError):
        value.inc("1")
    with pytest.raises(TypeError):
        value.set()
    value.set(2, timestamp=123.0)
    assert value.get() == 2.0 and value.get_exemplar() is None
    assert VALUE._multiprocess is False


@needs_build
def test_install_takes_over_mutexvalue_only():
    with value_class(values.MutexValue):
        assert appvalue.install() and values.ValueClass is VALUE
        made = Counter("after_install", "x", registry=CollectorRegistry())
        assert type(made._value) is VALUE
        assert appvalue.install()  # twice is fine

    class Mmaped:  # what PROMETHEUS_MULTIPROC_DIR chooses
        _multiprocess = True

    with value_class(Mmaped):
        assert not appvalue.install() and values.ValueClass is Mmaped


def test_greenserve_no_extensions_keeps_prometheus_clients_value():
    """The switch that runs the pure-Python paths turns this extension off too."""
    import subprocess

    probe = "from greenserve.metrics import appvalue; print(appvalue.install())"
    for env, expected in (
        ({}, str(VALUE is not None)),
        ({"GREENSERVE_NO_EXTENSIONS": "1"}, "False"),
    ):
        result = subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.stdout.strip() == expected, result.stderr
