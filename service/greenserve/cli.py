"""Command line: argv -> Settings -> Master(settings).run(), errors mapped to exit codes.

``greenserve top``, ``greenserve status`` and ``greenserve client`` are tools for a running
server; anything else runs the server (an APP is always MODULE:CALLABLE, so never one of these).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from greenserve import logs
from greenserve.config import (
    ENV_PREFIX,
    OPTIONS_BY_NAME,
    Address,
    ConfigError,
    OneLineParser,
    Settings,
    describe,
    parse_address,
    parse_value,
    read_file_keys,
    resolve,
)
from greenserve.hooks import NOT_CALLED, HookError, Hooks, patched_master
from greenserve.hooks import load as load_hooks
from greenserve.spec import EXIT_APP_LOAD, EXIT_USAGE

TOOLS = ("top", "status", "client")
FREE_THREADED = (
    "this is a free-threaded Python build (3.13t/3.14t), which gevent and greenlet do not "
    "support: run greenserve on the standard build of the same version (python3.13, not "
    "python3.13t)"
)


def free_threaded() -> bool:
    """A CPython built with --disable-gil (PEP 703), whether or not the GIL is on right now:
    greenlet's C extension is not built for it."""
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server or a tool; returns the exit code (0 ok, 1 runtime, 2 usage, 3 app load)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if free_threaded():
        print(f"greenserve: error: {FREE_THREADED}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args and args[0] in TOOLS:
            return _quiet_on_closed_pipe(lambda: _tool(args[0], args[1:], os.environ))
        resolved = resolve(args, os.environ)
    except ConfigError as exc:
        print(f"greenserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    settings = resolved.settings
    if resolved.print_config or resolved.check_config:
        for warning in resolved.warnings:
            print(f"greenserve: warning: {warning}", file=sys.stderr)
    if resolved.print_config:
        rows = describe(resolved)
        width = max(len(name) for name, _, _ in rows)
        for name, value, source in rows:
            print(f"{name:{width}s} = {value}  # {source}")
        return 0
    try:
        # Before anything binds: a hook that cannot import or take its arguments is a bad value.
        server_hooks = _master_hooks(settings)
        _otel_installed(settings)
        _http2_usable(settings)
        if settings.static and settings.protocol == "tcp":
            raise ConfigError("--static serves files over HTTP: it cannot go with --protocol tcp")
    except (HookError, ConfigError) as exc:
        print(f"greenserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if resolved.check_config:
        # The checks a start makes before it binds, with the same one line and exit code.
        from greenserve.tls_context import TlsError, check

        try:
            check(settings)
        except TlsError as exc:
            print(f"greenserve: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return _check_app(settings)
    try:
        logs.configure(
            log_format=settings.log_format,
            level=settings.log_level,
            worker="master",
            log_file=settings.log_file,
        )
    except OSError as exc:
        print(
            f"greenserve: error: cannot open log file {settings.log_file}: {exc.strerror}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    log = logs.get()
    for warning in resolved.warnings:
        log.warning("unknown_environment_setting", name=warning.name, closest=warning.closest)
    server_hooks.log = log
    for name in server_hooks.ignored:
        log.warning("hook_not_called", hook=name, hint=NOT_CALLED[name])
    # Imported late: --help, tools and usage errors answer without loading the master.
    from greenserve.master.master import Master

    return Master(settings, argv=args, hooks=server_hooks).run()


def _otel_installed(settings: Settings) -> None:
    """--otel needs the [otel] extra; found without importing it (the master must not)."""
    import importlib.util

    if not settings.otel:
        return
    try:
        found = all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ConfigError(
            "--otel needs the OpenTelemetry SDK and OTLP exporter: pip install 'greenserve[otel]'"
        )


def _http2_usable(settings: Settings) -> None:
    """HTTP/2 needs the [http2] extra and a WSGI app; h2c needs h2 among --http-protocols."""
    import importlib.util

    h2 = "h2" in settings.http_protocols
    if settings.http2_cleartext != "off" and not h2:
        raise ConfigError("--http2-cleartext needs h2 in --http-protocols, e.g. h2,h1")
    if not h2:
        return
    if settings.protocol == "tcp":
        raise ConfigError("--http-protocols h2 serves HTTP: it cannot go with --protocol tcp")
    if importlib.util.find_spec("h2") is None:
        raise ConfigError(
            "--http-protocols h2 needs the h2 package: pip install 'greenserve[http2]'"
        )


def _master_hooks(settings: Settings) -> Hooks:
    """The master's hooks; every source is imported and every hook's arguments checked."""
    hooks = load_hooks(settings.hooks, process="master")
    if patched_master():
        raise HookError(
            "the hooks monkey-patched the master (gevent.monkey.patch_all at import): "
            "patch in the app or in post_fork, which run in the workers"
        )
    return hooks


def _quiet_on_closed_pipe(run: Callable[[], int]) -> int:
    """A tool whose reader went away (``greenserve status --json | head -1``) ends quietly, as
    ``cat`` does, instead of with a BrokenPipeError traceback (the Python docs' recipe)."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that one cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


def _addresses(config: str | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """bind and metrics_bind as configured: from the file's own keys only, then the env.

    A tool must work when another key of the file is broken (after a failed HUP, say).
    """
    names = ("bind", "metrics_bind")
    values = {name: OPTIONS_BY_NAME[name].parse(OPTIONS_BY_NAME[name].default) for name in names}
    path = config or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        values.update(read_file_keys(path, names))
    for name in names:
        option = OPTIONS_BY_NAME[name]
        if option.env in environ:
            values[name] = parse_value(option, environ[option.env], option.env)
    return values


def _check_app(settings: object) -> int:
    """--check-config: import the app as a worker would, in a child process; 0, or 3."""
    import subprocess

    code = (
        "import sys, gevent.monkey; gevent.monkey.patch_all()\n"
        "from greenserve.worker.worker import AppLoadError, load_app, served_protocol\n"
        "import pickle\n"
        "settings = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
        "try:\n"
        "    served_protocol(settings, load_app(settings))\n"
        "except AppLoadError as exc:\n"
        "    print(f'greenserve: error: {exc}', file=sys.stderr); sys.exit(3)\n"
        "except BaseException as exc:\n"
        "    print(f'greenserve: error: app {settings.app!r} failed to import: {exc!r}',"
        " file=sys.stderr); sys.exit(3)\n"
    )
    import pickle

    result = subprocess.run(
        [sys.executable, "-c", code, pickle.dumps(settings).hex()],
        cwd=getattr(settings, "chdir", None) or None,
        stdout=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode == 0:
        print(f"greenserve: config ok, app {getattr(settings, 'app', None) or '(built-in)'} loads")
        return 0
    return EXIT_APP_LOAD if result.returncode == EXIT_APP_LOAD else 1


def _local(address: Address) -> Address:
    """Where to reach a server bound to ``address`` from this machine."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    return Address(wildcard.get(address.host, address.host), address.port)


def _metrics_url(given: str | None, config: str | None, environ: Mapping[str, str]) -> str:
    if given:
        if "://" in given:
            return given
        # HOST:PORT, as given to --metrics-bind: what an operator types first
        try:
            return f"http://{_local(parse_address(given))}/metrics"
        except ValueError:
            raise ConfigError(f"--metrics: expected a URL or HOST:PORT, got {given!r}") from None
    bind = _addresses(config, environ)["metrics_bind"]
    if bind is None:
        raise ConfigError("metrics are off (metrics_bind = off): pass --metrics URL")
    assert isinstance(bind, Address)
    return f"http://{_local(bind)}/metrics"


def _tool(name: str, argv: list[str], environ: Mapping[str, str]) -> int:
    parser = OneLineParser(prog=f"greenserve {name}")
    parser.add_argument("--config", metavar="FILE", help="read defaults from this TOML file")
    if name == "client":
        parser.add_argument(
            "address", nargs="?", metavar="HOST:PORT", help="default: the configured --bind"
        )
    else:
        parser.add_argument(
            "--metrics",
            metavar="URL|HOST:PORT",
            help="the /metrics URL, or the --metrics-bind address; default: from --metrics-bind",
        )
    if name == "status":
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    options = parser.parse_args(argv)
    if name == "client":
        # Each tool imports only what it uses (top needs rich, status prometheus' parser).
        from greenserve.tools import client

        try:
            address = parse_address(options.address) if options.address else None
        except ValueError as exc:
            raise ConfigError(f"invalid address {options.address!r}: {exc}") from None
        if address is None:
            tcp = [b for b in _addresses(options.config, environ)["bind"] if isinstance(b, Address)]
            if not tcp:
                raise ConfigError("no TCP address in bind: pass HOST:PORT")
            address = _local(tcp[0])
        return client.run(address)
    url = _metrics_url(options.metrics, options.config, environ)
    if name == "status":
        from greenserve.tools import status

        return status.run(url, options.json)
    from greenserve.tools import top

    return top.run(url)
