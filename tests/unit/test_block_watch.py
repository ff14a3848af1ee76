"""--block-warn's watcher (greenserve.worker.block_watch) in process: one greenlet holding the
loop is reported once, with its stack; an idle hub and greenlets that each run briefly are not.
The greenlets here spin on purpose (the behaviour under test); the reports are polled for."""

from __future__ import annotations

import time

import gevent
import pytest
import structlog
from structlog.testing import capture_logs

from greenserve.metrics.stats import WorkerStats
from greenserve.worker.block_watch import BlockWatch

THRESHOLD = 0.1


@pytest.fixture
def watched():
    stats = WorkerStats()
    watch = BlockWatch(THRESHOLD, stats, structlog.get_logger())
    with capture_logs() as events:
        watch.start()
        yield stats, events
        watch.stopped = True  # its thread ends when it next wakes, without a look


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _reports(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "event_loop_blocked"]


def test_one_greenlet_holding_the_loop_is_reported_once_with_its_stack(watched):
    stats, events = watched
    gevent.spawn(_spin, 6 * THRESHOLD).join(timeout=10)
    deadline = time.monotonic() + 5
    while not _reports(events) and time.monotonic() < deadline:
        gevent.sleep(0.01)
    (report,) = _reports(events)
    assert report["log_level"] == "warning" and report["blocked_seconds"] >= THRESHOLD
    assert "_spin" in report["stack"] and report["greenlet"].startswith("_spin (")
    assert stats.event_loop_blocked == 1
    gevent.sleep(3 * THRESHOLD)  # the loop runs again: nothing more about that stretch
    assert len(_reports(events)) == 1


def test_an_idle_hub_and_brief_greenlets_are_not_reported(watched):
    stats, events = watched
    gevent.sleep(4 * THRESHOLD)  # the hub waits in epoll: its own frame, Hub.run

    def brief() -> None:
        for _ in range(5):
            _spin(THRESHOLD / 10)
            gevent.sleep(0)

    gevent.joinall([gevent.spawn(brief) for _ in range(20)], timeout=30)  # 1 s of turns
    gevent.sleep(2 * THRESHOLD)
    assert _reports(events) == [] and stats.event_loop_blocked == 0
