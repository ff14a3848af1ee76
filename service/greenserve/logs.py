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


def configure(
    *, log_format: str | None, level: str, worker: int | str, stream: TextIO | None = None
) -> None:
    """Configure structlog for this process; ``log_format=None`` picks console on a TTY."""
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
