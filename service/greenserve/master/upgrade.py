"""USR2: start a new master (the installed greenserve, same command line) on the same sockets.

The old master passes every listening socket by file descriptor, named in
``GREENSERVE_INHERIT`` (``bind=fd;...``), its metrics socket in ``GREENSERVE_INHERIT_METRICS``
and its pid in ``GREENSERVE_UPGRADE_FROM``. The new master serves exactly those binds (a change
of binds is a HUP's job) and, once every one of its workers accepts, starts answering on the
metrics socket and sends TERM to the old master, which stops answering there at once and drains
like any graceful stop. Binding the metrics address anew could not work: the old master holds it
until it has drained (the default 127.0.0.1:9191 made every default upgrade fail).

The app's own counters (appmerge.py) go on across the upgrade: the old master writes its totals
to a file named in ``GREENSERVE_INHERIT_TOTALS`` when it is told to drain, again as its workers
finish, and a last time as it exits; the new master adds the latest ones to its own, and starts
answering on the metrics socket only once the drain's first totals are in, so no scrape sees a
counter go down. A file, not a pipe: a master must never block on a reader. A new master
that exits, or is not ready within ``deadline`` seconds, is stopped and the old one goes on.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from greenserve.config import Bind, parse_bind

INHERIT_ENV = "GREENSERVE_INHERIT"
METRICS_ENV = "GREENSERVE_INHERIT_METRICS"
TOTALS_ENV = "GREENSERVE_INHERIT_TOTALS"
SHARE_EVERY = 0.5  # seconds between the old master's totals while it drains
WAIT_FOR_TOTALS = 5.0  # a new master answers metrics after this even without the old's totals
FROM_ENV = "GREENSERVE_UPGRADE_FROM"


class Upgrade:
    """A new master starting; the old one watches it until it takes over or fails."""

    def __init__(
        self,
        argv: list[str],
        sockets: Mapping[str, int],
        cwd: str,
        deadline: float,
        extra_env: Mapping[str, str],
        metrics: Any = None,
    ) -> None:
        """``metrics``: the master's metrics server (its socket is handed over too), or None."""
        metrics_fd = None if metrics is None else metrics.fileno()
        fds = [*sockets.values(), *([] if metrics_fd is None else [metrics_fd])]
        for fd in fds:
            os.set_inheritable(fd, True)
        env = {**os.environ, **extra_env}
        env[INHERIT_ENV] = ";".join(f"{bind}={fd}" for bind, fd in sockets.items())
        if metrics_fd is not None:
            env[METRICS_ENV] = str(metrics_fd)
        env[FROM_ENV] = str(os.getpid())
        self.totals_path = os.path.join(tempfile.mkdtemp(prefix="greenserve-upgrade-"), "totals")
        env[TOTALS_ENV] = self.totals_path
        self.shared_at = -SHARE_EVERY
        self.started = time.monotonic()
        self.deadline = deadline
        # The installed greenserve, as the command line named it: a new version, same settings.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "greenserve", *argv],
            pass_fds=fds,
            env=env,
            cwd=cwd,
        )
        for fd in fds:
            os.set_inheritable(fd, False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def failure(self) -> str | None:
        """Why the upgrade failed, or None while it may still succeed."""
        code = self.process.poll()
        if code is not None:
            return f"the new master exited with code {code} before it was ready"
        if time.monotonic() - self.started > self.deadline:
            return f"the new master was not ready within {self.deadline:g} s"
        return None

    def share(self, totals: Callable[[], dict[str, Any]], *, last: bool = False) -> None:
        """Write this (old) master's totals for the new one: once it drains, every
        SHARE_EVERY seconds, and ``last`` at its exit."""
        now = time.monotonic()
        if not last and now - self.shared_at < SHARE_EVERY:
            return
        self.shared_at = now
        partial = self.totals_path + ".new"
        with contextlib.suppress(OSError), open(partial, "wb") as handle:
            pickle.dump({"totals": totals()}, handle)
        with contextlib.suppress(OSError):
            os.replace(partial, self.totals_path)  # the reader sees a whole file or the old one

    def abandon(self) -> None:
        """Stop a new master that will not take over (it drains its own workers)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def inherited(
    environ: MutableMapping[str, str],
) -> tuple[dict[Bind, int], int | None, int | None]:
    """What a USR2 upgrade handed to this (new) master: the sockets by bind, the old master's
    pid and the metrics socket's descriptor."""
    text = environ.pop(INHERIT_ENV, "")
    old = environ.pop(FROM_ENV, "")
    metrics = environ.pop(METRICS_ENV, "")
    sockets: dict[Bind, int] = {}
    for item in filter(None, text.split(";")):
        bind, _, fd = item.rpartition("=")
        if fd.isdigit():
            sockets[parse_bind(bind)] = int(fd)
    return (
        sockets,
        int(old) if old.isdigit() else None,
        int(metrics) if metrics.isdigit() else None,
    )


class Predecessor:
    """The new master's side of the totals (see the module's docstring)."""

    def __init__(self, path: str, old_pid: int) -> None:
        self.path = path
        self.old_pid = old_pid
        self.seen: int | None = None  # the file's mtime when last read: None, no totals yet
        self.told_at: float | None = None  # when this master sent TERM to the old one
        self.done = not path  # an older greenserve before us shares no totals

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str], old_pid: int | None) -> Predecessor | None:
        path = environ.pop(TOTALS_ENV, "")
        return cls(path, old_pid) if old_pid is not None else None

    def poll(self, inherit: Callable[[dict[str, Any]], None]) -> None:
        """Take the old master's latest totals; clean up once it is gone."""
        if self.done:
            return
        gone = not _alive(self.old_pid)
        with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError):
            mtime = os.stat(self.path).st_mtime_ns
            if mtime != self.seen:
                with open(self.path, "rb") as handle:
                    state = pickle.load(handle)
                inherit(state["totals"])
                self.seen = mtime
        if gone:
            self.done = True
            with contextlib.suppress(OSError):
                os.remove(self.path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.path))

    def ready(self) -> bool:
        """Whether this master may answer on the metrics socket: the drain's totals are in."""
        if self.told_at is None:
            return False
        waited = time.monotonic() - self.told_at > WAIT_FOR_TOTALS
        return self.done or waited or self.seen is not None


def _alive(pid: int) -> bool:
    """A running process: not gone, and not a zombie its parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
