"""USR2: start a new master (the installed greenserve, same command line) on the same sockets.

The old master passes every listening socket by file descriptor, named in
``GREENSERVE_INHERIT`` (``bind=fd;...``), its metrics socket in ``GREENSERVE_INHERIT_METRICS``
and its pid in ``GREENSERVE_UPGRADE_FROM``. The new master serves exactly those binds (a change
of binds is a HUP's job) and, once every one of its workers accepts, starts answering on the
metrics socket and sends TERM to the old master, which stops answering there at once and drains
like any graceful stop. Binding the metrics address anew could not work: the old master holds it
until it has drained (the default 127.0.0.1:9191 made every default upgrade fail). A new master
that exits, or is not ready within ``deadline`` seconds, is stopped and the old one goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from greenserve.config import Bind, parse_bind

INHERIT_ENV = "GREENSERVE_INHERIT"
METRICS_ENV = "GREENSERVE_INHERIT_METRICS"
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
