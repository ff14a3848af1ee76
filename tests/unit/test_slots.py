"""The slot table's decisions, with fake processes and a hand-driven clock: no fork, no signal.

Each test plays what the master would do (start what is due, report readiness, reap) and checks
who the table says to start, drain or leave alone.
"""

from __future__ import annotations

import itertools

from greenserve.master.slots import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    STOP_RESEND,
    SlotTable,
    WorkerProcess,
)
from greenserve.spec import EXIT_APP_LOAD

_pids = itertools.count(1000)


def start_due(table: SlotTable, now: float, generation: int = 1) -> list[WorkerProcess]:
    """What the master does each turn: a fake process for every slot that is due."""
    started = []
    for index in table.due(now):
        worker = WorkerProcess(index, generation, next(_pids), now)
        table.started(worker)
        started.append(worker)
    return started


def ready(table: SlotTable, *workers: WorkerProcess, now: float = 0.0) -> None:
    for worker in workers:
        table.reported(worker, ready=True, retire="", now=now)


def serving(table: SlotTable) -> dict[int, int | None]:
    return {s.index: s.worker.pid if s.worker else None for s in table.slots.values()}


class TestStart:
    def test_every_slot_is_due_at_once_and_only_once(self):
        table = SlotTable(3, now=0.0)
        assert table.due(0.0) == [0, 1, 2]
        workers = start_due(table, 0.0)
        assert table.due(0.0) == []
        assert not table.all_ready()
        ready(table, *workers[:2])
        assert table.ready_count() == 2 and not table.all_ready()
        ready(table, workers[2])
        assert table.all_ready()
        assert [s.pid for s in table.liveness()] == [w.pid for w in workers]


class TestHandOver:
    """A replaced process serves until its successor accepts, then drains."""

    def test_reload_hands_over_slot_by_slot_when_each_successor_is_ready(self):
        table = SlotTable(2, now=0.0)
        old = start_due(table, 0.0)
        ready(table, *old)
        assert table.replace_all("reload", 1.0) == []
        assert table.handing_over()
        assert sorted(w.pid for w in table.live()) == sorted(w.pid for w in old)
        new = start_due(table, 1.0, generation=2)
        assert table.hand_over() == []  # nobody new accepts yet: the old ones keep serving
        ready(table, new[1])
        assert table.hand_over() == [old[1]]
        assert old[1].kill_reason == "reload" and old[1] in table.retiring
        ready(table, new[0])
        assert table.hand_over() == [old[0]]
        assert not table.handing_over()
        assert serving(table) == {0: new[0].pid, 1: new[1].pid}

    def test_reload_during_reload_drains_the_middle_process_and_keeps_the_first(self):
        table = SlotTable(1, now=0.0)
        (first,) = start_due(table, 0.0)
        ready(table, first)
        table.replace_all("reload", 1.0)
        (middle,) = start_due(table, 1.0, generation=2)
        drained = table.replace_all("reload", 2.0)  # before the middle one ever accepted
        assert drained == [middle]
        assert table.slots[0].outgoing is first  # the first still serves
        (last,) = start_due(table, 2.0, generation=3)
        ready(table, last)
        assert table.hand_over() == [first]
        assert serving(table) == {0: last.pid}

    def test_a_dead_outgoing_process_does_not_restart_the_slot(self):
        table = SlotTable(1, now=0.0)
        (old,) = start_due(table, 0.0)
        ready(table, old)
        table.replace_all("reload", 5.0)
        (new,) = start_due(table, 5.0)
        result = table.exited(old, -9, 6.0, stopping=False)
        assert result.reason == "reload" and result.then is None
        assert table.due(100.0) == [] and serving(table) == {0: new.pid}


class TestBackoff:
    def test_crashing_on_boot_backs_off_exponentially_up_to_the_cap(self):
        table = SlotTable(1, now=0.0)
        now, delays = 0.0, []
        for _ in range(12):
            (worker,) = start_due(table, now)
            result = table.exited(worker, 1, now + 0.01, stopping=False)
            assert result.reason == "exit" and result.then == "restart"
            assert result.slot_idle
            delays.append(result.delay)
            assert table.due(now + 0.01) == []  # not before the delay
            now = table.slots[0].start_at or 0.0
        assert delays[:3] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST]
        assert max(delays) == BACKOFF_MAX and delays[-1] == BACKOFF_MAX

    def test_a_worker_that_served_long_enough_restarts_at_once_and_resets_the_count(self):
        table = SlotTable(1, now=0.0)
        (worker,) = start_due(table, 0.0)
        table.exited(worker, 1, 0.01, stopping=False)
        assert table.slots[0].failures == 1
        (worker,) = start_due(table, 1.0)
        ready(table, worker)
        result = table.exited(worker, -9, 60.0, stopping=False)
        assert result.reason == "signal" and result.delay == 0.0
        assert table.slots[0].failures == 0 and table.due(60.0) == [0]

    def test_no_restart_while_stopping_and_no_restart_reason(self):
        table = SlotTable(1, now=0.0)
        (worker,) = start_due(table, 0.0)
        ready(table, worker)
        result = table.exited(worker, 0, 10.0, stopping=True)
        assert result.reason is None and result.then is None
        assert table.due(10.0) == []


class TestRecycle:
    """--max-requests: one worker at a time, and only when every slot serves."""

    def test_one_recycle_at_a_time(self):
        table = SlotTable(2, now=0.0)
        workers = start_due(table, 0.0)
        ready(table, *workers)
        for worker in workers:
            table.reported(worker, ready=True, retire="max_requests", now=1.0)
        first = table.recycle(1.0)
        assert first is workers[0] and first.kill_reason == "max_requests"
        assert table.recycle(1.0) is None  # slot 0 is handing over
        (replacement,) = start_due(table, 1.0)
        assert table.recycle(1.1) is None
        ready(table, replacement)
        assert table.hand_over() == [workers[0]]
        assert table.recycle(2.0) is workers[1]

    def test_not_ready_workers_are_not_recycled(self):
        table = SlotTable(1, now=0.0)
        (worker,) = start_due(table, 0.0)
        table.reported(worker, ready=False, retire="max_requests", now=1.0)
        assert table.recycle(1.0) is None


class TestRollback:
    """A new generation whose app cannot load: the old processes serve on."""

    def test_app_load_failure_during_reload_rolls_back(self):
        table = SlotTable(2, now=0.0)
        old = start_due(table, 0.0)
        ready(table, *old)
        table.replace_all("reload", 1.0)
        new = start_due(table, 1.0, generation=2)
        result = table.exited(new[0], EXIT_APP_LOAD, 1.2, stopping=False)
        assert result.then == "abort_reload" and not result.slot_idle
        drained = table.roll_back()
        assert drained == [new[1]] and new[1].kill_reason == "reload"
        assert serving(table) == {0: old[0].pid, 1: old[1].pid}
        assert all(w.kill_reason is None for w in old)
        assert not table.handing_over() and table.due(5.0) == []

    def test_app_load_failure_at_start_halts(self):
        table = SlotTable(1, now=0.0)
        (worker,) = start_due(table, 0.0)
        result = table.exited(worker, EXIT_APP_LOAD, 0.3, stopping=False)
        assert result.then == "halt"

    def test_app_load_code_from_a_worker_that_served_is_a_plain_restart(self):
        table = SlotTable(1, now=0.0)
        (worker,) = start_due(table, 0.0)
        ready(table, worker)
        assert table.exited(worker, EXIT_APP_LOAD, 30.0, stopping=False).then == "restart"


class TestScale:
    def test_scale_down_drains_and_keeps_the_slot_for_its_counters(self):
        table = SlotTable(3, now=0.0)
        workers = start_due(table, 0.0)
        drained, dropped = table.resize(2, 1.0)
        assert drained == [workers[2]] and dropped == [2]
        assert table.desired() == 2 and len(table.liveness()) == 3
        result = table.exited(workers[2], 0, 2.0, stopping=False)
        assert result.reason is None and result.then is None
        drained, dropped = table.resize(3, 3.0)
        assert drained == [] and dropped == [] and table.due(3.0) == [2]


class TestStopRequests:
    def test_stop_requests_are_repeated_until_the_process_exits(self):
        table = SlotTable(1, now=0.0)
        (worker,) = start_due(table, 0.0)
        table.asked_to_stop(worker, 15, 1.0)
        assert table.stops_to_repeat(1.0) == []
        assert table.stops_to_repeat(1.0 + STOP_RESEND) == [worker]
        table.exited(worker, 0, 1.6, stopping=True)
        assert table.stops_to_repeat(5.0) == []
