"""Settings: one frozen dataclass built once from defaults < TOML file < environment < CLI.

Every option is declared once in ``OPTIONS``; the CLI flags, the ``GREENSERVE_*`` environment
variables and the config-file keys are all derived from that table so they can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

ENV_PREFIX = "GREENSERVE_"
PROTOCOLS = ("tcp", "http")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A setting that cannot be used; the message is the one line shown to the user."""


@dataclass(frozen=True)
class Address:
    """A TCP address to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``host:port`` or ``[v6]:port``; the port may be 0 (the kernel picks one)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8001")
    return Address(host, int(port))


def _optional_address(text: str) -> Address | None:
    return None if text.strip().lower() in ("off", "none", "") else parse_address(text)


def usable_cpus() -> int:
    """CPUs this process may run on (honours taskset and cgroup cpusets, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return usable_cpus()
    try:
        return _positive_int(text)
    except ValueError:
        raise ValueError("expected a positive integer or auto") from None


def _positive_int(text: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError("expected a positive integer") from None
    if value < 1:
        raise ValueError("expected a positive integer")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a number of seconds >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise ValueError("expected a number of seconds > 0")
    return value


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return parse


def _size(text: str) -> int:
    """Bytes, with an optional k/m/g suffix (powers of 1024), like nginx's sizes."""
    value = str(text).strip().lower()
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(value[-1:], 1)
    digits = value[:-1] if scale > 1 else value
    if not digits.isdigit():
        raise ValueError("expected a size in bytes, e.g. 1048576, 512k or 10m")
    return int(digits) * scale


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _non_negative_int(text: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError("expected a whole number >= 0") from None
    if value < 0:
        raise ValueError("expected a whole number >= 0")
    return value


def _optional_path(text: str) -> str | None:
    value = str(text).strip()
    return value or None


def _user(text: str) -> int | None:
    """A user name or uid; empty = do not change user."""
    import pwd  # only when the setting is used

    value = str(text).strip()
    if not value:
        return None
    try:
        return int(value) if value.isdigit() else pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ValueError("no such user") from None


def _group(text: str) -> int | None:
    """A group name or gid; empty = the user's primary group (or unchanged)."""
    import grp  # only when the setting is used

    value = str(text).strip()
    if not value:
        return None
    try:
        return int(value) if value.isdigit() else grp.getgrnam(value).gr_gid
    except KeyError:
        raise ValueError("no such group") from None


def _auto_log_format(text: str) -> str | None:
    return None if str(text).strip().lower() == "auto" else _choice(LOG_FORMATS)(text)


def _app(text: str) -> str:
    module, sep, attr = str(text).partition(":")
    if not sep or not module or not attr:
        raise ValueError("expected MODULE:CALLABLE, e.g. myapp:handle")
    return str(text)


@dataclass(frozen=True)
class Option:
    """One setting: its name (file key and field), parser, default and help text."""

    name: str
    parse: Callable[[str], Any]
    default: str
    help: str
    metavar: str = "VALUE"
    switch: bool = False  # a boolean: ``--flag`` alone means true

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("bind", parse_address, "127.0.0.1:8001", "address to serve on", "HOST:PORT"),
    Option("workers", _workers, "auto", "worker processes; auto = usable CPUs", "N|auto"),
    Option(
        "protocol",
        _choice(PROTOCOLS),
        "tcp",
        "tcp: handle(sock, address) per connection; http: HTTP/1.1 to a WSGI app",
        "|".join(PROTOCOLS),
    ),
    Option(
        "metrics_bind",
        _optional_address,
        "127.0.0.1:9191",
        "address of the master's /metrics and /healthz endpoint; off disables it",
        "HOST:PORT|off",
    ),
    Option("stats_interval", _positive_float, "1", "seconds between worker stats flushes", "S"),
    Option(
        "timeout",
        _non_negative_float,
        "30",
        "seconds without a heartbeat before a worker is killed and replaced; 0 disables",
        "S",
    ),
    Option(
        "graceful_timeout",
        _non_negative_float,
        "30",
        "seconds in-flight connections get to finish on stop before they are killed",
        "S",
    ),
    Option("max_connections", _positive_int, "1000", "concurrent connections per worker", "N"),
    Option(
        "idle_timeout",
        _non_negative_float,
        "300",
        "close a connection that sends nothing for this long; 0 = never",
        "S",
    ),
    Option(
        "reuse_port",
        _bool,
        "false",
        "one SO_REUSEPORT socket per worker slot (kernel balancing) instead of one shared socket",
        "BOOL",
        switch=True,
    ),
    Option(
        "max_body",
        _size,
        "10m",
        "largest HTTP request body accepted (413 above it); k/m/g suffixes",
        "BYTES",
    ),
    Option(
        "header_timeout",
        _non_negative_float,
        "10",
        "seconds a client gets to send a request's headers once it starts, and to send each "
        "next part of a request body; 0 = no limit",
        "S",
    ),
    Option(
        "keepalive_timeout",
        _non_negative_float,
        "5",
        "seconds an HTTP connection may wait idle for its next request; 0 = idle-timeout only",
        "S",
    ),
    Option(
        "access_log",
        _bool,
        "false",
        "log one event per HTTP request (method, path, status, bytes, duration_ms, peer)",
        "BOOL",
        switch=True,
    ),
    Option(
        "request_timeout",
        _non_negative_float,
        "0",
        "seconds from a request's headers to its response's end before the app is stopped "
        "(504, or a closed connection once the response started); 0 = no limit",
        "S",
    ),
    Option(
        "capture_output",
        _bool,
        "true",
        "log what the app writes to stdout and stderr as app_output events",
        "BOOL",
        switch=True,
    ),
    Option(
        "max_requests",
        _non_negative_int,
        "0",
        "recycle a worker after this many connections (tcp) or requests (http); 0 = never",
        "N",
    ),
    Option(
        "max_requests_jitter",
        _non_negative_int,
        "0",
        "add random(0..J) to max_requests per worker, so workers do not recycle together",
        "J",
    ),
    Option(
        "block_warn",
        _non_negative_float,
        "0.5",
        "warn (with the stack) when a worker's event loop is blocked this long; 0 disables",
        "S",
    ),
    Option(
        "pid_file",
        _optional_path,
        "",
        "write the master's pid here (atomically), removed on exit",
        "FILE",
    ),
    Option(
        "user",
        _user,
        "",
        "workers switch to this user (name or uid) before loading the app",
        "USER",
    ),
    Option(
        "group", _group, "", "workers switch to this group (default: the user's group)", "GROUP"
    ),
    Option(
        "log_file",
        _optional_path,
        "",
        "append logs to this file (reopened on USR1, for logrotate); empty = stdout",
        "FILE",
    ),
    Option(
        "log_format",
        _auto_log_format,
        "auto",
        "json or console; auto = console on a terminal, else json",
        "json|console|auto",
    ),
    Option("log_level", _choice(LOG_LEVELS), "info", "lowest level logged", "|".join(LOG_LEVELS)),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """Everything a master and its workers need to know, resolved and validated."""

    app: str | None
    bind: Address
    workers: int
    protocol: str
    metrics_bind: Address | None
    stats_interval: float
    timeout: float
    graceful_timeout: float
    max_connections: int
    idle_timeout: float
    reuse_port: bool
    max_body: int
    header_timeout: float
    keepalive_timeout: float
    access_log: bool
    request_timeout: float
    capture_output: bool
    max_requests: int
    max_requests_jitter: int
    block_warn: float
    pid_file: str | None
    user: int | None
    group: int | None
    log_file: str | None
    log_format: str | None
    log_level: str
    config: str | None = None

    def with_changes(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="greenserve",
        description="Pre-fork gevent server for TCP handlers, with Prometheus metrics.",
        epilog=(
            "Every option can also be set in the TOML file given with --config (key = option name "
            "with underscores) or in the environment as GREENSERVE_<OPTION>. Precedence: "
            "defaults < file < environment < command line. Tools for a running server: "
            "greenserve status|top|client --help."
        ),
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "app",
        nargs="?",
        metavar="APP",
        help="MODULE:CALLABLE, a handler(sock, address); default: the built-in echo service",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings")
    for option in OPTIONS:
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if option.switch else {}
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar=option.metavar,
            help=f"{option.help} (default: {option.default}; env {option.env})",
            **extra,
        )
    return parser


def _parse(option: Option, raw: Any, source: str) -> Any:
    if isinstance(raw, bool) and option.switch:
        raw = str(raw).lower()
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ConfigError(f"invalid value for {option.name} from {source}: {raw!r}")
    try:
        return option.parse(str(raw))
    except ValueError as exc:
        raise ConfigError(
            f"invalid value for {option.name} from {source}: {raw!r} ({exc})"
        ) from None


def read_file(path: str) -> dict[str, Any]:
    """The settings table of a TOML file; unknown keys are errors."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("greenserve", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [greenserve] must be a table")
    for key in table:
        if key not in OPTIONS_BY_NAME and key != "app":
            raise ConfigError(f"unknown setting {key!r} in config file {path}")
    return dict(table)


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Resolve settings; raise ConfigError (one line) for anything unknown or invalid."""
    cli = vars(build_parser().parse_args(list(argv)))
    for key in environ:
        name = key[len(ENV_PREFIX) :].lower()
        if (
            key.startswith(ENV_PREFIX)
            and name not in OPTIONS_BY_NAME
            and name
            not in (
                "config",
                "app",
            )
        ):
            raise ConfigError(f"unknown environment setting {key}")

    config_path = cli.get("config") or environ.get(ENV_PREFIX + "CONFIG") or None
    file_values = read_file(config_path) if config_path else {}

    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.name in cli:
            values[option.name] = _parse(option, cli[option.name], option.flag)
        elif option.env in environ:
            values[option.name] = _parse(option, environ[option.env], option.env)
        elif option.name in file_values:
            values[option.name] = _parse(option, file_values[option.name], config_path or "")
        else:
            values[option.name] = option.parse(option.default)

    app = cli.get("app") or environ.get(ENV_PREFIX + "APP") or file_values.get("app")
    if app is not None:
        try:
            app = _app(app)
        except ValueError as exc:
            raise ConfigError(f"invalid value for APP: {app!r} ({exc})") from None
    return Settings(app=app, config=config_path, **values)
