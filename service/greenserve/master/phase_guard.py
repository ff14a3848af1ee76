"""The master's loop survives a phase that raises: logged as one event, then the next phase.

A master that dies on an unexpected exception takes its workers with it (they watch it), so a
bug in one phase (a metrics publish, an upgrade check) would turn into an outage; a loose
traceback on stderr would not be JSON either. Each failure is one ``master_phase_failed`` event
with the traceback as a field, at most once per phase every REPEAT_EVERY seconds (a phase that
fails on every 50 ms turn would flood the log), with the count of the failures in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

REPEAT_EVERY = 10.0


class PhaseGuard:
    def __init__(self, log: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self.failures: dict[str, int] = {}  # per phase, since its last event
        self.logged_at: dict[str, float] = {}

    def run(self, name: str, phase: Callable[..., Any], *args: Any) -> None:
        try:
            phase(*args)
        except Exception:
            count = self.failures[name] = self.failures.get(name, 0) + 1
            now = self.clock()
            if now - self.logged_at.get(name, -REPEAT_EVERY) >= REPEAT_EVERY:
                self.logged_at[name] = now
                self.failures[name] = 0
                self.log.error("master_phase_failed", phase=name, failures=count, exc_info=True)
