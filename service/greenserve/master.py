"""The master: binds once, starts and replaces workers, acts on signals, serves metrics.

It never imports gevent and never runs user code. Signal handlers only queue the signal; the one
loop in ``Master.run`` acts on queued signals, dead children, stats messages and heartbeats.
"""

from __future__ import annotations

import contextlib
import enum
import multiprocessing
import os
import queue
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import connection
from typing import Any

from setproctitle import setproctitle

from greenserve import boot, logs
from greenserve.aggregate import Aggregator
from greenserve.config import Settings
from greenserve.metrics import MetricsServer, build_app, build_registry, is_loopback
from greenserve.sockets import BindError, bind_listener, bound_address
from greenserve.stats import Heartbeat

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_APP_LOAD = boot.APP_LOAD_FAILED

# The forkserver is a fresh interpreter (no threads, no copied locks) that imports these once;
# each worker is then a fork of it, so a respawn costs a fork, not an interpreter start.
PRELOAD = ["greenserve.preload"]
STATS_QUEUE_SIZE = 8  # snapshots in flight per worker; far below a pipe's 64 KiB
LOOP_TICK = 0.05
EARLY_DEATH = 1.0  # a worker dying sooner than this after start is "crashing on boot"
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0
KILL_GRACE = 1.0  # after a stop deadline, workers get this long to exit on their own
MAX_MESSAGES_PER_TICK = 64

HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGHUP,
    signal.SIGUSR1,
)


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass
class WorkerProcess:
    """A live worker process and its private channels."""

    slot: int
    generation: int
    process: Any
    stats_queue: Any
    heartbeat: Heartbeat
    started_at: float
    kill_reason: str | None = None
    ready: bool = False


@dataclass
class Slot:
    """A worker position: at most one live process, plus its restart backoff."""

    index: int
    worker: WorkerProcess | None = None
    failures: int = 0
    start_at: float | None = 0.0  # monotonic time to (re)start at; None = nothing scheduled
    wanted: bool = True  # False once scaled down: kept so its counters stay on /metrics


@dataclass
class Stop:
    """A stop in progress: when the workers get SIGKILL."""

    graceful: bool
    kill_at: float
    killed: bool = False


@dataclass
class Master:
    """Supervises one generation of workers serving one listening socket."""

    settings: Settings
    log: Any = field(init=False)
    state: State = State.STARTING
    exit_code: int = EXIT_OK

    def __post_init__(self) -> None:
        self.log = logs.get()
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.slots: dict[int, Slot] = {}
        self.signals: deque[int] = deque()
        self.aggregator = Aggregator(self.settings.workers)
        self.generation = 1
        self.stop: Stop | None = None
        self.listener: socket.socket | None = None
        self.metrics: MetricsServer | None = None

    # -- start-up ------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        try:
            self.listener = bind_listener(self.settings.bind)
            self._start_metrics()
        except (BindError, OSError) as exc:
            self.log.error("startup_failed", error=_one_line(exc))
            if self.listener is not None:
                self.listener.close()
            return EXIT_RUNTIME
        bind = bound_address(self.listener)
        setproctitle(f"greenserve: master [{bind}, {self.settings.workers} workers]")
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._on_signal)
        self.alive_r, self.alive_w = self.ctx.Pipe(duplex=False)
        self.log.info(
            "started",
            bind=str(bind),
            workers=self.settings.workers,
            protocol=self.settings.protocol,
            metrics=str(self.metrics.address) if self.metrics else "off",
        )
        for index in range(self.settings.workers):
            self.slots[index] = Slot(index)
        try:
            self._loop(wake_r)
        finally:
            self._cleanup(wake_r, wake_w)
        self.log.info("stopped", code=self.exit_code)
        return self.exit_code

    def _start_metrics(self) -> None:
        address = self.settings.metrics_bind
        if address is None:
            return
        if not is_loopback(address):
            self.log.warning(
                "metrics_exposed",
                metrics_bind=str(address),
                hint="metrics reveal internals; bind them to loopback or firewall the port",
            )
        registry = build_registry(self.aggregator)
        stale_after = stale_window(self.settings)
        try:
            self.metrics = MetricsServer(
                address, build_app(registry, self.aggregator, lambda: stale_after)
            )
        except OSError as exc:
            raise BindError(f"cannot bind metrics {address}: {_reason(exc)}") from None
        self.metrics.start()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self, wake_r: socket.socket) -> None:
        self.state = State.RUNNING
        while True:
            self._spawn_due()
            waitables: list[Any] = [wake_r]
            waitables += [s.worker.process.sentinel for s in self.slots.values() if s.worker]
            connection.wait(waitables, timeout=LOOP_TICK)
            _drain_socket(wake_r)
            while self.signals:
                self._dispatch(self.signals.popleft())
            self._read_stats()
            self._reap()
            self._check_heartbeats()
            if self.stop is not None:
                self._advance_stop()
                if not any(slot.worker for slot in self.slots.values()):
                    return

    def _dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name
        handler = getattr(self, "handle_" + name.lower(), None)
        self.log.info("signal", signal=name)
        if handler is not None:
            handler()

    def handle_sigterm(self) -> None:
        self._begin_stop(graceful=True)

    def handle_sigint(self) -> None:
        # A second Ctrl-C during a graceful stop means "now".
        self._begin_stop(graceful=self.stop is None)

    def handle_sigquit(self) -> None:
        self._begin_stop(graceful=False)

    def handle_sigttin(self) -> None:
        self._scale(+1)

    def handle_sigttou(self) -> None:
        self._scale(-1)

    # -- workers ---------------------------------------------------------------------------------

    def _spawn_due(self) -> None:
        if self.stop is not None:
            return
        now = time.monotonic()
        for slot in self.slots.values():
            due = slot.start_at is not None and slot.start_at <= now
            if slot.worker is None and slot.wanted and due:
                self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        heartbeat = self.ctx.RawValue("d", time.monotonic())
        stats_queue = self.ctx.Queue(STATS_QUEUE_SIZE)
        spec = boot.WorkerSpec(
            slot=slot.index,
            generation=self.generation,
            settings=self.settings,
            listener=self.listener,
            stats_queue=stats_queue,
            heartbeat=heartbeat,
            master_alive=self.alive_r,
        )
        process = self.ctx.Process(
            target=boot.start, args=(spec,), name=f"greenserve-worker-{slot.index}", daemon=False
        )
        process.start()
        slot.worker = WorkerProcess(
            slot=slot.index,
            generation=self.generation,
            process=process,
            stats_queue=stats_queue,
            heartbeat=Heartbeat(heartbeat),
            started_at=time.monotonic(),
        )
        slot.start_at = None
        self.aggregator.process_started(slot.index, process.pid, self.generation)
        self.log.info("worker_spawned", slot=slot.index, worker_pid=process.pid)

    def _read_stats(self) -> None:
        for slot in self.slots.values():
            if slot.worker is not None:
                self._drain_stats(slot.worker)

    def _drain_stats(self, worker: WorkerProcess) -> None:
        for _ in range(MAX_MESSAGES_PER_TICK):
            try:
                message = worker.stats_queue.get_nowait()
            except (queue.Empty, OSError, EOFError):
                return
            if self.aggregator.apply(message) and message.get("ready") and not worker.ready:
                worker.ready = True

    def _reap(self) -> None:
        for slot in self.slots.values():
            worker = slot.worker
            if worker is None or worker.process.is_alive():
                continue
            self._drain_stats(worker)
            code = worker.process.exitcode
            lived = time.monotonic() - worker.started_at
            reason = self._exit_reason(worker, code)
            self.aggregator.process_exited(slot.index, worker.process.pid, reason)
            fields: dict[str, Any] = {"slot": slot.index, "worker_pid": worker.process.pid}
            if code is not None and code < 0:
                fields["signal"] = signal.Signals(-code).name
            else:
                fields["code"] = code
            log = self.log.info if reason is None else self.log.warning
            log("worker_exited", lived_seconds=round(lived, 3), **fields)
            worker.stats_queue.close()
            worker.process.close()
            slot.worker = None
            if code == EXIT_APP_LOAD and not worker.ready:
                self._halt_app_load(slot)
            elif self.stop is None and slot.wanted:
                self._schedule_restart(slot, lived, worker.ready)

    def _exit_reason(self, worker: WorkerProcess, code: int | None) -> str | None:
        if worker.kill_reason is not None:
            return worker.kill_reason
        if self.stop is not None or not self.slots[worker.slot].wanted:
            return None
        return "signal" if code is not None and code < 0 else "exit"

    def _schedule_restart(self, slot: Slot, lived: float, was_ready: bool) -> None:
        if lived < EARLY_DEATH or not was_ready:
            slot.failures += 1
            delay = min(BACKOFF_FIRST * 2 ** (slot.failures - 1), BACKOFF_MAX)
            self.log.warning("worker_backoff", slot=slot.index, delay=delay, failures=slot.failures)
        else:
            slot.failures, delay = 0, 0.0
        slot.start_at = time.monotonic() + delay

    def _halt_app_load(self, slot: Slot) -> None:
        self.log.error(
            "app_cannot_load",
            app=self.settings.app,
            slot=slot.index,
            hint="the master stops instead of restarting workers that cannot start",
        )
        self.exit_code = EXIT_APP_LOAD
        self._begin_stop(graceful=False)

    def _check_heartbeats(self) -> None:
        timeout = self.settings.timeout
        if not timeout or self.stop is not None:
            return
        for slot in self.slots.values():
            worker = slot.worker
            if worker is None or worker.kill_reason is not None:
                continue
            age = worker.heartbeat.age()
            if age > timeout:
                self.log.error(
                    "worker_timeout",
                    slot=slot.index,
                    worker_pid=worker.process.pid,
                    silent_seconds=round(age, 3),
                )
                worker.kill_reason = "timeout"
                _kill(worker.process.pid, signal.SIGKILL)

    def desired(self) -> int:
        return sum(1 for slot in self.slots.values() if slot.wanted)

    def _scale(self, delta: int) -> None:
        """One worker more (the lowest free slot) or fewer (the highest), never below one."""
        if self.stop is not None or self.desired() + delta < 1:
            return
        if delta > 0:
            index = next(
                i
                for i in range(len(self.slots) + 1)
                if i not in self.slots or not self.slots[i].wanted
            )
            slot = self.slots.setdefault(index, Slot(index))
            slot.wanted, slot.failures, slot.start_at = True, 0, time.monotonic()
        else:
            slot = max((s for s in self.slots.values() if s.wanted), key=lambda s: s.index)
            slot.wanted, slot.start_at = False, None
            if slot.worker is not None:
                _kill(slot.worker.process.pid, signal.SIGTERM)
        self.aggregator.set_desired(self.desired())
        self.log.info("workers_scaled", workers=self.desired())

    # -- stopping --------------------------------------------------------------------------------

    def _begin_stop(self, *, graceful: bool) -> None:
        if self.stop is not None and (graceful or not self.stop.graceful):
            return
        self.state = State.STOPPING
        wait = self.settings.graceful_timeout + KILL_GRACE if graceful else KILL_GRACE
        self.stop = Stop(graceful=graceful, kill_at=time.monotonic() + wait)
        self.log.info("stopping", graceful=graceful, timeout=wait)
        if self.listener is not None:
            self.listener.close()  # workers still hold their copies until they drain
        for worker in self._live_workers():
            _kill(worker.process.pid, signal.SIGTERM if graceful else signal.SIGQUIT)

    def _advance_stop(self) -> None:
        assert self.stop is not None
        if not self.stop.killed and time.monotonic() >= self.stop.kill_at:
            self.stop.killed = True
            for worker in self._live_workers():
                self.log.warning("worker_killed", slot=worker.slot, worker_pid=worker.process.pid)
                _kill(worker.process.pid, signal.SIGKILL)

    def _live_workers(self) -> list[WorkerProcess]:
        return [slot.worker for slot in self.slots.values() if slot.worker is not None]

    def _cleanup(self, wake_r: socket.socket, wake_w: socket.socket) -> None:
        for worker in self._live_workers():
            _kill(worker.process.pid, signal.SIGKILL)
            worker.process.join(5)
        if self.metrics is not None:
            self.metrics.stop()
        if self.listener is not None:
            self.listener.close()
        signal.set_wakeup_fd(-1)
        wake_r.close()
        wake_w.close()
        self.alive_w.close()


def stale_window(settings: Settings) -> float:
    """How long a worker may go without reporting before /healthz calls it stale.

    Shorter than ``--timeout`` (which kills): a worker silent for a few stats intervals is
    already not serving, and operators should see that before the replacement happens.
    """
    window = max(2.0, 3 * settings.stats_interval)
    return min(window, settings.timeout) if settings.timeout else window


def _kill(pid: int | None, signum: int) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _drain_socket(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _reason(exc: OSError) -> str:
    return "address already in use" if exc.errno == 98 else (exc.strerror or str(exc))


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
