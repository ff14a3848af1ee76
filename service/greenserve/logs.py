"""structlog configuration, applied once per process (master and each worker).

Every line carries ``event``, ``level``, ``timestamp`` (UTC ISO 8601), ``pid`` and ``worker``
(slot index or ``"master"``). Exceptions become one field of the event, so a JSON log stays one
object per line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class LogFile:
    """An append-mode log file that can be reopened in place (USR1, after logrotate moved it).

    structlog's logger keeps this object's bound methods, so reopening swaps only the handle.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._handle = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - kept open: the log

    def write(self, text: str) -> int:
        return self._handle.write(text)

    def flush(self) -> None:
        self._handle.flush()

    def isatty(self) -> bool:
        return False

    def reopen(self) -> None:
        old, self._handle = self._handle, open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - kept open: the log
        old.close()

    def fileno(self) -> int:
        return self._handle.fileno()


_output: LogFile | None = None


def reopen() -> bool:
    """Reopen the log file, if logging goes to one; True when it did."""
    if _output is None:
        return False
    _output.reopen()
    return True


def configure(
    *,
    log_format: str | None,
    level: str,
    worker: int | str,
    stream: TextIO | None = None,
    log_file: str | None = None,
) -> None:
    """Configure structlog for this process; ``log_format=None`` picks console on a TTY."""
    global _output
    if log_file is not None:
        if _output is None or _output.path != log_file:
            _output = LogFile(log_file)
        out: Any = _output
    else:
        _output = None
        out = stream or sys.stdout
    if log_format is None:
        log_format = "console" if out.isatty() else "json"
    identity = {"pid": os.getpid(), "worker": worker}

    def add_identity(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in identity.items():
            event.setdefault(key, value)
        return event

    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_identity,
    ]
    if log_format == "json":
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get(name: str = "greenserve") -> Any:
    """A bound logger; configuration may change later (reopen), so it is looked up lazily."""
    return structlog.get_logger(name)
