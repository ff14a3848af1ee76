"""Keeping the worker processes in line with the slot table: spawn who is due, read what they
report, drain who was replaced, account for who died, kill who stopped answering.

``Master`` decides what the operator asked for (signals, reloads, stops); ``Supervisor`` does what
that means for processes, one named phase per method, each called once per loop turn. Never
imports gevent.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from greenserve.config import Settings
from greenserve.hooks import Hooks, ServerView, WorkerView
from greenserve.master import processes
from greenserve.master.listeners import Listeners
from greenserve.master.processes import Launcher, kill
from greenserve.master.slots import Exit, SlotTable, WorkerProcess
from greenserve.metrics.aggregate import Aggregator
from greenserve.metrics.stats import LOAD_IN_USE, LOAD_SLOTS, LOAD_UNUSED


class Supervisor:
    """Every worker process of one master."""

    def __init__(self, aggregator: Aggregator, log: Any, hooks: Hooks, server: ServerView) -> None:
        self.table = SlotTable(server.num_workers, time.monotonic())
        self.launcher = Launcher()
        self.aggregator = aggregator
        self.log = log
        self.hooks, self.server = hooks, server  # pre_fork, child_exit, nworkers_changed

    @property
    def load(self) -> Any:
        """Shared with every worker: open connections per slot, slots in use, the drain flag."""
        return self.launcher.load

    def live(self) -> list[WorkerProcess]:
        return self.table.live()

    def sentinels(self) -> list[int]:
        return [processes.sentinel(w) for w in self.table.live()]

    # -- phases --------------------------------------------------------------------------------

    def spawn_due(self, generation: int, settings: Settings, listeners: Listeners) -> None:
        for index in self.table.due(time.monotonic()):
            if "pre_fork" in self.hooks:
                view = WorkerView(index, generation, None, self.server.pid, settings, self.log)
                self.hooks.call("pre_fork", self.server, view)
            worker = self.launcher.start(index, generation, settings, listeners.for_slot(index))
            self.table.started(worker)
            self.aggregator.process_started(index, worker.pid)
            self.log.info(
                "worker_spawned", slot=index, worker_pid=worker.pid, generation=generation
            )

    def read_stats(self) -> None:
        now = time.monotonic()
        for worker in self.table.live():
            self._drain_stats(worker, now)
        for event in self.aggregator.app_events():
            self.log.warning(event.pop("event"), **event)

    def _drain_stats(self, worker: WorkerProcess, now: float) -> None:
        for message in processes.messages(worker):
            self.aggregator.apply(message)
            if message.get("pid") == worker.pid and "counters" in message:
                ready, retire = bool(message.get("ready")), message.get("retire") or ""
                self.table.reported(worker, ready=ready, retire=retire, now=now)

    def hand_over(self) -> None:
        for worker in self.table.hand_over():  # the new process accepts: the old one drains
            self.ask_to_stop(worker, signal.SIGTERM)

    def reap(self, *, stopping: bool) -> list[tuple[WorkerProcess, Exit]]:
        """Account for every dead process; returns those whose slot needs the master."""
        needs_master = []
        for worker in self.table.live():
            if processes.is_alive(worker):
                continue
            self._drain_stats(worker, time.monotonic())
            code = processes.exit_code(worker)
            result = self.table.exited(worker, code, time.monotonic(), stopping=stopping)
            self.aggregator.process_exited(worker.slot, worker.pid, result.reason)
            how: dict[str, Any] = {"slot": worker.slot, "worker_pid": worker.pid}
            if code is not None and code < 0:
                how["signal"] = signal.Signals(-code).name
            else:
                how["code"] = code
            unexpected = result.reason in ("exit", "signal", "timeout")
            (self.log.warning if unexpected else self.log.info)(
                "worker_exited", lived_seconds=round(result.lived, 3), reason=result.reason, **how
            )
            processes.release(worker)
            if "child_exit" in self.hooks:
                view = WorkerView(
                    worker.slot,
                    worker.generation,
                    worker.pid,
                    self.server.pid,
                    self.server.settings,
                    self.log,
                    exitcode=code,
                    alive=False,
                )
                self.hooks.call("child_exit", self.server, view)
            if result.slot_idle and worker.slot < LOAD_SLOTS:
                self.load[worker.slot] = LOAD_UNUSED  # siblings must not defer accepts to it
            if result.then == "restart" and result.delay:
                failures = self.table.slots[worker.slot].failures
                self.log.warning(
                    "worker_backoff", slot=worker.slot, delay=result.delay, failures=failures
                )
            elif result.then in ("abort_reload", "halt"):
                needs_master.append((worker, result))
        return needs_master

    def check_heartbeats(self, timeout: float) -> None:
        if not timeout:
            return
        for worker in self.table.live():
            verdict = processes.timeout_verdict(worker, timeout, time.monotonic())
            if verdict == "unblocked":
                self.log.warning(
                    "worker_unblocked",
                    slot=worker.slot,
                    worker_pid=worker.pid,
                    hint="silent past --timeout, then alive again before the kill",
                )
            if verdict != "kill":
                continue
            self.log.error(
                "worker_timeout",
                slot=worker.slot,
                worker_pid=worker.pid,
                silent_seconds=round(processes.heartbeat_age(worker), 3),
                stack=processes.read_stack(worker),
            )
            worker.kill_reason = "timeout"
            kill(worker.pid, signal.SIGKILL)

    def recycle(self) -> None:
        """--max-requests: the table grants one asking worker at a time."""
        worker = self.table.recycle(time.monotonic())
        if worker is not None:
            self.log.info("worker_recycling", slot=worker.slot, worker_pid=worker.pid)

    def repeat_stop_requests(self) -> None:
        for worker in self.table.stops_to_repeat(time.monotonic()):
            self.ask_to_stop(worker, worker.stop_signal or signal.SIGTERM)

    # -- asked for by the master ----------------------------------------------------------------

    def ask_to_stop(self, worker: WorkerProcess, signum: int) -> None:
        self.table.asked_to_stop(worker, signum, time.monotonic())
        kill(worker.pid, signum)

    def stop_all(self, signum: int) -> None:
        for worker in self.table.live():
            self.ask_to_stop(worker, signum)

    def kill_all(self) -> None:
        for worker in self.table.live():
            self.log.warning("worker_killed", slot=worker.slot, worker_pid=worker.pid)
            kill(worker.pid, signal.SIGKILL)

    def signal_all(self, signum: int) -> None:
        for worker in self.table.live():
            kill(worker.pid, signum)

    def replace_all(self, reason: str) -> None:
        for worker in self.table.replace_all(reason, time.monotonic()):
            self.ask_to_stop(worker, signal.SIGTERM)

    def roll_back(self) -> None:
        for worker in self.table.roll_back():
            self.ask_to_stop(worker, signal.SIGTERM)

    def resize(self, count: int, listeners: Listeners) -> None:
        old, self.server.num_workers = self.server.num_workers, count
        if count != old:
            self.hooks.call("nworkers_changed", self.server, count, old)
        drained, dropped = self.table.resize(count, time.monotonic())
        for worker in drained:
            self.ask_to_stop(worker, signal.SIGTERM)
        for index in dropped:
            # --reuse-port: the kernel must stop routing connections to this slot's socket;
            # those already queued on it are reset (the documented cost of --reuse-port)
            listeners.drop_slot(index)
        self.load[LOAD_IN_USE] = min(len(self.table.slots), LOAD_SLOTS)

    def close(self) -> None:
        """The master's own exit: whatever is still alive is killed and reaped."""
        for worker in self.table.live():
            processes.end(worker)
        self.launcher.close()
