"""The master's side of a worker process: starting it with its private channels, reading its
stats, signalling it, and releasing what it held once it is dead.

Never imports gevent: a worker process starts in ``boot.start`` from the forkserver.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from greenserve.config import Settings
from greenserve.master.slots import WorkerProcess
from greenserve.metrics.stats import LOAD_SLOTS, LOAD_UNUSED, Heartbeat, Snapshot
from greenserve.spec import STACK_SIGNAL, WorkerSpec
from greenserve.worker import boot

# The forkserver is a fresh interpreter (no threads, no copied locks) that imports these once;
# each worker is then a fork of it, so a respawn costs a fork, not an interpreter start.
PRELOAD = ["greenserve.worker.preload"]
STATS_QUEUE_SIZE = 8  # snapshots in flight per worker; far below a pipe's 64 KiB
MAX_MESSAGES_PER_TICK = 64
STACK_GRACE = 0.5  # time a timed-out worker gets to dump its stacks before SIGKILL


@dataclass
class Channels:
    """A worker's process object and what only it and the master share."""

    process: Any
    stats_queue: Any
    heartbeat: Heartbeat
    stack_file: str


class Launcher:
    """Starts worker processes from one forkserver."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        # each slot's open connections (written by its worker, read by its siblings for fair
        # accepts), the number of slots in use and the drain flag
        self.load = self.ctx.RawArray("i", [LOAD_UNUSED] * LOAD_SLOTS + [0, 0])
        # workers see end of file on it when the master is gone
        self.alive_r, self.alive_w = self.ctx.Pipe(duplex=False)

    def start(
        self, slot: int, generation: int, settings: Settings, listeners: tuple[Any, ...]
    ) -> WorkerProcess:
        heartbeat = self.ctx.RawValue("d", time.monotonic())
        stats_queue = self.ctx.Queue(STATS_QUEUE_SIZE)
        handle, stack_file = tempfile.mkstemp(prefix=f"greenserve-stack-{slot}-")
        os.close(handle)
        if settings.user is not None:
            os.chown(stack_file, settings.user, settings.group or -1)
        spec = WorkerSpec(
            slot=slot,
            generation=generation,
            settings=settings,
            listeners=listeners,
            stats_queue=stats_queue,
            heartbeat=heartbeat,
            master_alive=self.alive_r,
            stack_file=stack_file,
            load=self.load,
            master_pid=os.getpid(),
        )
        process = self.ctx.Process(
            target=boot.start, args=(spec,), name=f"greenserve-worker-{slot}", daemon=False
        )
        process.start()
        assert process.pid is not None  # started
        # The clock starts once the process exists: the first start also starts the forkserver,
        # whose imports took 0.6 s of a 1 s --timeout on a loaded CI machine (slot 0 was killed
        # as silent before it had run at all).
        started = heartbeat.value = time.monotonic()
        channels = Channels(process, stats_queue, Heartbeat(heartbeat), stack_file)
        return WorkerProcess(slot, generation, process.pid, started, channels)

    def close(self) -> None:
        self.alive_w.close()


def messages(worker: WorkerProcess) -> Iterator[Snapshot]:
    """What the worker sent since the last call, bounded so one worker cannot starve the loop."""
    for _ in range(MAX_MESSAGES_PER_TICK):
        try:
            yield worker.channels.stats_queue.get_nowait()
        except (queue.Empty, OSError, EOFError):
            return


def is_alive(worker: WorkerProcess) -> bool:
    return bool(worker.channels.process.is_alive())


def exit_code(worker: WorkerProcess) -> int | None:
    code: int | None = worker.channels.process.exitcode
    return code


def sentinel(worker: WorkerProcess) -> int:
    return int(worker.channels.process.sentinel)


def heartbeat_age(worker: WorkerProcess) -> float:
    return worker.channels.heartbeat.age()


def timeout_verdict(worker: WorkerProcess, timeout: float, now: float) -> str:
    """What --timeout does to ``worker`` now: "kill" once a worker silent for ``timeout`` had
    its chance to dump its stacks; "unblocked" when it beat again during that chance (gunicorn
    too kills only a worker still silent when it looks); "" otherwise.

    The first call past the timeout asks for the stacks (faulthandler in the worker, on
    STACK_SIGNAL); the kill comes STACK_GRACE later, so the log shows where it was stuck.
    """
    if worker.kill_reason == "timeout":
        return ""
    if worker.abort_sent_at is None:
        if heartbeat_age(worker) > timeout:
            worker.abort_sent_at = now
            kill(worker.pid, STACK_SIGNAL)
        return ""
    if heartbeat_age(worker) <= timeout:
        worker.abort_sent_at = None  # a later silence starts over
        return "unblocked"
    return "kill" if now - worker.abort_sent_at >= STACK_GRACE else ""


def release(worker: WorkerProcess) -> None:
    """Close a dead worker's channels and remove its stack file."""
    worker.channels.stats_queue.close()
    worker.channels.process.close()
    with contextlib.suppress(OSError):
        os.unlink(worker.channels.stack_file)


def end(worker: WorkerProcess) -> None:
    """SIGKILL and reap, for the master's own exit."""
    kill(worker.pid, signal.SIGKILL)
    worker.channels.process.join(5)
    with contextlib.suppress(OSError):
        os.unlink(worker.channels.stack_file)


def read_stack(worker: WorkerProcess) -> str:
    try:
        with open(worker.channels.stack_file, errors="replace") as handle:
            return handle.read()[-20000:] or "(the worker wrote no stack: it did not answer)"
    except OSError:
        return "(no stack file)"


def kill(pid: int | None, signum: int) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
