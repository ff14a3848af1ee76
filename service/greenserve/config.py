"""Settings: one frozen dataclass built once from defaults < TOML file < environment < CLI.

Every option is declared once in ``OPTIONS``; the CLI flags, the ``GREENSERVE_*`` environment
variables and the config-file keys are all derived from that table so they can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenserve import __version__
from greenserve.hooks import parse_sources as parse_hook_sources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

ENV_PREFIX = "GREENSERVE_"
PROTOCOLS = ("auto", "tcp", "http")
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


@dataclass(frozen=True)
class UnixAddress:
    """A Unix domain socket path to bind (``unix:/run/app.sock``)."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class FdAddress:
    """A listening socket inherited as a file descriptor (``fd://3``, systemd, a parent)."""

    fd: int

    def __str__(self) -> str:
        return f"fd://{self.fd}"


Bind = Address | UnixAddress | FdAddress


def parse_bind(text: str) -> Bind:
    """``HOST:PORT``, ``[v6]:PORT``, ``unix:/path`` or ``fd://N``."""
    text = str(text).strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/") and not path.startswith("."):
            raise ValueError("expected unix:/absolute/path")
        return UnixAddress(path)
    if text.startswith("fd://"):
        number = text[len("fd://") :]
        if not number.isdigit():
            raise ValueError("expected fd://N, N a file descriptor number")
        return FdAddress(int(number))
    return parse_address(text)


def _binds(text: str) -> tuple[Bind, ...]:
    """One or more binds; several are separated by commas (environment and files)."""
    parts = [part for part in str(text).split(",") if part.strip()]
    if not parts:
        raise ValueError("expected at least one address")
    binds = tuple(parse_bind(part) for part in parts)
    if len(set(binds)) != len(binds):
        raise ValueError("the same address twice")
    return binds


def _mode(text: str) -> int:
    value = str(text).strip()
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError("expected an octal mode, e.g. 660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError("expected an octal mode between 000 and 777")
    return mode


def _directory(text: str) -> str | None:
    value = str(text).strip()
    if not value:
        return None
    if not os.path.isdir(value):
        raise ValueError("no such directory")
    return os.path.abspath(value)


@dataclass(frozen=True)
class StaticMount:
    """``--static PREFIX=DIRECTORY[;OPTION...]``: files under ``root`` served at ``prefix``."""

    prefix: str  # "/static", or "" for the whole site ("/")
    root: str  # absolute, symlinks resolved
    max_age: int = 3600  # Cache-Control max-age; hashed names get a year and immutable
    index: str = ""  # served for a directory's URL ending in "/" (none: 404)
    fallthrough: bool = False  # a file not found goes to the app instead of a 404
    symlinks: bool = False  # follow symlinks that leave the directory
    dotfiles: bool = False  # serve names starting with "."

    def __str__(self) -> str:
        """The mount as --static spells it (--print-config, logs)."""
        options = [f"max-age={self.max_age}"] + ([f"index={self.index}"] if self.index else [])
        options += [name for name in ("fallthrough", "symlinks", "dotfiles") if getattr(self, name)]
        return f"{self.prefix or '/'}={self.root};" + ";".join(options)


def _static_mounts(text: str) -> tuple[StaticMount, ...]:
    mounts = []
    for item in (part.strip() for part in str(text).split(",") if part.strip()):
        spec, *options = item.split(";")
        prefix, sep, directory = spec.partition("=")
        prefix, directory = prefix.strip(), directory.strip()
        if not sep or not prefix.startswith("/") or not directory:
            raise ValueError(f"{item!r}: expected URL_PREFIX=DIRECTORY, the prefix from /")
        if any(part in (".", "..") for part in prefix.split("/")) or "\\" in prefix:
            raise ValueError(f"{item!r}: the prefix has a . or .. segment or a backslash")
        if not os.path.isdir(directory):
            raise ValueError(f"{item!r}: no such directory {directory!r}")
        fields: dict[str, Any] = {}
        for option in (o.strip() for o in options if o.strip()):
            name, _, value = option.partition("=")
            if name == "max-age" and value.isdigit():
                fields["max_age"] = int(value)
            elif name == "index" and value and "/" not in value:
                fields["index"] = value
            elif name in ("fallthrough", "symlinks", "dotfiles") and not value:
                fields[name] = True
            else:
                raise ValueError(
                    f"{item!r}: unknown option {option!r} (max-age=S, index=FILE, "
                    "fallthrough, symlinks, dotfiles)"
                )
        mounts.append(StaticMount(prefix.rstrip("/"), os.path.realpath(directory), **fields))
    prefixes = [m.prefix for m in mounts]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError("a URL prefix is mounted twice")
    # longest prefix first: /static/img wins over /static for its own paths
    return tuple(sorted(mounts, key=lambda m: len(m.prefix), reverse=True))


def _trusted(text: str) -> Any:
    from greenserve.proxy import parse_trusted

    return parse_trusted(text)


def _root_path(text: str) -> str:
    value = str(text).strip().rstrip("/")
    if value and not value.startswith("/"):
        raise ValueError("expected a path starting with /, e.g. /api")
    return value


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


def _ratio(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError("expected a ratio from 0 to 1") from None
    if not 0 <= value <= 1:
        raise ValueError("expected a ratio from 0 to 1")
    return value


def _off_or_positive_int(text: str) -> int:
    """A limit that is off (0 inside) or a positive whole number; 0 itself is refused, as a
    limit of nothing would refuse every request."""
    value = str(text).strip().lower()
    if value in ("off", ""):
        return 0
    if not value.isdigit() or int(value) == 0:
        raise ValueError("expected a positive whole number, or off")
    return int(value)


def _off_or_positive_float(text: str) -> float:
    value = str(text).strip().lower()
    if value in ("off", ""):
        return 0.0
    try:
        number = float(value)
    except ValueError:
        raise ValueError("expected a positive number of seconds, or off") from None
    if not number > 0 or number == float("inf"):
        raise ValueError("expected a positive number of seconds, or off")
    return number


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


HTTP_PROTOCOLS = ("h1", "h2")
H2_CLEARTEXT = ("off", "prior-knowledge", "upgrade", "both")
H2_MAX_WINDOW = (1 << 31) - 1  # RFC 9113 6.9.1


def _http_protocols(text: str) -> tuple[str, ...]:
    """``h2,h1``: the HTTP versions offered, most preferred first (the ALPN order)."""
    values = tuple(part.strip().lower() for part in str(text).split(",") if part.strip())
    if not values or any(value not in HTTP_PROTOCOLS for value in values):
        raise ValueError("expected h1, h2 or both, comma-separated, e.g. h2,h1")
    if len(set(values)) != len(values):
        raise ValueError("the same protocol twice")
    return values


def _window(text: str) -> int:
    value = _size(text)
    if not 65535 <= value <= H2_MAX_WINDOW:
        raise ValueError("expected a size from 65535 (64k - 1) to 2147483647 bytes")
    return value


def _size(text: str) -> int:
    """Bytes, with an optional k/m/g suffix (powers of 1024), like nginx's sizes."""
    value = str(text).strip().lower()
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(value[-1:], 1)
    digits = value[:-1] if scale > 1 else value
    if not digits.isdigit():
        raise ValueError("expected a size in bytes, e.g. 1048576, 512k or 10m")
    return int(digits) * scale


def _positive_size(text: str) -> int:
    value = _size(text)
    if value == 0:
        raise ValueError("expected a size above 0 bytes, e.g. 1m or 256k")
    return value


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


ACCESS_FIELDS = (
    "method",
    "path",
    "query",
    "status",
    "bytes",
    "duration_ms",
    "peer",
    "user_agent",
    "referer",
    "request_id",
    "timestamp",
    "worker",
)


def _access_format(text: str) -> str:
    """A str.format template over the access event's fields, checked now rather than per line."""
    import string

    value = str(text)
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"not a format template: {exc}") from None
    unknown = sorted(name for name in names if name not in ACCESS_FIELDS)
    if unknown or "" in names:
        raise ValueError(
            f"unknown field {unknown[0] if unknown else '{}'}; use " + ", ".join(ACCESS_FIELDS)
        )
    return value


@dataclass(frozen=True)
class AppRef:
    """``module:attr.path``, optionally a factory call with literal arguments (gunicorn's form)."""

    module: str
    attr: str
    args: tuple[Any, ...] | None = None  # None: not a call
    kwargs: tuple[tuple[str, Any], ...] = ()


def parse_app(text: str) -> AppRef:
    """``myapp:app``, ``myapp:create_app()`` or ``myapp:create_app("prod", debug=False)``."""
    import ast

    module, sep, attr = str(text).strip().partition(":")
    if not sep or not module or not attr:
        raise ValueError("expected MODULE:CALLABLE, e.g. myapp:handle or myapp:create_app()")
    if "(" not in attr:
        if not all(part.isidentifier() for part in attr.split(".")):
            raise ValueError("expected MODULE:CALLABLE, e.g. myapp:handle")
        return AppRef(module, attr)
    try:
        call = ast.parse(attr, mode="eval").body
        if not isinstance(call, ast.Call):
            raise ValueError
        name = ast.unparse(call.func)
        args = tuple(ast.literal_eval(arg) for arg in call.args)
        kwargs = tuple((k.arg, ast.literal_eval(k.value)) for k in call.keywords if k.arg)
        if len(kwargs) != len(call.keywords):
            raise ValueError
    except (SyntaxError, ValueError):
        raise ValueError("a factory takes literal arguments, e.g. create_app('prod')") from None
    if not all(part.isidentifier() for part in name.split(".")):
        raise ValueError("expected MODULE:FACTORY(...)")
    return AppRef(module, name, args, kwargs)


def _app(text: str) -> str:
    parse_app(text)
    return str(text).strip()


@dataclass(frozen=True)
class Option:
    """One setting: its parser, default and help text; ``name`` is its Settings field's."""

    parse: Callable[[str], Any]
    default: str
    help: str
    metavar: str = "VALUE"
    switch: bool = False  # a boolean: ``--flag`` alone means true
    group: str = "serving"  # the --help section
    short: str = ""  # a one-letter flag, as gunicorn has (-w, -b, -t)
    repeat: bool = False  # the flag may be given several times (a list in files)
    name: str = ""  # the file key; filled in from the field (OPTIONS)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def setting(
    parse: Callable[[str], Any],
    default: str,
    help: str,
    metavar: str = "VALUE",
    **how: Any,
) -> Any:
    """A Settings field that is an option (``how``: switch, group, short, repeat)."""
    return dataclasses.field(metadata={"option": Option(parse, default, help, metavar, **how)})


GROUPS = {
    "serving": "Serving",
    "proxy": "Behind proxies and load balancers",
    "tls": "TLS (HTTPS, or TLS-wrapped TCP)",
    "http": "HTTP (--protocol http)",
    "http2": "HTTP/2 (pip install 'greenserve[http2]')",
    "workers": "Workers and their lifecycle",
    "hooks": "Server hooks",
    "logging": "Logging",
    "metrics": "Metrics",
    "tracing": "Tracing (pip install 'greenserve[otel]')",
    "process": "Process and privileges",
}


@dataclass(frozen=True)
class Settings:
    """Everything a master and its workers need to know, resolved and validated.

    Each field is one option, declared once: its parser, default, help and flags are the field's
    ``setting(...)``, and the CLI flag, ``GREENSERVE_*`` variable and config-file key all derive
    from it (``OPTIONS``). Adding an option is one field here plus the code that reads it.
    """

    app: str | None
    bind: tuple[Bind, ...] = setting(
        _binds,
        "127.0.0.1:8001",
        "address to serve on, repeatable: HOST:PORT, [v6]:PORT, unix:/path or fd://N",
        "ADDRESS",
        short="-b",
        repeat=True,
    )
    protocol: str = setting(
        _choice(PROTOCOLS),
        "auto",
        "auto: what APP is (a WSGI app over HTTP/1.1, a handle(sock, address) over TCP; the "
        "built-in echo over TCP without APP); tcp: APP is a handler(sock, address) per "
        "connection; http: APP is a WSGI app (Flask, Django, ...) served over HTTP/1.1",
        "|".join(PROTOCOLS),
    )
    backlog: int = setting(
        _positive_int,
        "2048",
        "the listen queue of each bound socket",
        "N",
    )
    reuse_port: bool = setting(
        _bool,
        "false",
        "one SO_REUSEPORT socket per worker slot (kernel balancing) instead of one shared socket",
        "BOOL",
        switch=True,
    )
    unix_mode: int = setting(
        _mode,
        "660",
        "permissions of unix: sockets (octal); owner and group follow --user/--group",
        "MODE",
    )
    forwarded_allow_ips: Any = setting(
        _trusted,
        "127.0.0.1",
        "peers whose X-Forwarded-For/-Proto/-Host, Forwarded and X-Request-ID are trusted: "
        "addresses and CIDRs, comma-separated, or * (every peer)",
        "LIST",
        group="proxy",
    )
    root_path: str = setting(
        _root_path,
        "",
        "the path prefix the app is mounted under behind a proxy: SCRIPT_NAME (and taken off "
        "PATH_INFO when a request carries it)",
        "PATH",
        group="proxy",
    )
    proxy_protocol: bool = setting(
        _bool,
        "false",
        "expect HAProxy's PROXY protocol header (v1 or v2) first on every connection",
        "BOOL",
        switch=True,
        group="proxy",
    )
    proxy_allow_from: Any = setting(
        _trusted,
        "127.0.0.1",
        "peers allowed to send a PROXY header (others are closed): addresses, CIDRs or *",
        "LIST",
        group="proxy",
    )
    drain_delay: float = setting(
        _non_negative_float,
        "0",
        "on TERM, keep serving this long with /healthz at 503 (draining) so load balancers stop "
        "routing here, then stop gracefully",
        "S",
        group="proxy",
    )
    certfile: str | None = setting(
        _optional_path,
        "",
        "serve TLS with this PEM certificate (chain); empty = plaintext",
        "FILE",
        group="tls",
    )
    keyfile: str | None = setting(
        _optional_path,
        "",
        "the certificate's private key (PEM); its password only from GREENSERVE_KEYFILE_PASSWORD",
        "FILE",
        group="tls",
    )
    ca_certs: str | None = setting(
        _optional_path,
        "",
        "CAs (PEM) that sign client certificates, for --verify-client",
        "FILE",
        group="tls",
    )
    verify_client: str = setting(
        _choice(("none", "optional", "required")),
        "none",
        "mutual TLS: ask clients for a certificate signed by --ca-certs",
        "none|optional|required",
        group="tls",
    )
    tls_ciphers: str = setting(
        str,
        "",
        "OpenSSL cipher list (TLS 1.2); empty = Python's defaults",
        "LIST",
        group="tls",
    )
    tls_min_version: str = setting(
        _choice(("1.2", "1.3")),
        "1.2",
        "oldest TLS version accepted",
        "1.2|1.3",
        group="tls",
    )
    max_connections: int = setting(
        _positive_int,
        "1000",
        "concurrent connections per worker",
        "N",
    )
    idle_timeout: float = setting(
        _non_negative_float,
        "300",
        "close a connection that sends nothing for this long; 0 = never",
        "S",
    )
    max_body: int = setting(
        _size,
        "10m",
        "largest HTTP request body accepted (413 above it); k/m/g suffixes",
        "BYTES",
        group="http",
    )
    header_timeout: float = setting(
        _non_negative_float,
        "10",
        "seconds a client gets to send a request's headers once it starts, and to send each "
        "next part of a request body; 0 = no limit",
        "S",
        group="http",
    )
    keepalive_timeout: float = setting(
        _non_negative_float,
        "5",
        "seconds an HTTP connection may wait idle for its next request; 0 = idle-timeout only",
        "S",
        group="http",
    )
    request_timeout: float = setting(
        _non_negative_float,
        "0",
        "seconds from a request's headers to its response's end before the app is stopped "
        "(504, or a closed connection once the response started); 0 = no limit",
        "S",
        group="http",
    )
    access_log: bool = setting(
        _bool,
        "false",
        "log one event per HTTP request (method, path, query, status, bytes, duration_ms, peer, "
        "user_agent, referer, request_id)",
        "BOOL",
        switch=True,
        group="http",
    )
    access_log_format: str = setting(
        _access_format,
        "",
        "the console form of an access log line, with {fields} of the event, e.g. "
        "'{peer} \"{method} {path}\" {status} {bytes} {duration_ms}ms'; empty = key=value",
        "TEMPLATE",
        group="http",
    )
    ws_max_message: int = setting(
        _size,
        "16m",
        "largest WebSocket message wsgi.websocket accepts (closed with 1009 above it)",
        "BYTES",
        group="http",
    )
    ws_send_buffer: int = setting(
        _positive_size,
        "1m",
        "bytes a wsgi.websocket holds for a peer that reads slower than the app sends; a send "
        "past it waits up to --ws-send-timeout, then the WebSocket is closed with 1013",
        "BYTES",
        group="http",
    )
    ws_send_timeout: float = setting(
        _positive_float,
        "10",
        "how long a wsgi.websocket send waits for room in --ws-send-buffer, and a closing "
        "WebSocket for what it holds to go out",
        "S",
        group="http",
    )
    ws_ping_interval: float = setting(
        _non_negative_float,
        "0",
        "ping every wsgi.websocket this often; one that has not answered the previous ping is "
        "closed (1011); 0 = no pings",
        "S",
        group="http",
    )
    asyncio_threads: int = setting(
        _positive_int,
        "16",
        "real threads per worker on which asyncio.run and async_to_sync run their event loops "
        "(asyncio inside sync views); more waiting ones queue",
        "N",
        group="http",
    )
    reload: bool = setting(
        _bool,
        "false",
        "development: reload (as on HUP) when a watched file under the working directory changes",
        "BOOL",
        switch=True,
        group="workers",
    )
    reload_include: str = setting(
        str,
        "*.py",
        "with --reload, the files that count: globs, comma-separated (e.g. *.py,*.html)",
        "GLOBS",
        group="workers",
    )
    reload_exclude: str = setting(
        str,
        ".*,__pycache__,*.pyc,node_modules,venv",
        "with --reload, names of files or folders never watched: globs, comma-separated",
        "GLOBS",
        group="workers",
    )
    max_inflight: int = setting(
        _off_or_positive_int,
        "off",
        "requests a worker handles at once; past it a request gets 503 with Retry-After, before "
        "its body is read (off: no limit; WebSocket sessions do not count)",
        "N|off",
        group="http",
    )
    max_queue_time: float = setting(
        _off_or_positive_float,
        "off",
        "503 for a request that already waited longer than this before the app (from a trusted "
        "proxy's X-Request-Start, else from accept)",
        "S|off",
        group="http",
    )
    static: tuple[StaticMount, ...] = setting(
        _static_mounts,
        "",
        "serve the files of DIRECTORY at URL_PREFIX from the workers, before the app, "
        "repeatable; options after ';': max-age=S (Cache-Control, default 3600), index=FILE "
        "(for a URL ending in /), fallthrough (a missing file goes to the app, not 404), "
        "symlinks (follow links out of DIRECTORY), dotfiles (serve names starting with .)",
        "PREFIX=DIR[;OPTION]",
        group="http",
        repeat=True,
    )
    http_protocols: tuple[str, ...] = setting(
        _http_protocols,
        "h1",
        "HTTP versions served, preferred first: h1, or h2,h1 for HTTP/2 by ALPN over TLS "
        "(pip install 'greenserve[http2]'); cleartext HTTP/2 needs --http2-cleartext too",
        "h2,h1",
        group="http2",
    )
    http2_cleartext: str = setting(
        _choice(H2_CLEARTEXT),
        "off",
        "HTTP/2 without TLS (h2c), from --forwarded-allow-ips peers only (others get HTTP/1.1): "
        "prior-knowledge (the client starts in HTTP/2), upgrade (an HTTP/1.1 Upgrade: h2c), "
        "both, or off",
        "|".join(H2_CLEARTEXT),
        group="http2",
    )
    http2_max_concurrent_streams: int = setting(
        _positive_int,
        "100",
        "streams a client may have open on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_"
        "STREAMS); each runs the app in its own greenlet; more are refused (REFUSED_STREAM)",
        "N",
        group="http2",
    )
    http2_initial_window_size: int = setting(
        _window,
        "256k",
        "HTTP/2 flow-control window of each stream for a request body: what a client may send "
        "ahead of the app's reads (the connection's window is this times the stream limit)",
        "BYTES",
        group="http2",
    )
    http2_max_header_list_size: int = setting(
        _size,
        "64k",
        "largest decoded header block of an HTTP/2 request (SETTINGS_MAX_HEADER_LIST_SIZE); "
        "a larger one ends the connection (an HPACK bomb)",
        "BYTES",
        group="http2",
    )
    http2_send_timeout: float = setting(
        _non_negative_float,
        "30",
        "seconds a response may wait for a client to open its flow-control window before the "
        "stream is reset (a zero-window stall); 0 = no limit",
        "S",
        group="http2",
    )
    ws_close_timeout: float = setting(
        _non_negative_float,
        "3",
        "on stop and reload, how long a WebSocket the app owns (Flask-Sock, Socket.IO) gets to "
        "end after its read side is shut, before it is closed with 1001",
        "S",
        group="http",
    )
    workers: int = setting(
        _workers,
        "auto",
        "worker processes; auto = usable CPUs",
        "N|auto",
        group="workers",
        short="-w",
    )
    timeout: float = setting(
        _non_negative_float,
        "30",
        "seconds without a heartbeat before a worker is killed and replaced; 0 disables",
        "S",
        group="workers",
        short="-t",
    )
    graceful_timeout: float = setting(
        _non_negative_float,
        "30",
        "seconds in-flight connections get to finish on stop before they are killed",
        "S",
        group="workers",
    )
    max_requests: int = setting(
        _non_negative_int,
        "0",
        "recycle a worker after this many connections (tcp) or requests (http); 0 = never",
        "N",
        group="workers",
    )
    max_requests_jitter: int = setting(
        _non_negative_int,
        "0",
        "add random(0..J) to max_requests per worker, so workers do not recycle together",
        "J",
        group="workers",
    )
    max_worker_rss: int = setting(
        _non_negative_int,
        "0",
        "replace a worker whose resident memory stays above this many MiB (--rss-samples "
        "samples in a row, one per --stats-interval), through the hand-over; 0 = never",
        "MIB",
        group="workers",
    )
    rss_samples: int = setting(
        _positive_int,
        "3",
        "consecutive samples above --max-worker-rss before the worker is replaced",
        "N",
        group="workers",
    )
    max_worker_lifetime: float = setting(
        _non_negative_float,
        "0",
        "replace a worker after it has run this many seconds, through the hand-over; 0 = never",
        "S",
        group="workers",
    )
    max_worker_lifetime_jitter: float = setting(
        _non_negative_float,
        "0",
        "add random(0..J) seconds to max_worker_lifetime per worker, so they do not come due "
        "together",
        "J",
        group="workers",
    )
    hooks: tuple[str, ...] = setting(
        parse_hook_sources,
        "",
        "server hooks named as gunicorn names them (on_starting, post_fork, pre_request, ...), "
        "repeatable: a Python file or module whose functions are named after hooks (a "
        "gunicorn.conf.py works), or HOOK=MODULE:FUNCTION for one",
        "SOURCE",
        group="hooks",
        repeat=True,
    )
    block_warn: float = setting(
        _non_negative_float,
        "0.5",
        "warn (with the stack) when a worker's event loop is blocked this long; 0 disables",
        "S",
        group="workers",
    )
    log_file: str | None = setting(
        _optional_path,
        "",
        "append logs to this file (reopened on USR1, for logrotate); empty = stdout",
        "FILE",
        group="logging",
    )
    log_format: str | None = setting(
        _auto_log_format,
        "auto",
        "json or console; auto = console on a terminal, else json",
        "json|console|auto",
        group="logging",
    )
    log_level: str = setting(
        _choice(LOG_LEVELS),
        "info",
        "lowest level logged",
        "|".join(LOG_LEVELS),
        group="logging",
    )
    capture_output: bool = setting(
        _bool,
        "true",
        "log what the app writes to stdout and stderr as app_output events",
        "BOOL",
        switch=True,
        group="logging",
    )
    metrics_bind: Address | None = setting(
        _optional_address,
        "127.0.0.1:9191",
        "address of the master's /metrics and /healthz endpoint; off disables it",
        "HOST:PORT|off",
        group="metrics",
    )
    stats_interval: float = setting(
        _positive_float,
        "1",
        "seconds between worker stats flushes",
        "S",
        group="metrics",
    )
    app_metrics: bool = setting(
        _bool,
        "true",
        "merge the app's own prometheus_client metrics (default registry) from every worker "
        "into /metrics, exactly, with no PROMETHEUS_MULTIPROC_DIR",
        "BOOL",
        switch=True,
        group="metrics",
    )
    app_metrics_max_series: int = setting(
        _positive_int,
        "10000",
        "app metric series a worker sends at most; the rest are left out, counted and logged once",
        "N",
        group="metrics",
    )
    otel: bool = setting(
        _bool,
        "false",
        "OpenTelemetry: a server span per HTTP request, exported over OTLP/HTTP to "
        "OTEL_EXPORTER_OTLP_ENDPOINT (the SDK's variables), the SDK set up in each worker",
        "BOOL",
        switch=True,
        group="tracing",
    )
    otel_sample_ratio: float = setting(
        _ratio,
        "1.0",
        "with --otel, the share of requests without a sampled parent that are traced (a "
        "traceparent's sampled flag decides for the others)",
        "R",
        group="tracing",
    )
    chdir: str | None = setting(
        _directory,
        "",
        "change to this directory before loading the app (and importing it from there)",
        "DIR",
        group="process",
    )
    pid_file: str | None = setting(
        _optional_path,
        "",
        "write the master's pid here (atomically); removed on exit",
        "FILE",
        group="process",
    )
    user: int | None = setting(
        _user,
        "",
        "workers switch to this user (name or uid) before loading the app",
        "USER",
        group="process",
    )
    group: int | None = setting(
        _group,
        "",
        "workers switch to this group (default: the user's group)",
        "GROUP",
        group="process",
    )
    config: str | None = None

    def with_changes(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


OPTIONS: tuple[Option, ...] = tuple(
    dataclasses.replace(f.metadata["option"], name=f.name)
    for f in dataclasses.fields(Settings)
    if "option" in f.metadata
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="greenserve",
        description=(
            "Pre-fork gevent server: one worker per core sharing the listening sockets, a "
            "greenlet per connection, Prometheus metrics from the master. Serves a WSGI app "
            "(Flask, Django, Falcon, Bottle, ...) over HTTP/1.1 or a TCP handler "
            "handle(sock, address), whichever APP is (--protocol to say it); without APP, the "
            "built-in echo service over TCP."
        ),
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
        help="MODULE:CALLABLE, MODULE:FACTORY() or MODULE:FACTORY('arg', ...): a WSGI app or a "
        "handler(sock, address); default: the built-in echo (tcp) or hello (--protocol http)",
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML file with settings")
    parser.add_argument("--version", action="version", version=f"greenserve {__version__}")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="load the settings and import the app, then exit: 0 ok, 2 bad settings, 3 app",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings and where each came from, then exit",
    )
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for option in OPTIONS:
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if option.switch else {}
        if option.repeat:
            extra["action"] = "append"
        flags = [option.short, option.flag] if option.short else [option.flag]
        groups[option.group].add_argument(
            *flags,
            dest=option.name,
            metavar=option.metavar,
            help=f"{option.help} (default: {option.default or 'none'}; env {option.env})",
            **extra,
        )
    return parser


def parse_value(option: Option, raw: Any, source: str) -> Any:
    if option.repeat and isinstance(raw, list):
        raw = ",".join(str(item) for item in raw)
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


def read_file(path: str, *, strict: bool = True) -> dict[str, Any]:
    """The settings table of a TOML file; unknown keys are errors when ``strict``."""
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
        if strict and key not in OPTIONS_BY_NAME and key != "app":
            raise ConfigError(f"unknown setting {key!r} in config file {path}")
    return dict(table)


# GREENSERVE_* names that are not options but mean something to greenserve.
_ENV_NAMES = (
    "config",
    "app",
    "inherit",  # set by a master for the new master of a USR2 upgrade
    "inherit_metrics",
    "upgrade_from",
    "keyfile_password",  # read by greenserve.tls_context: never on the command line
    "no_extensions",  # read by greenserve.extensions: every C extension off
)

# Kubernetes links every Service of a namespace into each of its pods (enableServiceLinks) as
# <NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT[_<PORT NAME>], <NAME>_PORT and
# <NAME>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]: a Service named greenserve or greenserve-* puts
# GREENSERVE_ names in the environment that nobody chose for us.
_SERVICE_LINK = re.compile(
    ENV_PREFIX + r"(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT(?:_\d+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)"
)


@dataclass(frozen=True)
class UnknownEnv:
    """A GREENSERVE_* variable that names no setting: ignored, and said once at start."""

    name: str
    closest: str | None  # the environment name of the nearest real setting

    def __str__(self) -> str:
        hint = f"; did you mean {self.closest}?" if self.closest else ""
        return f"unknown environment setting {self.name} ignored{hint}"


def unknown_environment(environ: Mapping[str, str]) -> list[UnknownEnv]:
    """The GREENSERVE_* variables that are neither a setting nor a Kubernetes service link.

    Not an error: an environment is shared with things we do not control (a platform's
    injected names), and a crash loop over one of them takes a whole Deployment down.
    """
    known = [*OPTIONS_BY_NAME, *_ENV_NAMES]
    unknown = []
    for key in sorted(environ):
        name = key[len(ENV_PREFIX) :].lower()
        if not key.startswith(ENV_PREFIX) or name in known or _SERVICE_LINK.fullmatch(key):
            continue
        closest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        unknown.append(UnknownEnv(key, ENV_PREFIX + closest[0].upper() if closest else None))
    return unknown


_BOOL_WORDS = frozenset(("true", "false", "yes", "no", "on", "off", "1", "0"))


def _switch_values(argv: Sequence[str]) -> list[str]:
    """A switch's value is optional (``--access-log`` or ``--access-log false``): a next word
    that is no boolean is not its value but the next argument (``--access-log app:app``)."""
    switches = {f for option in OPTIONS if option.switch for f in (option.flag, option.short) if f}
    args = list(argv)
    out: list[str] = []
    for index, arg in enumerate(args):
        out.append(arg)
        following = args[index + 1] if index + 1 < len(args) else None
        if arg in switches and following is not None and following.lower() not in _BOOL_WORDS:
            out.append("true")
    return out


@dataclass(frozen=True)
class Resolved:
    """Settings, where each value came from, and what the command line asked to do."""

    settings: Settings
    sources: dict[str, str]  # option name -> "default", "file FILE", "env NAME" or "command line"
    check_config: bool = False
    print_config: bool = False
    warnings: tuple[UnknownEnv, ...] = ()


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Resolve settings; raise ConfigError (one line) for anything unknown or invalid."""
    return resolve(argv, environ).settings


def resolve(argv: Sequence[str], environ: Mapping[str, str]) -> Resolved:
    """``load`` with the source of each value and the --check-config/--print-config flags."""
    cli = vars(build_parser().parse_args(_switch_values(argv)))
    warnings = tuple(unknown_environment(environ))

    config_path = cli.get("config") or environ.get(ENV_PREFIX + "CONFIG") or None
    file_values = read_file(config_path) if config_path else {}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        if option.name in cli:
            values[option.name] = parse_value(option, cli[option.name], option.flag)
            sources[option.name] = "command line"
        elif option.env in environ:
            values[option.name] = parse_value(option, environ[option.env], option.env)
            sources[option.name] = f"env {option.env}"
        elif option.name in file_values:
            values[option.name] = parse_value(option, file_values[option.name], config_path or "")
            sources[option.name] = f"file {config_path}"
        else:
            values[option.name] = option.parse(option.default)
            sources[option.name] = "default"

    app = cli.get("app") or environ.get(ENV_PREFIX + "APP") or file_values.get("app")
    sources["app"] = (
        "command line"
        if cli.get("app")
        else f"env {ENV_PREFIX}APP"
        if environ.get(ENV_PREFIX + "APP")
        else f"file {config_path}"
        if file_values.get("app")
        else "default"
    )
    if app is not None:
        try:
            app = _app(app)
        except ValueError as exc:
            raise ConfigError(f"invalid value for APP: {app!r} ({exc})") from None
    return Resolved(
        Settings(app=app, config=config_path, **values),
        sources,
        check_config=bool(cli.get("check_config")),
        print_config=bool(cli.get("print_config")),
        warnings=warnings,
    )


def read_file_keys(path: str, names: Sequence[str]) -> dict[str, Any]:
    """Only these keys of a config file, parsed; the rest of the file is not validated.

    The tools (status, top, client) need the addresses even when another key is broken, which
    is exactly when an operator reaches for them (after a failed HUP).
    """
    table = read_file(path, strict=False)
    return {
        name: parse_value(OPTIONS_BY_NAME[name], table[name], path)
        for name in names
        if name in table
    }


def changes(old: Settings, new: Settings) -> dict[str, list[Any]]:
    """The settings a reload changes, old and new value, for its log event."""
    return {
        f.name: [_shown(getattr(old, f.name)), _shown(getattr(new, f.name))]
        for f in dataclasses.fields(Settings)
        if getattr(old, f.name) != getattr(new, f.name)
    }


def _shown(value: Any) -> Any:
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def describe(resolved: Resolved) -> list[tuple[str, str, str]]:
    """(name, value, source) for --print-config, in the table's order."""
    settings = resolved.settings
    rows = [("app", str(settings.app or "(built-in)"), resolved.sources["app"])]
    for option in OPTIONS:
        value = getattr(settings, option.name)
        if isinstance(value, tuple):
            shown = ", ".join(str(item) for item in value)
        elif option.name == "unix_mode":
            shown = f"{value:03o}"
        else:
            shown = "none" if value is None else str(value)
        rows.append((option.name, shown, resolved.sources[option.name]))
    return rows
