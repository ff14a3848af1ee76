"""The master: binds once, starts and replaces workers, acts on signals, serves metrics.

It never imports gevent and never runs user code. Signal handlers only queue the signal; the one
loop in ``Master.run`` goes through named phases each turn. Decisions about slots (who is due,
who hands over to whom, backoff, recycling, rollback) are the slot table's (slots.py); this
module performs what they imply: spawn, signal, log, publish.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing import connection

from setproctitle import setproctitle

from greenserve import logs
from greenserve.config import Bind, ConfigError, FdAddress, Settings, changes
from greenserve.hooks import Hooks, ServerView
from greenserve.master import signals
from greenserve.master.listeners import Listeners
from greenserve.master.notify import Notifier, activated_fds
from greenserve.master.phase_guard import PhaseGuard
from greenserve.master.pidfile import PidFile
from greenserve.master.processes import kill
from greenserve.master.reload import Reload, prepare
from greenserve.master.reloader import reloader_for
from greenserve.master.signals import SignalQueue
from greenserve.master.slots import Exit, WorkerProcess
from greenserve.master.sockets import BindError, one_line
from greenserve.master.supervisor import Supervisor
from greenserve.master.upgrade import Predecessor, Upgrade, inherited
from greenserve.metrics.aggregate import Aggregator, MasterState
from greenserve.metrics.metrics import MetricsServer, serve_metrics
from greenserve.metrics.stats import DRAINING
from greenserve.spec import EXIT_APP_LOAD, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from greenserve.tls_context import TlsError, announce_certificate
from greenserve.tls_context import check as check_tls

LOOP_TICK = 0.05
KILL_GRACE = 1.0  # after a stop deadline, workers get this long to exit on their own
UPGRADE_DEADLINE = 60.0  # seconds a new master (USR2) gets to have every worker accepting


@dataclass
class Stop:
    """A stop in progress: when the workers get SIGKILL."""

    graceful: bool
    kill_at: float
    killed: bool = False


@dataclass
class Master:
    """Supervises the workers serving the listening sockets."""

    settings: Settings
    argv: list[str] = field(default_factory=list)  # re-read on HUP: CLI values keep winning
    exit_code: int = EXIT_OK
    hooks: Hooks = field(default_factory=Hooks)  # the user's, loaded and checked by the CLI

    def __post_init__(self) -> None:
        self.log = logs.get()
        self.signals = SignalQueue()
        self.aggregator = Aggregator()
        self.generation = 1
        self.stop: Stop | None = None
        self.reload: Reload | None = None
        self.server = ServerView(os.getpid(), self.settings, self.log, self.settings.workers)
        self.workers = Supervisor(self.aggregator, self.log, self.hooks, self.server)
        self.tls_expiry: float | None = None
        # --drain-delay: when the real stop begins; set once (a second TERM stops at once)
        self.drain_until: float | None = None
        self.metrics: MetricsServer | None = None
        self.pid_file = PidFile(self.settings.pid_file)
        self.start_cwd = os.getcwd()
        self.notifier = Notifier(os.environ)
        # Sockets from systemd (LISTEN_FDS), or from the old master of a USR2 upgrade, replace
        # --bind, also for every reload.
        self.inherited, self.upgrade_from, self.metrics_fd = inherited(os.environ)
        fds = tuple(FdAddress(fd) for fd in activated_fds(os.environ))
        self.bind_override: tuple[Bind, ...] | None = fds or tuple(self.inherited) or None
        self.predecessor = Predecessor.from_env(os.environ, self.upgrade_from)
        if self.bind_override:
            self.settings = self.settings.with_changes(bind=self.bind_override)
        self.listeners = Listeners(self.settings)
        self.upgrade: Upgrade | None = None  # a new master this one started (USR2)

    # -- start-up ------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        try:
            certificate = check_tls(self.settings)
        except TlsError as exc:
            self.log.error("startup_failed", error=str(exc))
            return EXIT_USAGE
        self.tls_expiry = announce_certificate(self.log, certificate)
        self.hooks.call("on_starting", self.server)
        try:
            if self.settings.chdir:
                os.chdir(self.settings.chdir)  # before the forkserver starts: workers inherit it
            self.listeners.open(inherited=self.inherited)
            for index in range(self.settings.workers):
                self.listeners.for_slot(index)
            self.metrics = serve_metrics(self.settings, self.aggregator, self.log, self.metrics_fd)
        except (BindError, OSError) as exc:
            self.log.error("startup_failed", error=one_line(exc))
            self.listeners.close()
            return EXIT_RUNTIME
        self.server.address = binds = self.listeners.addresses()
        self.hooks.call("when_ready", self.server)
        self.signals.install()
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
        self.workers.resize(self.settings.workers, self.listeners)
        self.reloader = reloader_for(self.settings, self.log)
        self._set_title()
        self._publish()
        try:
            self._loop()
        finally:
            self._cleanup()
        self.log.info("stopped", code=self.exit_code)
        return self.exit_code

    def _set_title(self) -> None:
        setproctitle(
            f"greenserve: master [{', '.join(self.listeners.addresses())}, "
            f"{self.workers.table.desired()} workers, generation {self.generation}]"
        )

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        workers, guard = self.workers, PhaseGuard(self.log)
        phases = (  # each turn, in this order; one that raises is logged and the turn goes on
            ("read_stats", workers.read_stats),
            ("hand_over", workers.hand_over),
            ("reload_done", self._reload_done),
            ("reap", self._reap),
            ("check_workers", self._check_workers),
            ("announce_ready", self._announce_ready),
            ("end_drain", self._end_drain),
            ("watch_upgrade", self._watch_upgrade),
            ("watchdog", lambda: self.notifier.ping(time.monotonic())),
            ("repeat_stops", workers.repeat_stop_requests),
            ("publish", self._publish),
            ("carry_over", self._carry_over),  # after publish: /healthz must not lag a turn
            ("advance_stop", self._advance_stop),
        )
        while True:
            if self.stop is None:
                guard.run(
                    "spawn", workers.spawn_due, self.generation, self.settings, self.listeners
                )
            connection.wait([self.signals.wake, *workers.sentinels()], LOOP_TICK)
            for signum in self.signals.take():
                guard.run("signal", signals.dispatch, self, signum)
            for name, phase in phases:
                guard.run(name, phase)
            if self.stop is not None and not workers.live():
                return

    def _reap(self) -> None:
        for worker, result in self.workers.reap(stopping=self.stop is not None):
            self._cannot_load(worker, result)

    def _check_workers(self) -> None:
        if self.stop is None:
            self.workers.check_heartbeats(self.settings.timeout)
            self.workers.recycle()

    def _publish(self) -> None:
        table = self.workers.table
        # Handed over (USR2): the new master answers health checks; a scrape this one was
        # still answering must not say "draining" of a server that is not going away.
        handed_over = self.upgrade is not None and self.upgrade.process.poll() is None
        draining = (self.stop is not None or self.drain_until is not None) and not handed_over
        state = (table.desired(), self.generation, table.liveness(), self.tls_expiry, draining)
        self.aggregator.publish(MasterState(*state, self.listeners.queues()))

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
        signals.reopen_logs(self.settings, self.workers, self.log)

    def handle_sigusr2(self) -> None:
        """Binary upgrade: a new master from the installed greenserve, on the same sockets."""
        if self.stop is not None or self.upgrade is not None or self.upgrade_from is not None:
            self.log.warning("upgrade_refused", reason="a stop or an upgrade is in progress")
            return
        self.hooks.call("pre_exec", self.server)
        self.pid_file.set_aside()
        extra = self.notifier.child_environ()  # the new master reports to systemd too
        self.upgrade = Upgrade(
            self.argv, self.listeners.fds(), self.start_cwd, UPGRADE_DEADLINE, extra, self.metrics
        )
        self.log.info("upgrade_started", new_master_pid=self.upgrade.pid)

    def handle_sighup(self) -> None:
        """Re-read the config, start a new generation, drain the old one once it serves."""
        if self.stop is not None:
            return
        self.notifier.reloading()
        try:
            new = prepare(self.argv, os.environ, self.bind_override, self.listeners)
        except (ConfigError, TlsError, BindError) as exc:
            self.notifier.ready(self._status())
            self.log.error("reload_failed", error=str(exc), hint="the running workers go on")
            return
        previous = self.listeners if new.listeners is not self.listeners else None
        if self.reload is None:
            self.reload = Reload(self.settings, self.generation, previous)
        elif previous is not None:
            self.reload.replaced(previous, new.listeners)
        changed = changes(self.settings, new.settings)
        self.tls_expiry = announce_certificate(self.log, new.certificate)
        self.settings, self.listeners = new.settings, new.listeners
        self.server.settings, self.generation = new.settings, self.generation + 1
        self.hooks.call("on_reload", self.server)
        self.workers.resize(new.settings.workers, self.listeners)
        self.workers.replace_all("reload")
        self._set_title()
        self.log.info("reload", generation=self.generation, changed=changed)

    # -- phases ----------------------------------------------------------------------------------

    def _reload_done(self) -> None:
        if self.reload is not None and not self.workers.table.handing_over():
            self.reload.complete(self.listeners)
            self.reload = None
            self.log.info("reload_complete", generation=self.generation)
            self.notifier.ready(self._status())

    def _cannot_load(self, worker: WorkerProcess, result: Exit) -> None:
        """A new process exited because the app cannot load: undo the reload, or halt."""
        if result.then == "abort_reload":
            self._abort_reload()
            return
        self.log.error(
            "app_cannot_load",
            app=self.settings.app,
            slot=worker.slot,
            hint="the master stops instead of restarting workers that cannot start",
        )
        self.exit_code = EXIT_APP_LOAD
        self._begin_stop(graceful=False)

    def _abort_reload(self) -> None:
        """The new generation cannot load its app: keep the old one serving."""
        assert self.reload is not None
        self.log.error(
            "reload_failed",
            error="the new generation cannot load the app",
            app=self.settings.app,
            hint="the previous generation goes on serving",
        )
        self.workers.roll_back()
        self.listeners = self.reload.roll_back(self.listeners)
        self.settings, self.generation = self.reload.settings, self.reload.generation
        self.reload = None
        self._set_title()
        self.notifier.ready(self._status())

    def _announce_ready(self) -> None:
        """Once every wanted slot's worker accepts: READY=1, and the end of an upgrade."""
        if self.stop is not None or (self.notifier.ready_sent and self.upgrade_from is None):
            return
        if not self.workers.table.all_ready():
            return
        if self.upgrade_from is not None:
            if self.predecessor is not None:
                self.predecessor.told_at = time.monotonic()  # metrics: see _carry_over
            self.log.info("upgrade_complete", old_master_pid=self.upgrade_from)
            kill(self.upgrade_from, signal.SIGTERM)  # the old master drains and exits
            self.notifier.main_pid(os.getpid())
            self.upgrade_from = None
        if not self.notifier.ready_sent:
            self.notifier.ready(self._status())

    def _status(self) -> str:
        return (
            f"{self.workers.table.ready_count()}/{self.workers.table.desired()} workers ready, "
            f"generation {self.generation}"
        )

    def _end_drain(self) -> None:
        drain_until = self.drain_until
        if drain_until is not None and self.stop is None and time.monotonic() >= drain_until:
            self._begin_stop(graceful=True)

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

    def _carry_over(self) -> None:
        """USR2: a draining old master shares the app's totals, the new one takes them (upgrade)."""
        if self.upgrade is not None and self.stop is not None:
            self.upgrade.share(self.aggregator.app_totals)
        if self.predecessor is not None:
            self.predecessor.poll(self.aggregator.inherit_app_totals)
            if self.metrics is not None and self.predecessor.ready():
                self.metrics.start()

    def _scale(self, delta: int) -> None:
        """One worker more (the lowest free slot) or fewer (the highest), never below one."""
        count = self.workers.table.desired() + delta
        if self.stop is not None or count < 1:
            return
        self.workers.resize(count, self.listeners)
        self._set_title()
        self.log.info("workers_scaled", workers=count)

    # -- stopping --------------------------------------------------------------------------------

    def _begin_stop(self, *, graceful: bool) -> None:
        if self.stop is not None and (graceful or not self.stop.graceful):
            return
        if self.metrics and self.upgrade is not None and self.upgrade.process.poll() is None:
            self.metrics.stop()  # the new master answers there now: no /healthz 503 of a drain
        if graceful and self.settings.drain_delay and self.drain_until is None:
            # Keep accepting and serving while load balancers notice the 503 and stop routing
            # here; responses carry Connection: close. The stop proper comes at drain_until.
            self.drain_until = time.monotonic() + self.settings.drain_delay
            self.workers.load[DRAINING] = 1
            self.notifier.send("STATUS=draining")
            self.log.info("draining", seconds=self.settings.drain_delay)
            self._publish()  # /healthz: 503 at once, for load balancers
            return
        wait = self.settings.graceful_timeout + KILL_GRACE if graceful else KILL_GRACE
        self.stop = Stop(graceful=graceful, kill_at=time.monotonic() + wait)
        self._publish()
        self.log.info("stopping", graceful=graceful, timeout=wait)
        self.notifier.stopping()
        if self.upgrade is not None and self.upgrade.process.poll() is None:
            # TERM from the new master (or anyone) during an upgrade: the new master serves the
            # sockets from now on, so unix socket files stay and the pid file is its own.
            self.log.info("upgrade_handed_over", new_master_pid=self.upgrade.pid)
            self.listeners.handed_over()
        # workers still hold their copies of the sockets until they drain
        if self.reload is not None:
            self.reload.close()
        self.listeners.close()
        self.workers.stop_all(signal.SIGTERM if graceful else signal.SIGQUIT)

    def _advance_stop(self) -> None:
        if self.stop is not None and not self.stop.killed and time.monotonic() >= self.stop.kill_at:
            self.stop.killed = True
            self.workers.kill_all()

    def _cleanup(self) -> None:
        if self.reloader is not None:
            self.reloader.stop()
        if self.upgrade is not None and self.stop is not None:
            self.upgrade.share(self.aggregator.app_totals, last=True)  # all its workers folded
        self.workers.close()
        if self.metrics is not None:
            self.metrics.stop()
        if self.reload is not None:
            self.reload.close()
        self.listeners.close()
        self.signals.close()
        self.pid_file.remove()
        self.notifier.close()
        self.hooks.call("on_exit", self.server)
