"""The master's --timeout decision (master/processes.timeout_verdict) against a real process that
takes the stack signal, with the heartbeat in shared memory as the worker writes it."""

from __future__ import annotations

import multiprocessing
import select
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from greenserve.master import processes
from greenserve.master.slots import WorkerProcess
from greenserve.metrics.stats import Heartbeat

TIMEOUT = 1.0


@pytest.fixture
def worker():
    """A WorkerProcess over a child that ignores the stack signal (a worker's faulthandler
    dumps and goes on), its heartbeat last written at 100.0 on the monotonic clock."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import signal, sys, time; signal.signal({int(processes.STACK_SIGNAL)}, "
            "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert select.select([child.stdout], [], [], 10)[0], "the child did not start"
        assert child.stdout.readline() == "ready\n"
        value = multiprocessing.get_context("spawn").RawValue("d", 100.0)
        channels = SimpleNamespace(heartbeat=Heartbeat(value))
        yield WorkerProcess(slot=0, generation=1, pid=child.pid, started_at=0.0, channels=channels)
    finally:
        child.kill()
        child.wait(timeout=10)


def beat_at(worker: WorkerProcess, when: float) -> None:
    worker.channels.heartbeat._value.value = when


def test_a_worker_still_silent_after_the_grace_is_killed(worker):
    now = time.monotonic()
    beat_at(worker, now - 2 * TIMEOUT)
    assert processes.timeout_verdict(worker, TIMEOUT, now) == ""  # stacks asked for first
    assert worker.abort_sent_at == now
    assert processes.timeout_verdict(worker, TIMEOUT, now + processes.STACK_GRACE / 2) == ""
    assert processes.timeout_verdict(worker, TIMEOUT, now + processes.STACK_GRACE) == "kill"


def test_a_worker_that_beats_again_within_the_grace_is_not_killed(worker):
    """Before, the kill followed the stack request whatever happened meanwhile: a slot-0 worker
    whose forkserver took 0.6 s to start was killed with a 0.061 s old heartbeat in CI."""
    now = time.monotonic()
    beat_at(worker, now - 2 * TIMEOUT)
    assert processes.timeout_verdict(worker, TIMEOUT, now) == ""
    beat_at(worker, time.monotonic())  # its loop ran again
    assert processes.timeout_verdict(worker, TIMEOUT, now + processes.STACK_GRACE) == "unblocked"
    assert worker.abort_sent_at is None  # and a later silence starts over
    beat_at(worker, time.monotonic() - 2 * TIMEOUT)
    later = time.monotonic()
    assert processes.timeout_verdict(worker, TIMEOUT, later) == ""
    assert processes.timeout_verdict(worker, TIMEOUT, later + processes.STACK_GRACE) == "kill"
