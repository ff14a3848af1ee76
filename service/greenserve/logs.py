"""structlog configuration, applied once per process (master and each worker).

Every line carries ``event``, ``level``, ``timestamp`` (UTC ISO 8601), ``pid`` and ``worker``
(slot index or ``"master"``). Exceptions become one field of the event, so a JSON log stays one
object per line.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import os
import sys
from typing import Any, TextIO, cast

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


class SafeOutput:
    """Where log lines go. A write error never reaches the code that logged.

    A closed stdout (``greenserve | head -1``, a dead log shipper) raises EPIPE on every write;
    before, that ended the master with a traceback. On the first failure stdout is pointed at
    /dev/null (so no later write or interpreter-exit flush fails again) and lines go to stderr
    instead; if that fails too they are dropped. Every lost line is counted in ``dropped``
    (``greenserve_log_lines_dropped_total``).
    """

    def __init__(self, primary: Any) -> None:
        self.primary = primary
        self.dropped = 0

    def write(self, text: str) -> int:
        try:
            return self.primary.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed under us
            return self._fail_over(text)

    def _fail_over(self, text: str) -> int:
        self.dropped += 1
        failed, fallback = self.primary, sys.__stderr__
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, failed.fileno())
            os.close(devnull)
        if fallback is None or failed is fallback:
            self.primary = _Discard()
        else:
            self.primary = fallback
            with contextlib.suppress(OSError, ValueError):
                if text:
                    fallback.write(text)
                    fallback.flush()
                    self.dropped -= 1  # delivered after all, to the fallback
        return len(text)

    def flush(self) -> None:
        try:
            self.primary.flush()
        except (OSError, ValueError):  # a buffered stream reports EPIPE here
            self._fail_over("")

    def isatty(self) -> bool:
        try:
            return bool(self.primary.isatty())
        except (OSError, ValueError):
            return False


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class RequestIdCell:
    """The id of the HTTP request a greenlet is serving now (None between requests).

    An HTTP/1.1 connection puts one cell in its greenlet's context (each connection starts in an
    empty one) and rewrites it per request: a ContextVar set and reset per request cost 2,500 of
    the HTTP layer's 60,000 instructions per request (valgrind, 2026-12-07), a new context
    mapping and a Token each time. structlog's bind_contextvars had cost 16% of hello's CPU.
    A context copied during a request (``contextvars.copy_context()``) shares the cell: it sees
    the connection's current request, not the one it was copied in."""

    __slots__ = ("id",)

    def __init__(self, request_id: str | None = None) -> None:
        self.id = request_id


REQUEST_ID: contextvars.ContextVar[RequestIdCell | None] = contextvars.ContextVar(
    "request_id", default=None
)


def add_request_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    cell = REQUEST_ID.get()
    if cell is not None and cell.id is not None:
        event.setdefault("request_id", cell.id)
    return event


_output: LogFile | None = None
_sink: SafeOutput | None = None


def dropped() -> int:
    """Log lines this process could not write anywhere."""
    return _sink.dropped if _sink is not None else 0


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
    access_format: str = "",
) -> None:
    """Configure structlog and the stdlib root logger for this process.

    ``log_format=None`` picks console on a TTY. The app's stdlib ``logging`` (Flask's
    ``ERROR in app``, Django's ``Forbidden (CSRF cookie not set.)``) goes through the same
    processors, so a JSON log stays one object per line with ``logger`` naming the source.
    """
    global _output, _sink
    if log_file is not None:
        if _output is None or _output.path != log_file:
            _output = LogFile(log_file)
        target: Any = _output
    else:
        _output = None
        target = stream or sys.stdout
    if _sink is None or _sink.primary is not target:
        previous = _sink.dropped if _sink is not None else 0
        _sink = SafeOutput(target)
        _sink.dropped = previous
    out = _sink
    if log_format is None:
        log_format = "console" if out.isatty() else "json"
    identity = {"pid": os.getpid(), "worker": worker}

    def add_identity(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in identity.items():
            event.setdefault(key, value)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_identity,
    ]
    if log_format == "json":
        renderer: list[Any] = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        # Tracebacks without each frame's locals: rich's default printed a screen of them (the
        # whole Settings) for a --reload syntax error, and locals may hold an app's secrets.
        colors = out.isatty()
        formatter = structlog.dev.RichTracebackFormatter(
            show_locals=False, color_system="truecolor" if colors else None
        )
        renderer = [structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=formatter)]
        if access_format:
            renderer.insert(0, _access_line(access_format))
    structlog.configure(
        processors=shared + renderer,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, out)),  # write and flush
        cache_logger_on_first_use=False,
    )
    _route_stdlib(out, shared, renderer, LEVELS[level])


def _access_line(template: str) -> Any:
    """Console form of the access log: the event becomes the operator's own one-line format."""

    def render(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("event") != "request":
            return event
        fields = {key: "-" if value is None else value for key, value in event.items()}
        line = template.format_map(collections.defaultdict(lambda: "-", fields))
        return {"timestamp": event.get("timestamp"), "level": event.get("level"), "event": line}

    return render


def _route_stdlib(out: Any, shared: list[Any], renderer: list[Any], level: int) -> None:
    """The root logger's only handler renders through structlog's processors into ``out``."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    # A handler that fails must not print "--- Logging error ---" tracebacks: SafeOutput counts.
    handler.handleError = lambda record: None  # type: ignore[method-assign]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


class StreamToLog:
    """``sys.stdout``/``sys.stderr`` of a worker: what an app prints becomes log events.

    gunicorn's ``--capture-output``: stray ``print()`` calls and tracebacks written straight to
    stderr would otherwise break a JSON log into loose lines. Whole lines are logged as events
    ``app_output`` with ``stream``; a partial line waits for its newline (or a flush).
    """

    def __init__(self, name: str, level: str) -> None:
        self.name = name
        self.level = level
        self.pending = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.pending += text
        if "\n" in self.pending:
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                if line:
                    self._emit(line)
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.pending:
            line, self.pending = self.pending, ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        getattr(get("app"), self.level)("app_output", stream=self.name, line=line)

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return "utf-8"


def capture_output() -> None:
    """Route this process's ``sys.stdout`` and ``sys.stderr`` writes into the log."""
    sys.stdout = StreamToLog("stdout", "info")
    sys.stderr = StreamToLog("stderr", "warning")


def drop_echoing_handlers() -> int:
    """Remove the handlers an app added that print to the captured stdout or stderr on loggers
    whose records reach the root logger (greenserve's handler) anyway: each would log every
    record twice, once as itself and once as ``app_output`` (Django's DEFAULT_LOGGING "console"
    handler does this with DEBUG = True). Returns how many were removed."""
    removed = 0
    for name in list(logging.Logger.manager.loggerDict):
        logger = logging.getLogger(name)
        if not _reaches_root(logger):
            continue  # its own handlers are the only way out: keep them
        for handler in list(logger.handlers):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and isinstance(stream, StreamToLog):
                logger.removeHandler(handler)
                removed += 1
    return removed


def _reaches_root(logger: logging.Logger) -> bool:
    current: logging.Logger | None = logger
    while current is not None and current.parent is not None:
        if not current.propagate:
            return False
        current = current.parent
    return True


def get(name: str = "greenserve") -> Any:
    """A bound logger; configuration may change later (reopen), so it is looked up lazily."""
    return structlog.get_logger(name)
