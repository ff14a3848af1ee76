"""A worker's first steps, before gevent exists in it.

This module is stdlib only so that the master can name ``start`` as a process target without
importing gevent (the master never does). It ties the worker's life to its parents and starts the
stats queue's feeder thread while ``threading`` is still the real one, then hands over to
``greenserve.worker.worker`` which monkey-patches and serves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import sys
import traceback

from greenserve.spec import EXIT_RUNTIME, WorkerSpec

PR_SET_PDEATHSIG = 1


def start(spec: WorkerSpec) -> None:
    """Process target: prepare, then serve until told to stop."""
    die_with_parent()
    # Ctrl-C reaches the whole process group; the master turns it into an orderly stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The forkserver ignores TERM and QUIT (preload.py) and its children inherit that. Until the
    # worker installs its draining handlers it has nothing in flight, so a stop that arrives
    # while it boots ends it at once (it used to be lost, and the stop waited for the kill).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    # gevent's docs warn that multiprocessing.Queue hangs once threading is patched, and it does
    # here: a feeder started after patching is a greenlet waiting on a Condition made before
    # patching, which blocks the whole hub (seen with py-spy in Queue._feed). Sending the first
    # message now starts the feeder as a real OS thread; puts from greenlets only append to its
    # buffer, so the hub never waits on the pipe or on the master.
    spec.stats_queue.put_nowait({"v": 1, "kind": "boot", "slot": spec.slot})
    try:
        # Imported here, not at the top: the master imports this module and must not load gevent.
        from greenserve.worker import worker

        worker.run(spec)
    except BaseException:
        _report_crash()
        os._exit(EXIT_RUNTIME)


def _report_crash() -> None:
    """Anything escaping the worker is one JSON event with its traceback, not loose lines.

    Written with modules loaded at start only: the crash may be an import that failed (after
    dropping privileges, say), so the handler must not import anything new itself.
    """
    event = {
        "event": "worker_crashed",
        "level": "critical",
        "pid": os.getpid(),
        "exception": traceback.format_exc(),
    }
    try:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (PR_SET_PDEATHSIG), decided by the kernel.

    Used by the forkserver (parent: the master) and by each worker (parent: the forkserver), so
    a master's death kills the forkserver at once and with it every worker, even one whose event
    loop is blocked and could not notice anything itself. A parent that died before the prctl
    call has already handed this process to another reaper: exit now.
    """
    parent = os.getppid()
    libc_name = ctypes.util.find_library("c")
    if not libc_name:  # pragma: no cover - non-Linux
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(EXIT_RUNTIME)
