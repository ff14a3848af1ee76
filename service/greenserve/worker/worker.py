"""A worker's life: patch, load the app, serve the inherited socket, report, drain on stop."""

from __future__ import annotations

import dataclasses
import faulthandler
import importlib
import os
import signal
import socket
import sys
import time
from typing import Any, NoReturn

import gevent
from gevent import monkey
from gevent import socket as gsocket
from gevent.event import Event
from setproctitle import setproctitle

from greenserve import logs
from greenserve.config import Address, Settings, parse_app
from greenserve.hooks import HookError, Hooks, ServerView, WorkerView
from greenserve.hooks import load as load_hooks
from greenserve.metrics import appvalue
from greenserve.metrics.appstats import AppMetricsReader
from greenserve.metrics.stats import (
    DRAINING,
    LOAD_SLOTS,
    LOAD_UNUSED,
    Heartbeat,
    StatsChannel,
    WorkerStats,
    resident_memory_bytes,
)
from greenserve.spec import EXIT_APP_LOAD, STACK_SIGNAL, WorkerSpec
from greenserve.tls_context import server_context
from greenserve.worker import apps, islands, socket_class, stackcache
from greenserve.worker.block_watch import watch_blocking
from greenserve.worker.protocols.accept import MAX_ACCEPT, BalancedServer, CountingServer
from greenserve.worker.protocols.http import GOING_AWAY
from greenserve.worker.protocols.http_handler import HttpHandler
from greenserve.worker.protocols.tcp import TcpProtocol
from greenserve.worker.recycle import MIB, Recycle
from greenserve.worker.request_hooks import with_request_hooks
from greenserve.worker.static import Static

LAG_PROBE_INTERVAL = 0.1
DRAIN_IDLE = 5.0  # with no keep-alive timeout, how long a drain keeps an idle connection


class AppLoadError(Exception):
    """The APP setting names something that cannot be imported or called."""


def load_app(settings: Settings) -> Any:
    """The handler: the built-in echo/hello, ``module:callable`` or ``module:factory(...)``,
    imported from the working directory (--chdir)."""
    if settings.app is None:  # "auto" without an APP is the echo service, as documented
        if settings.static and settings.protocol != "tcp":
            return apps.not_found  # a static site: 404 outside the mounts, as nginx
        return apps.hello if settings.protocol == "http" else apps.echo
    ref = parse_app(settings.app)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(ref.module)
    except ModuleNotFoundError as exc:
        if exc.name and ref.module.startswith(exc.name):
            raise AppLoadError(f"cannot import app module {ref.module!r}: {exc}") from None
        raise
    for part in ref.attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"app module {ref.module!r} has no {ref.attr!r}") from None
    if ref.args is not None:
        if not callable(target):
            raise AppLoadError(f"app factory {ref.attr!r} is not callable")
        target = target(*ref.args, **dict(ref.kwargs))
    if not callable(target):
        raise AppLoadError(f"app {settings.app!r} is not callable")
    return target


# The names apps give their two arguments, in the frameworks and handlers we know: WSGI's
# PEP 3333 spelling and Falcon's ``env``; gevent StreamServer handlers' (socket, address).
_WSGI_FIRST = frozenset(("environ", "env", "environment"))
_WSGI_SECOND = frozenset(("start_response", "start"))
_TCP_FIRST = frozenset(("sock", "socket", "conn", "connection", "client", "client_socket"))
_TCP_SECOND = frozenset(("address", "addr", "peer", "client_address", "remote", "peername"))


def app_protocol(app: Any) -> str | None:
    """``http`` for a WSGI app, ``tcp`` for a handler(sock, address), None when the callable
    does not say (``*args``, other names)."""
    import inspect

    if hasattr(app, "wsgi_app"):  # Flask and Werkzeug-style apps
        return "http"
    try:
        parameters = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(names) < 2:
        return None
    if names[0] in _WSGI_FIRST or names[1] in _WSGI_SECOND:
        return "http"
    if names[0] in _TCP_FIRST or names[1] in _TCP_SECOND:
        return "tcp"
    return None


def served_protocol(settings: Settings, app: Any) -> str:
    """The protocol to serve ``app`` with: an explicit --protocol, else what the app is (the
    built-in echo without an APP). An app that does not say is an error naming the flag."""
    if settings.protocol != "auto":
        return settings.protocol
    if settings.app is None:
        return "http" if settings.static else "tcp"
    found = app_protocol(app)
    if found is None:
        raise AppLoadError(
            f"cannot tell whether app {settings.app!r} is a WSGI app (environ, start_response) "
            "or a TCP handler (sock, address): add --protocol http or --protocol tcp"
        )
    return found


class Worker:
    """One worker process's serving loop and its background greenlets."""

    def __init__(self, spec: WorkerSpec, app: Any, log: Any, stats: WorkerStats) -> None:
        self.spec = spec
        self.settings = spec.settings
        self.log = log
        self.stats = stats
        self.channel = StatsChannel(spec.stats_queue)
        # The app's own prometheus_client metrics (appstats.py), read once per flush.
        settings = spec.settings
        self.app_metrics = (
            AppMetricsReader(settings.app_metrics_max_series) if settings.app_metrics else None
        )
        self.capped_logged = False
        self.heartbeat = Heartbeat(spec.heartbeat)
        self.stopping = Event()
        self.hooks, self.me = Hooks(), WorkerView(spec.slot, spec.generation, None, 0, None, log)
        self.ready = False
        settings = self.settings
        self.recycle = Recycle(settings, time.monotonic())
        listeners = [gsocket.socket(fileno=sock.detach()) for sock in spec.listeners]
        # HTTP: one handler per listener (its SERVER_NAME/PORT), sharing the worker's counters.
        self.https: list[HttpHandler] = []
        apps = [app] * len(listeners)
        if settings.protocol == "http":
            self.https = [
                HttpHandler(
                    app, settings, stats=self.stats, log=log, server_address=listener.getsockname()
                )
                for listener in listeners
            ]
            apps = [http.handle for http in self.https]
        # Fair accepts on a shared socket; with --reuse-port the kernel spreads connections.
        balanced = not settings.reuse_port and spec.slot < LOAD_SLOTS
        self.protocol = TcpProtocol(
            apps[0],
            settings,
            self.stats,
            log,
            deadlines=bool(self.https),
            publish=self._publish if balanced else None,
            tls=server_context(settings) if settings.certfile else None,
            nodelay=listeners[0].family != socket.AF_UNIX,
        )
        # One protocol per listener; all share the connection registry, sweeper and counters.
        self.protocols = [self.protocol] + [
            self.protocol.for_app(a, listener.family != socket.AF_UNIX)
            for a, listener in zip(apps[1:], listeners[1:], strict=True)
        ]
        self.servers: list[CountingServer] = []
        for listener, protocol in zip(listeners, self.protocols, strict=True):
            if balanced:
                server: CountingServer = BalancedServer(
                    listener,
                    protocol.handle,
                    connections=protocol.connections,
                    load=spec.load,
                    slot=spec.slot,
                )
            else:
                server = CountingServer(listener, protocol.handle, connections=protocol.connections)
            server.max_accept = MAX_ACCEPT
            self.servers.append(server)
        self.graceful = True

    def serve(self) -> int:
        gevent.signal_handler(signal.SIGTERM, self._request_stop, True)
        gevent.signal_handler(signal.SIGQUIT, self._request_stop, False)
        gevent.signal_handler(signal.SIGUSR1, logs.reopen)
        background = [
            gevent.spawn(self._probe_loop),
            gevent.spawn(self._flush_loop),
            gevent.spawn(self._watch_master),
        ]
        if self.protocol.idle is not None:
            background.append(gevent.spawn(self.protocol.idle.run))
        if self.https and self.settings.ws_ping_interval:
            background.append(gevent.spawn(self._ping_loop, self.settings.ws_ping_interval))
        for server in self.servers:
            server.start()
        if self.protocol.publish is not None:
            self._publish(self.stats.connections_active)
        self.ready = True
        # Logged before the ready snapshot goes out: the master acts on that snapshot (ends a
        # hand-over, grants the next recycle), and its events must follow this one in the log.
        self.log.info(
            "worker_started",
            bind=_shown(self.servers[0].socket),
            binds=len(self.servers),
            protocol=self.settings.protocol,
        )
        self.flush()  # the master counts this worker as serving from here on
        self.stopping.wait()
        self._drain()
        gevent.killall(background, block=False)
        self.flush()
        return 0

    def _request_stop(self, graceful: bool) -> None:
        self.graceful = graceful and self.graceful
        if not graceful:
            self.hooks.call("worker_int", self.me)
        self.stopping.set()

    def _publish(self, count: int) -> None:
        self.spec.load[self.spec.slot] = count

    def _drain(self) -> None:
        for server in self.servers:
            server.close()  # this worker stops accepting; the master's sockets stay open
        if self.protocol.publish is not None:
            # siblings must not defer accepts to a worker that no longer accepts
            for protocol in self.protocols:
                protocol.publish = None
            self.spec.load[self.spec.slot] = LOAD_UNUSED
        if self.https:
            # Responses from now on carry Connection: close; an idle keep-alive connection is
            # closed at its keep-alive deadline unless a request comes first, and before the
            # graceful timeout in any case.
            for http in self.https:
                http.draining = True
                http.close_websockets()
                http.goaway_http2()
            settings = self.settings
            # A WebSocket the app speaks itself (Flask-Sock, Socket.IO) would otherwise hold
            # the drain for the whole graceful timeout; wsgi.websocket ones got Close 1001.
            ours = {ws.sock.watched for http in self.https for ws in http.websockets}
            self.protocol.connections.end_upgraded(settings.ws_close_timeout, ours, GOING_AWAY)
            within = 0.0
            if self.graceful:
                keepalive = settings.keepalive_timeout or DRAIN_IDLE
                within = min(keepalive, max(settings.graceful_timeout - 1.0, 0.1))
            self.protocol.connections.close_parked(within)
        connections = self.protocol.connections
        if self.graceful and connections.open:
            self.log.info("worker_draining", connections=len(connections.open))
            connections.drained.wait(timeout=self.settings.graceful_timeout)
        if connections.open:
            self.log.warning("worker_killing_connections", connections=len(connections.open))
            connections.kill_all()
            connections.drained.wait(timeout=1)

    def flush(self) -> None:
        self.protocol.connections.fold()
        # what apps took over by now, counted in this very snapshot
        self.stats.upgraded_connections_active = sum(http.upgrades.settle() for http in self.https)
        self.stats.log_lines_dropped = logs.dropped()
        reader = self.app_metrics
        delta = reader.delta() if reader is not None else None
        if reader is not None:
            self.stats.app_series_capped = reader.capped
            if reader.capped and not self.capped_logged:
                self.capped_logged = True
                self.log.warning(
                    "app_metrics_capped",
                    series_left_out=reader.capped,
                    max_series=self.settings.app_metrics_max_series,
                    hint="a label with unbounded values (ids, paths)? or raise the cap",
                )
        message = self.stats.snapshot(
            slot=self.spec.slot,
            generation=self.spec.generation,
            ready=self.ready,
            retire=self.recycle.reason,
        )
        reason = self.recycle.sample_rss(message["gauges"]["resident_memory_bytes"])
        if reason:  # asked in this very snapshot
            message["retire"] = reason
            self._recycle_requested(reason)
        if delta is not None:
            message["app"] = delta.to_wire()
        if not self.channel.send(message):
            self.stats.stats_dropped += 1
        elif delta is not None and reader is not None:
            reader.commit()  # the master has it: the next delta is taken against it

    def _flush_loop(self) -> None:
        interval = self.settings.stats_interval
        while True:
            gevent.sleep(interval)
            self.flush()

    def _ping_loop(self, interval: float) -> None:
        """--ws-ping-interval: one greenlet pings every open wsgi.websocket (no timer each)."""
        while True:
            gevent.sleep(interval)
            for http in self.https:
                http.ping_websockets()

    def _probe_loop(self) -> None:
        """Heartbeat and event-loop lag: how late the hub wakes a timer is the blocked time."""
        lag = self.stats.histograms["event_loop_lag_seconds"]
        clock = time.perf_counter
        while True:
            self.heartbeat.beat()
            started = clock()
            gevent.sleep(LAG_PROBE_INTERVAL)
            lag.observe(max(0.0, clock() - started - LAG_PROBE_INTERVAL))
            if self.spec.load[DRAINING] and self.https and not self.https[0].draining:
                # --drain-delay: still accepting, but every response now closes its connection
                for http in self.https:
                    http.draining = True
            reason = self.recycle.check(self._served(), time.monotonic())
            if reason:
                # Ask the master for a turn: it replaces one worker at a time, so recycling
                # never takes two workers out together. Serving goes on meanwhile.
                self._recycle_requested(reason)
                self.flush()

    def _recycle_requested(self, reason: str) -> None:
        self.log.info(
            "worker_recycle_requested",
            reason=reason,
            served=self._served(),
            rss_mib=round(resident_memory_bytes() / MIB, 1),
        )

    def _served(self) -> int:
        if self.https:
            return self.stats.requests_served
        return self.stats.connections_accepted

    def _watch_master(self) -> None:
        """The master holds the only write end of this pipe: EOF means the master is gone."""
        gsocket.wait_read(self.spec.master_alive.fileno())
        self.log.error("master_gone")
        _exit(1)


def _tracing(settings: Settings) -> Any:
    """--otel: this worker's OpenTelemetry SDK (tracing.py), or None."""
    if not settings.otel:
        return None
    from greenserve.worker.tracing import Tracing  # the [otel] extra, only when asked for

    return Tracing(settings)


def _hooks(spec: WorkerSpec, log: Any, stack_file: Any) -> tuple[Hooks, ServerView, WorkerView]:
    """This worker's hooks, with post_fork called: before the app is imported, as gunicorn."""
    settings = spec.settings
    hooks = load_hooks(settings.hooks, log, process="worker")
    server = ServerView(
        spec.master_pid, settings, log, settings.workers, list(map(str, settings.bind))
    )
    me = WorkerView(spec.slot, spec.generation, os.getpid(), spec.master_pid, settings, log)
    if "worker_abort" in hooks:
        # A Python handler from the real signal.signal (gevent's would wait for the hub, which
        # a stuck worker's is not running): it runs between two bytecodes of whatever spins.
        # faulthandler dumps the stacks first, from C, then chains to it.
        def abort(_signum: int, _frame: Any) -> None:
            hooks.call("worker_abort", me)

        faulthandler.unregister(STACK_SIGNAL)  # a second register would keep its C handler
        monkey.get_original("signal", "signal")(STACK_SIGNAL, abort)
        faulthandler.register(STACK_SIGNAL, file=stack_file, all_threads=True, chain=True)
    if not hooks.call("post_fork", server, me):
        raise HookError("post_fork raised: this worker does not serve")
    return hooks, server, me


def _shown(sock: Any) -> str:
    """A listening socket's address as --bind spells it."""
    name = sock.getsockname()
    if isinstance(name, str):
        return f"unix:{name}"
    return str(Address(name[0], name[1]))


def _exit(code: int) -> NoReturn:
    sys.stdout.flush()
    os._exit(code)


def _route_unraisable(log: Any) -> None:
    """Unraisable exceptions become log events instead of loose stderr lines."""

    def hook(unraisable: Any) -> None:
        # The stats feeder is a real thread started before patching (boot.start); when it ends,
        # threading's bookkeeping looks it up under gevent's ident and raises KeyError. Harmless.
        if isinstance(unraisable.exc_value, KeyError) and "QueueFeederThread" in repr(
            unraisable.object
        ):
            return
        log.warning(
            "unraisable_exception",
            message=unraisable.err_msg or "",
            object=repr(unraisable.object),
            exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
        )

    sys.unraisablehook = hook


def _drop_privileges(settings: Settings) -> None:
    """Switch to --user/--group; the master kept root only to bind."""
    if settings.user is None and settings.group is None:
        return
    import pwd  # only with --user/--group; before setuid, while readable

    gid = settings.group
    if gid is None and settings.user is not None:
        gid = pwd.getpwuid(settings.user).pw_gid
    if gid is not None:
        os.setgroups([gid])
        os.setgid(gid)
    if settings.user is not None:
        os.setuid(settings.user)


def run(spec: WorkerSpec) -> NoReturn:
    """Entry point after boot: never returns, the process ends here."""
    # Patching happens here, not at import: the forkserver preloads this module and must keep
    # its own stdlib unpatched; every module imported so far is patched in place.
    monkey.patch_all()
    socket_class.install()  # attribute reads on sockets without gevent's __getattr__ hook
    # gevent records who spawned each greenlet (for its debugging dumps): 13.5 us against 5.2 us
    # per Greenlet created, measured, and one is created per connection.
    gevent.config.track_greenlet_tree = False
    stackcache.install()  # a greenlet's frame stack chunk kept when it ends, for the next one
    settings = spec.settings
    # Files first, while this process may still be root; then drop privileges.
    logs.configure(
        log_format=settings.log_format,
        level=settings.log_level,
        worker=spec.slot,
        log_file=settings.log_file,
        access_format=settings.access_log_format,
    )
    log = logs.get()
    if settings.capture_output:
        logs.capture_output()
    _route_unraisable(log)
    stack_file = open(spec.stack_file, "w")  # noqa: SIM115 - lives as long as the process
    # The master sends SIGUSR2 to a worker that missed its heartbeat: the stacks of every
    # thread go to this file (from C, so even a spinning loop answers), the master logs them.
    # (faulthandler refuses to register SIGABRT, which it reserves for fatal errors.)
    faulthandler.register(STACK_SIGNAL, file=stack_file, all_threads=True, chain=False)
    # The hub picks and imports its event loop lazily: do it while the interpreter's files are
    # surely readable (a Python installed under a private home is not, for the new user).
    gevent.get_hub()
    stats = WorkerStats()
    watch_blocking(settings.block_warn, stats, log)  # a thread of its own (block_watch.py)
    # Before the app (it may import asgiref) and while the interpreter's files are surely
    # readable: the thread pool is another lazy import of gevent's (gevent.threadpool).
    islands.install(settings.asyncio_threads)
    _drop_privileges(settings)
    setproctitle(f"greenserve: worker {spec.slot} [{', '.join(str(b) for b in settings.bind)}]")
    if settings.app_metrics:
        appvalue.install()  # before the hooks and the app make their metrics
    try:
        tracing = _tracing(settings)  # before post_fork: a hook may add to it
        hooks, server, me = _hooks(spec, log, stack_file)
        app = load_app(settings)
        protocol = served_protocol(settings, app)
        me.app = app
        if not hooks.call("post_worker_init", me):
            _exit(EXIT_APP_LOAD)
    except (AppLoadError, HookError) as exc:
        log.error("app_load_failed", app=settings.app, error=str(exc))
        _exit(EXIT_APP_LOAD)
    except BaseException as exc:  # the app's own import failed: keep its traceback as a field
        log.error("app_load_failed", app=settings.app, error=repr(exc), exc_info=True)
        _exit(EXIT_APP_LOAD)
    if settings.capture_output:
        logs.drop_echoing_handlers()  # the app's logging set-up may print what we log already
    if protocol == "tcp" and settings.static:
        log.error("app_load_failed", app=settings.app, error="--static needs HTTP, the app is a "
                  "TCP handler (sock, address)")  # fmt: skip
        _exit(EXIT_APP_LOAD)
    wsgi_suspect = protocol == "tcp" and app_protocol(app) == "http"
    if wsgi_suspect:
        # --protocol tcp given for a WSGI app: every connection would fail with an AttributeError.
        log.warning(
            "protocol_mismatch",
            app=settings.app,
            hint="the app takes (environ, start_response), a WSGI app: run with --protocol http",
        )
    if protocol != settings.protocol:
        spec = dataclasses.replace(spec, settings=settings.with_changes(protocol=protocol))
    if protocol == "http":
        if settings.static:
            app = Static(app, settings.static, stats).front()  # files first, as --static says
        app = with_request_hooks(app, hooks, me)
        if tracing is not None:
            app = tracing.wrap(app)  # outermost: the span covers the request hooks too
    worker = Worker(spec, app, log, stats)
    worker.protocol.wsgi_suspect = wsgi_suspect
    worker.hooks, worker.me = hooks, me
    code = worker.serve()
    me.alive = False
    hooks.call("worker_exit", server, me)
    if tracing is not None:
        tracing.shutdown()  # after worker_exit, whose spans go out too
    # Deliver the final snapshot before leaving: the feeder is a real thread, and the queue is
    # bounded far below a pipe's capacity, so this join cannot wait on the master.
    spec.stats_queue.close()
    spec.stats_queue.join_thread()
    log.info("worker_stopped", code=code)
    _exit(code)
