"""Example server hooks: ``greenserve app:app --hooks config/hooks.py``.

Every hook greenserve calls, with gunicorn's names and arguments (a gunicorn.conf.py's hooks
work unchanged). Each one here logs ``hook_called`` with its name, so the example can be run as
it is and its log read; replace a body with what your service needs. Delete the hooks you do
not use: an absent hook costs nothing, and without pre_request/post_request the request path
has no hook at all.

``server``: pid, cfg (the settings), log, num_workers, address.
``worker``: pid, ppid, slot, generation (also age), cfg, log, app (once loaded), alive.
``req``: method, path, query, uri, version, headers. ``resp``: status, status_code, headers,
sent (body bytes).
"""

from __future__ import annotations

from typing import Any


def on_starting(server: Any) -> None:
    """Master, before the sockets are bound: check the environment, create directories."""
    server.log.info("hook_called", hook="on_starting")


def when_ready(server: Any) -> None:
    """Master, sockets bound, before the first worker starts: register with discovery."""
    server.log.info("hook_called", hook="when_ready", address=server.address)


def on_reload(server: Any) -> None:
    """Master, a HUP's new settings accepted, before the new workers start."""
    server.log.info("hook_called", hook="on_reload")


def pre_fork(server: Any, worker: Any) -> None:
    """Master, before a worker starts (worker.pid is None yet)."""
    server.log.info("hook_called", hook="pre_fork", slot=worker.slot)


def post_fork(server: Any, worker: Any) -> None:
    """Worker, before the app is imported: set up what must not be shared across a fork
    (an OpenTelemetry SDK, a client's connection pool, a random seed)."""
    worker.log.info("hook_called", hook="post_fork", worker_pid=worker.pid)


def post_worker_init(worker: Any) -> None:
    """Worker, the app is loaded, before the first accept: warm caches."""
    worker.log.info("hook_called", hook="post_worker_init")


def pre_request(worker: Any, req: Any) -> None:
    """Worker, before the app sees an HTTP request. Raising answers the request 500."""
    worker.log.debug("hook_called", hook="pre_request", method=req.method, path=req.path)


def post_request(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    """Worker, after the response was sent."""
    worker.log.debug("hook_called", hook="post_request", path=req.path, status=resp.status_code)


def worker_int(worker: Any) -> None:
    """Worker told to stop at once (QUIT, or the master's second Ctrl-C)."""
    worker.log.info("hook_called", hook="worker_int")


def worker_abort(worker: Any) -> None:
    """Worker that missed its heartbeat for --timeout; the master kills it 0.5 s later. Runs
    between two bytecodes of whatever blocks the worker: keep it short."""
    worker.log.info("hook_called", hook="worker_abort")


def worker_exit(server: Any, worker: Any) -> None:
    """Worker, after it stopped serving: flush what it buffers (telemetry, a client's queue)."""
    worker.log.info("hook_called", hook="worker_exit")


def child_exit(server: Any, worker: Any) -> None:
    """Master, a worker process ended (worker.exitcode; negative: the signal)."""
    server.log.info("hook_called", hook="child_exit", slot=worker.slot, code=worker.exitcode)


def nworkers_changed(server: Any, new_value: int, old_value: int) -> None:
    """Master, the wanted number of workers changed (TTIN, TTOU, a HUP)."""
    server.log.info("hook_called", hook="nworkers_changed", new=new_value, old=old_value)


def pre_exec(server: Any) -> None:
    """Master, on USR2 before the new master starts."""
    server.log.info("hook_called", hook="pre_exec")


def on_exit(server: Any) -> None:
    """Master, about to exit."""
    server.log.info("hook_called", hook="on_exit")
