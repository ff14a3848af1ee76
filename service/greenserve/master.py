"""The master: binds once, starts and replaces workers, acts on signals, serves metrics.

It never imports gevent and never runs user code. Signal handlers only queue the signal; the one
loop in ``Master.run`` acts on queued signals, dead children, stats messages and heartbeats.

A slot's worker is replaced without a gap (reload, recycling): the new process starts while the
old one keeps serving, and the old one is told to drain only once the new one accepts.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import multiprocessing
import os
import queue
import signal
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, fields
from multiprocessing import connection
from typing import Any

from setproctitle import setproctitle

from greenserve import boot, logs
from greenserve.aggregate import Aggregator
from greenserve.config import Bind, ConfigError, FdAddress, Settings, load
from greenserve.listeners import Listeners
from greenserve.metrics import MetricsServer, build_app, build_registry, is_loopback
from greenserve.notify import Notifier, activated_fds
from greenserve.pidfile import PidFile
from greenserve.sockets import BindError
from greenserve.spec import (
    EXIT_APP_LOAD,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_USAGE,
    STACK_SIGNAL,
    WorkerSpec,
)
from greenserve.stats import DRAINING, LOAD_IN_USE, LOAD_SLOTS, LOAD_UNUSED, Heartbeat
from greenserve.tls import TlsError
from greenserve.tls import check as check_tls
from greenserve.upgrade import Upgrade, inherited

# The forkserver is a fresh interpreter (no threads, no copied locks) that imports these once;
# each worker is then a fork of it, so a respawn costs a fork, not an interpreter start.
PRELOAD = ["greenserve.preload"]
STATS_QUEUE_SIZE = 8  # snapshots in flight per worker; far below a pipe's 64 KiB
LOOP_TICK = 0.05
EARLY_DEATH = 1.0  # a worker dying sooner than this after start is "crashing on boot"
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0
KILL_GRACE = 1.0  # after a stop deadline, workers get this long to exit on their own
STACK_GRACE = 0.5  # time a timed-out worker gets to dump its stacks before SIGKILL
# A worker ignores TERM until it can drain (inherited from the forkserver, see preload.py), so a
# stop request sent while it boots would be lost: it is repeated until the process is gone.
STOP_RESEND = 0.5
MAX_MESSAGES_PER_TICK = 64

HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
UPGRADE_DEADLINE = 60.0  # seconds a new master (USR2) gets to have every worker accepting
# Signals an operator may send by habit (gunicorn's USR2 and WINCH) or by accident, whose default
# action would end the master: each is logged and otherwise ignored.
IGNORED_SIGNALS = (
    signal.SIGWINCH,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGPWR,
)
IGNORED_HINTS = {
    "SIGWINCH": "gunicorn's WINCH (stop all workers) has no meaning here; use TTOU",
}


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
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
    stack_file: str
    kill_reason: str | None = None  # why the master ends it; None for an asked-for stop
    ready: bool = False
    wants_retire: bool = False  # reached --max-requests, waiting for its turn
    abort_sent_at: float | None = None  # stacks asked for (STACK_SIGNAL) before a timeout kill
    stop_signal: int | None = None  # TERM or QUIT once asked to stop; re-sent until it exits
    stop_sent_at: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Slot:
    """A worker position: one serving process, plus the one it replaces during a hand-over."""

    index: int
    worker: WorkerProcess | None = None
    outgoing: WorkerProcess | None = None  # drains once ``worker`` accepts
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
class Reload:
    """What a reload replaced, to roll back to if the new generation cannot start."""

    settings: Settings
    generation: int
    listeners: Listeners | None  # the old sockets when binds changed, closed after hand-over


@dataclass
class Master:
    """Supervises the workers serving one listening socket."""

    settings: Settings
    argv: list[str] = field(default_factory=list)  # re-read on HUP: CLI values keep winning
    exit_code: int = EXIT_OK

    def __post_init__(self) -> None:
        self.log = logs.get()
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.slots: dict[int, Slot] = {}
        self.retiring: list[WorkerProcess] = []  # told to drain, no longer in a slot
        self.signals: deque[int] = deque()
        self.aggregator = Aggregator(self.settings.workers)
        self.generation = 1
        self.stop: Stop | None = None
        self.reload: Reload | None = None
        # each slot's open connections, written by its worker, read by its siblings
        self.load = self.ctx.RawArray("i", [LOAD_UNUSED] * LOAD_SLOTS + [0, 0])
        # --drain-delay: when the real stop begins; set once (a second TERM stops at once)
        self.drain_until: float | None = None
        self.metrics: MetricsServer | None = None
        self.looping = False
        self.pid_file = PidFile(self.settings.pid_file)
        self.start_cwd = os.getcwd()
        self.notifier = Notifier(os.environ)
        # Sockets from systemd (LISTEN_FDS) replace --bind, also for every reload.
        self.bind_override: tuple[Bind, ...] | None = None
        fds = activated_fds(os.environ)
        if fds:
            self.bind_override = tuple(FdAddress(fd) for fd in fds)
        # A master started by USR2: the old master's sockets, and whom to stop once serving.
        self.inherited, self.upgrade_from = inherited(os.environ)
        if self.inherited:
            self.bind_override = self.bind_override or tuple(self.inherited)
        if self.bind_override:
            self.settings = self.settings.with_changes(bind=self.bind_override)
        self.listeners = Listeners(self.settings)
        self.upgrade: Upgrade | None = None  # a new master this one started (USR2)

    @property
    def state(self) -> State:
        """Derived from what is in progress, so it can never disagree with it."""
        if self.stop is not None:
            return State.STOPPING
        if self.reload is not None:
            return State.RELOADING
        return State.RUNNING if self.looping else State.STARTING

    # -- start-up ------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        try:
            certificate = check_tls(self.settings)
        except TlsError as exc:
            self.log.error("startup_failed", error=str(exc))
            return EXIT_USAGE
        self._export_certificate(certificate)
        try:
            if self.settings.chdir:
                os.chdir(self.settings.chdir)  # before the forkserver starts: workers inherit it
            self.listeners.open(inherited=self.inherited)
            for index in range(self.settings.workers):
                self.listeners.for_slot(index)
            self._start_metrics()
        except (BindError, OSError) as exc:
            self.log.error("startup_failed", error=_one_line(exc))
            self.listeners.close()
            return EXIT_RUNTIME
        binds = self.listeners.addresses()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS + IGNORED_SIGNALS:
            signal.signal(signum, self._on_signal)
        self.alive_r, self.alive_w = self.ctx.Pipe(duplex=False)
        self.pid_file.write()
        self.log.info(
            "started",
            bind=binds[0],
            binds=binds,
            workers=self.settings.workers,
            protocol=self.settings.protocol,
            metrics=str(self.metrics.address) if self.metrics else "off",
        )
        if os.geteuid() == 0 and self.settings.user is None:
            self.log.warning("workers_run_as_root", hint="set --user to run the app unprivileged")
        for index in range(self.settings.workers):
            self.slots[index] = Slot(index)
        self.load[LOAD_IN_USE] = min(len(self.slots), LOAD_SLOTS)
        self._set_title()
        try:
            self._loop(wake_r)
        finally:
            self._cleanup(wake_r, wake_w)
        self.log.info("stopped", code=self.exit_code)
        return self.exit_code

    def _set_title(self) -> None:
        setproctitle(
            f"greenserve: master [{', '.join(self.listeners.addresses())}, {self.desired()} "
            f"workers, generation {self.generation}]"
        )

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
        try:
            self.metrics = MetricsServer(
                address, build_app(registry, self.aggregator, lambda: stale_window(self.settings))
            )
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = " (another greenserve? give this one --metrics-bind HOST:PORT, or off)"
            raise BindError(f"cannot bind metrics {address}: {_reason(exc)}{hint}") from None
        self.metrics.start()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self, wake_r: socket.socket) -> None:
        self.looping = True
        while True:
            self._spawn_due()
            connection.wait([wake_r, *(w.process.sentinel for w in self._all())], LOOP_TICK)
            _drain_socket(wake_r)
            while self.signals:
                self._dispatch(self.signals.popleft())
            self._read_stats()
            self._reap()
            self._check_heartbeats()
            self._grant_recycle()
            self._announce_ready()
            self._end_drain()
            self._watch_upgrade()
            self.notifier.ping(time.monotonic())
            self._repeat_stop_requests()
            if self.stop is not None:
                self._advance_stop()
                if not self._all():
                    return

    def _dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in IGNORED_SIGNALS:
            self.log.warning("signal_ignored", signal=name, hint=IGNORED_HINTS.get(name, ""))
            return
        self.log.info("signal", signal=name, state=self.state.value)
        getattr(self, "handle_" + name.lower())()

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

    def handle_sigusr1(self) -> None:
        """Reopen log files here and in every worker (logrotate's postrotate)."""
        if self.settings.log_file and self.settings.user is not None:
            with contextlib.suppress(OSError):  # let unprivileged workers reopen it too
                os.chown(self.settings.log_file, self.settings.user, self.settings.group or -1)
        reopened = logs.reopen()
        for worker in self._all():
            _kill(worker.pid, signal.SIGUSR1)
        self.log.info("logs_reopened", file=self.settings.log_file if reopened else "stdout")

    def handle_sigusr2(self) -> None:
        """Binary upgrade: a new master from the installed greenserve, on the same sockets."""
        if self.stop is not None or self.upgrade is not None or self.upgrade_from is not None:
            self.log.warning("upgrade_refused", reason="a stop or an upgrade is in progress")
            return
        self.pid_file.set_aside()
        extra = self.notifier.child_environ()  # the new master reports to systemd too
        self.upgrade = Upgrade(
            self.argv, self.listeners.fds(), self.start_cwd, UPGRADE_DEADLINE, extra
        )
        self.log.info("upgrade_started", new_master_pid=self.upgrade.pid)

    def _watch_upgrade(self) -> None:
        if self.upgrade is None or self.stop is not None:
            return
        reason = self.upgrade.failure()
        if reason is None:
            return
        self.log.error("upgrade_failed", error=reason, hint="this master goes on serving")
        self.upgrade.abandon()
        self.upgrade = None
        self.pid_file.restore()

    def _end_drain(self) -> None:
        drain_until = self.drain_until
        if drain_until is not None and self.stop is None and time.monotonic() >= drain_until:
            self._begin_stop(graceful=True)

    def _export_certificate(self, certificate: Any) -> None:
        if certificate is None:
            self.aggregator.set_tls_expiry(None)
            return
        self.aggregator.set_tls_expiry(certificate.not_after)
        self.log.info(
            "tls_certificate",
            subject=certificate.subject,
            serial=certificate.serial,
            expires=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(certificate.not_after)),
        )

    def _announce_ready(self) -> None:
        """Once every wanted slot's worker accepts: READY=1, and the end of an upgrade."""
        if self.stop is not None or (self.notifier.ready_sent and self.upgrade_from is None):
            return
        wanted = [slot for slot in self.slots.values() if slot.wanted]
        if not wanted or not all(s.worker is not None and s.worker.ready for s in wanted):
            return
        if self.upgrade_from is not None:
            self.log.info("upgrade_complete", old_master_pid=self.upgrade_from)
            _kill(self.upgrade_from, signal.SIGTERM)  # the old master drains and exits
            self.notifier.main_pid(os.getpid())
            self.upgrade_from = None
        if not self.notifier.ready_sent:
            self.notifier.ready(self._status())

    def _status(self) -> str:
        ready = sum(1 for s in self.slots.values() if s.wanted and s.worker and s.worker.ready)
        return f"{ready}/{self.desired()} workers ready, generation {self.generation}"

    def handle_sighup(self) -> None:
        """Re-read the config, start a new generation, drain the old one once it serves."""
        if self.stop is not None:
            return
        self.notifier.reloading()
        try:
            new = load(self.argv, os.environ)
            if self.bind_override:
                new = new.with_changes(bind=self.bind_override)
            certificate = check_tls(new)  # a bad new certificate leaves the old one serving
        except (ConfigError, TlsError) as exc:
            self.notifier.ready(self._status())
            self.log.error("reload_failed", error=str(exc), hint="the running workers go on")
            return
        old = self.settings
        changed = {
            f.name: [_show(getattr(old, f.name)), _show(getattr(new, f.name))]
            for f in fields(Settings)
            if getattr(old, f.name) != getattr(new, f.name)
        }
        previous: Listeners | None = None
        if not self.listeners.compatible(new):
            fresh = Listeners(new)
            try:
                fresh.open(previous=self.listeners)
            except BindError as exc:
                self.log.error("reload_failed", error=str(exc), hint="the running workers go on")
                self.notifier.ready(self._status())
                return
            previous, self.listeners = self.listeners, fresh
        if self.reload is None:
            self.reload = Reload(old, self.generation, previous)
        elif previous is not None:
            if self.reload.listeners is None:
                self.reload.listeners = previous  # the serving sockets: kept for a rollback
            else:  # a reload during a reload: the sockets in between never served
                previous.close(self.listeners, self.reload.listeners)
        self._export_certificate(certificate)
        self.settings = new
        self.generation += 1
        self.aggregator.set_generation(self.generation)
        self._resize(new.workers)
        for slot in self.slots.values():
            if slot.wanted:
                self._replace(slot, "reload")
        self._set_title()
        self.log.info("reload", generation=self.generation, changed=changed)

    # -- workers ---------------------------------------------------------------------------------

    def _all(self) -> list[WorkerProcess]:
        """Every live process: serving, handing over, and draining."""
        found = []
        for slot in self.slots.values():
            found += [w for w in (slot.worker, slot.outgoing) if w is not None]
        return found + self.retiring

    def desired(self) -> int:
        return sum(1 for slot in self.slots.values() if slot.wanted)

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
        handle, stack_file = tempfile.mkstemp(prefix=f"greenserve-stack-{slot.index}-")
        os.close(handle)
        if self.settings.user is not None:
            os.chown(stack_file, self.settings.user, self.settings.group or -1)
        spec = WorkerSpec(
            slot=slot.index,
            generation=self.generation,
            settings=self.settings,
            listeners=self.listeners.for_slot(slot.index),
            stats_queue=stats_queue,
            heartbeat=heartbeat,
            master_alive=self.alive_r,
            stack_file=stack_file,
            load=self.load,
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
            stack_file=stack_file,
        )
        slot.start_at = None
        self.aggregator.process_started(slot.index, process.pid, self.generation)
        self.log.info(
            "worker_spawned", slot=slot.index, worker_pid=process.pid, generation=self.generation
        )

    def _replace(self, slot: Slot, reason: str) -> None:
        """Start a new process for the slot; the current one drains once the new one accepts."""
        current = slot.worker
        slot.worker, slot.start_at, slot.failures = None, time.monotonic(), 0
        if current is None:
            return
        current.kill_reason = reason
        if slot.outgoing is None:
            slot.outgoing = current
        else:  # replaced again before it ever served: the first process keeps serving
            self._retire(current)

    def _retire(self, worker: WorkerProcess) -> None:
        self.retiring.append(worker)
        self._ask_to_stop(worker, signal.SIGTERM)

    def _ask_to_stop(self, worker: WorkerProcess, signum: int) -> None:
        worker.stop_signal, worker.stop_sent_at = signum, time.monotonic()
        _kill(worker.pid, signum)

    def _repeat_stop_requests(self) -> None:
        now = time.monotonic()
        for worker in self._all():
            if worker.stop_signal is not None and now - worker.stop_sent_at >= STOP_RESEND:
                self._ask_to_stop(worker, worker.stop_signal)

    def _read_stats(self) -> None:
        for worker in self._all():
            self._drain_stats(worker)
        for slot in self.slots.values():
            if slot.outgoing is not None and slot.worker is not None and slot.worker.ready:
                self._retire(slot.outgoing)  # the new process accepts: the old one drains
                slot.outgoing = None
        if self.reload is not None and not any(s.outgoing for s in self.slots.values()):
            # the draining workers keep their own copies of the old sockets
            if self.reload.listeners is not None:
                self.reload.listeners.close(self.listeners)
            self.reload = None
            self.log.info("reload_complete", generation=self.generation)
            self.notifier.ready(self._status())

    def _drain_stats(self, worker: WorkerProcess) -> None:
        for _ in range(MAX_MESSAGES_PER_TICK):
            try:
                message = worker.stats_queue.get_nowait()
            except (queue.Empty, OSError, EOFError):
                return
            if self.aggregator.apply(message) or message.get("pid") == worker.pid:
                worker.ready = worker.ready or bool(message.get("ready"))
                worker.wants_retire = worker.wants_retire or bool(message.get("retire"))

    def _grant_recycle(self) -> None:
        """--max-requests: replace one asking worker at a time, never two together."""
        if self.stop is not None or any(
            s.outgoing or s.worker is None for s in self.slots.values() if s.wanted
        ):
            return
        for slot in self.slots.values():
            worker = slot.worker
            if slot.wanted and worker is not None and worker.ready and worker.wants_retire:
                self.log.info("worker_recycling", slot=slot.index, worker_pid=worker.pid)
                self._replace(slot, "max_requests")
                return

    def _reap(self) -> None:
        for slot in self.slots.values():
            for attr in ("worker", "outgoing"):
                worker = getattr(slot, attr)
                if worker is not None and not worker.process.is_alive():
                    setattr(slot, attr, None)
                    self._reaped(worker, slot)
        for worker in list(self.retiring):
            if not worker.process.is_alive():
                self.retiring.remove(worker)
                self._reaped(worker, None)

    def _reaped(self, worker: WorkerProcess, slot: Slot | None) -> None:
        """Account for a dead process; restart its slot when it was the slot's worker."""
        self._drain_stats(worker)
        code = worker.process.exitcode
        lived = time.monotonic() - worker.started_at
        reason = self._exit_reason(worker, code, serving=slot is not None)
        self.aggregator.process_exited(worker.slot, worker.pid, reason)
        fields_: dict[str, Any] = {"slot": worker.slot, "worker_pid": worker.pid}
        if code is not None and code < 0:
            fields_["signal"] = signal.Signals(-code).name
        else:
            fields_["code"] = code
        unexpected = reason in ("exit", "signal", "timeout")
        (self.log.warning if unexpected else self.log.info)(
            "worker_exited", lived_seconds=round(lived, 3), reason=reason, **fields_
        )
        worker.stats_queue.close()
        worker.process.close()
        with contextlib.suppress(OSError):
            os.unlink(worker.stack_file)
        if slot is None or slot.worker is not None or self.stop is not None:
            return
        if slot.index < LOAD_SLOTS and slot.outgoing is None:
            self.load[slot.index] = LOAD_UNUSED  # siblings must not defer accepts to it
        if code == EXIT_APP_LOAD and not worker.ready:
            if slot.outgoing is not None:
                self._abort_reload()
            else:
                self._halt_app_load(slot)
        elif slot.wanted:
            self._schedule_restart(slot, lived, worker.ready)

    def _exit_reason(self, worker: WorkerProcess, code: int | None, serving: bool) -> str | None:
        if worker.kill_reason is not None:
            return worker.kill_reason
        slot = self.slots.get(worker.slot)
        if self.stop is not None or not serving or slot is None or not slot.wanted:
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

    def _abort_reload(self) -> None:
        """The new generation cannot load its app: keep the old one serving."""
        assert self.reload is not None
        self.log.error(
            "reload_failed",
            error="the new generation cannot load the app",
            app=self.settings.app,
            hint="the previous generation goes on serving",
        )
        for slot in self.slots.values():
            if slot.worker is not None and slot.outgoing is not None:
                slot.worker.kill_reason = "reload"
                self._retire(slot.worker)
                slot.worker = None
            if slot.outgoing is not None:
                slot.worker, slot.outgoing = slot.outgoing, None
                slot.worker.kill_reason = None
                slot.start_at = None
        if self.reload.listeners is not None:
            self.listeners.close(self.reload.listeners)
            self.listeners = self.reload.listeners
        self.settings, self.generation = self.reload.settings, self.reload.generation
        self.aggregator.set_generation(self.generation)
        self.reload = None
        self._set_title()
        self.notifier.ready(self._status())

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
        now = time.monotonic()
        for worker in self._all():
            if worker.kill_reason == "timeout":
                continue
            if worker.abort_sent_at is None:
                if worker.heartbeat.age() > timeout:
                    # First ask for the stacks (faulthandler in the worker), kill a moment later.
                    worker.abort_sent_at = now
                    _kill(worker.pid, STACK_SIGNAL)
            elif now - worker.abort_sent_at >= STACK_GRACE:
                self.log.error(
                    "worker_timeout",
                    slot=worker.slot,
                    worker_pid=worker.pid,
                    silent_seconds=round(worker.heartbeat.age(), 3),
                    stack=_read_stack(worker.stack_file),
                )
                worker.kill_reason = "timeout"
                _kill(worker.pid, signal.SIGKILL)

    def _resize(self, count: int) -> None:
        for index in range(max(count, len(self.slots))):
            slot = self.slots.setdefault(index, Slot(index, start_at=None, wanted=False))
            if index < count and not slot.wanted:
                slot.wanted, slot.failures, slot.start_at = True, 0, time.monotonic()
            elif index >= count and slot.wanted:
                slot.wanted, slot.start_at = False, None
                for worker in (slot.worker, slot.outgoing):
                    if worker is not None:
                        self._retire(worker)
                slot.worker = slot.outgoing = None
                # --reuse-port: the kernel must stop routing connections to this slot's socket;
                # those already queued on it are reset (the documented cost of --reuse-port)
                self.listeners.drop_slot(index)
        self.aggregator.set_desired(count)
        self.load[LOAD_IN_USE] = min(len(self.slots), LOAD_SLOTS)

    def _scale(self, delta: int) -> None:
        """One worker more (the lowest free slot) or fewer (the highest), never below one."""
        count = self.desired() + delta
        if self.stop is not None or count < 1:
            return
        self._resize(count)
        self._set_title()
        self.log.info("workers_scaled", workers=count)

    # -- stopping --------------------------------------------------------------------------------

    def _begin_stop(self, *, graceful: bool) -> None:
        if self.stop is not None and (graceful or not self.stop.graceful):
            return
        self.aggregator.set_draining()  # /healthz: 503 at once, for load balancers
        if graceful and self.settings.drain_delay and self.drain_until is None:
            # Keep accepting and serving while load balancers notice the 503 and stop routing
            # here; responses carry Connection: close. The stop proper comes at drain_until.
            self.drain_until = time.monotonic() + self.settings.drain_delay
            self.load[DRAINING] = 1
            self.notifier.send("STATUS=draining")
            self.log.info("draining", seconds=self.settings.drain_delay)
            return
        wait = self.settings.graceful_timeout + KILL_GRACE if graceful else KILL_GRACE
        self.stop = Stop(graceful=graceful, kill_at=time.monotonic() + wait)
        self.log.info("stopping", graceful=graceful, timeout=wait)
        self.notifier.stopping()
        if self.upgrade is not None and self.upgrade.process.poll() is None:
            # TERM from the new master (or anyone) during an upgrade: the new master serves the
            # sockets from now on, so unix socket files stay and the pid file is its own.
            self.log.info("upgrade_handed_over", new_master_pid=self.upgrade.pid)
            self.listeners.handed_over()
        # workers still hold their copies of the sockets until they drain
        if self.reload is not None and self.reload.listeners is not None:
            self.reload.listeners.close()
        self.listeners.close()
        for worker in self._all():
            self._ask_to_stop(worker, signal.SIGTERM if graceful else signal.SIGQUIT)

    def _advance_stop(self) -> None:
        assert self.stop is not None
        if not self.stop.killed and time.monotonic() >= self.stop.kill_at:
            self.stop.killed = True
            for worker in self._all():
                self.log.warning("worker_killed", slot=worker.slot, worker_pid=worker.pid)
                _kill(worker.pid, signal.SIGKILL)

    def _cleanup(self, wake_r: socket.socket, wake_w: socket.socket) -> None:
        for worker in self._all():
            _kill(worker.pid, signal.SIGKILL)
            worker.process.join(5)
            with contextlib.suppress(OSError):
                os.unlink(worker.stack_file)
        if self.metrics is not None:
            self.metrics.stop()
        if self.reload is not None and self.reload.listeners is not None:
            self.reload.listeners.close()
        self.listeners.close()
        signal.set_wakeup_fd(-1)
        wake_r.close()
        wake_w.close()
        self.alive_w.close()
        self.pid_file.remove()
        self.notifier.close()


def stale_window(settings: Settings) -> float:
    """How long a worker may go without reporting before /healthz calls it stale.

    Shorter than ``--timeout`` (which kills): a worker silent for a few stats intervals is
    already not serving, and operators should see that before the replacement happens.
    """
    window = max(2.0, 3 * settings.stats_interval)
    return min(window, settings.timeout) if settings.timeout else window


def _read_stack(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()[-20000:] or "(the worker wrote no stack: it did not answer)"
    except OSError:
        return "(no stack file)"


def _show(value: Any) -> Any:
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


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
    return "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
