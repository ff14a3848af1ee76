"""The master's signals: which it acts on, which it ignores, and how they reach its loop.

A handler only queues the signal number; ``signal.set_wakeup_fd`` makes the loop's wait return
at once, so no work ever runs inside a handler. (Workers set theirs in boot.py and worker.py;
the forkserver in preload.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections import deque
from typing import Any

from greenserve import logs

HANDLED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
# Signals an operator may send by habit (gunicorn's WINCH) or by accident, whose default action
# would end the master: each is logged and otherwise ignored.
IGNORED = (
    signal.SIGWINCH,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGPWR,
)
HINTS = {
    "SIGWINCH": "gunicorn's WINCH (stop all workers) has no meaning here; use TTOU",
}


class SignalQueue:
    """Signals received, in order, with a socket that wakes the loop when one arrives."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.wake, self._wake_w = socket.socketpair()
        self.wake.setblocking(False)
        self._wake_w.setblocking(False)

    def install(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED + IGNORED:
            signal.signal(signum, self._queue)

    def _queue(self, signum: int, _frame: Any) -> None:
        self.pending.append(signum)

    def take(self) -> list[int]:
        """The signals received since the last call; empties the wake-up socket."""
        try:
            while self.wake.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        taken = []
        while self.pending:  # popleft: a signal queued meanwhile stays for the next call
            taken.append(self.pending.popleft())
        return taken

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.wake.close()
        self._wake_w.close()


def dispatch(master: Any, signum: int) -> None:
    """Act on one queued signal: ``master.handle_<name>()``, or a warning for an ignored one."""
    name = signal.Signals(signum).name
    if signum in IGNORED:
        master.log.warning("signal_ignored", signal=name, hint=HINTS.get(name, ""))
        return
    master.log.info("signal", signal=name, stopping=master.stop is not None)
    getattr(master, "handle_" + name.lower())()


def reopen_logs(settings: Any, workers: Any, log: Any) -> None:
    """USR1: reopen log files here and in every worker (logrotate's postrotate)."""
    if settings.log_file and settings.user is not None:
        with contextlib.suppress(OSError):  # let unprivileged workers reopen it too
            os.chown(settings.log_file, settings.user, settings.group or -1)
    reopened = logs.reopen()
    workers.signal_all(signal.SIGUSR1)
    log.info("logs_reopened", file=settings.log_file if reopened else "stdout")
