"""Command line: argv -> Settings -> Master(settings).run(), errors mapped to exit codes.

``greenserve top``, ``greenserve status`` and ``greenserve client`` are tools for a running
server; anything else runs the server (an APP is always MODULE:CALLABLE, so never one of these).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from greenserve import logs
from greenserve.config import Address, ConfigError, Settings, load, parse_address

EXIT_USAGE = 2
TOOLS = ("top", "status", "client")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server or a tool; returns the exit code (0 ok, 1 runtime, 2 usage, 3 app load)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if args and args[0] in TOOLS:
            return _tool(args[0], args[1:], os.environ)
        settings = load(args, os.environ)
    except ConfigError as exc:
        print(f"greenserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
    # Imported late: --help, tools and usage errors answer without loading the master.
    from greenserve.master import Master

    return Master(settings, argv=args).run()


class _ToolParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _settings(config: str | None, environ: Mapping[str, str]) -> Settings:
    return load(["--config", config] if config else [], environ)


def _local(address: Address) -> Address:
    """Where to reach a server bound to ``address`` from this machine."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    return Address(wildcard.get(address.host, address.host), address.port)


def _metrics_url(given: str | None, config: str | None, environ: Mapping[str, str]) -> str:
    if given:
        return given
    bind = _settings(config, environ).metrics_bind
    if bind is None:
        raise ConfigError("metrics are off (metrics_bind = off): pass --metrics URL")
    return f"http://{_local(bind)}/metrics"


def _tool(name: str, argv: list[str], environ: Mapping[str, str]) -> int:
    parser = _ToolParser(prog=f"greenserve {name}")
    parser.add_argument("--config", metavar="FILE", help="read defaults from this TOML file")
    if name == "client":
        parser.add_argument(
            "address", nargs="?", metavar="HOST:PORT", help="default: the configured --bind"
        )
    else:
        parser.add_argument(
            "--metrics", metavar="URL", help="the /metrics URL; default: from --metrics-bind"
        )
    if name == "status":
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    options = parser.parse_args(argv)
    if name == "client":
        # Each tool imports only what it uses (top needs rich, status prometheus' parser).
        from greenserve import client

        try:
            address = parse_address(options.address) if options.address else None
        except ValueError as exc:
            raise ConfigError(f"invalid address {options.address!r}: {exc}") from None
        return client.run(address or _local(_settings(options.config, environ).bind))
    url = _metrics_url(options.metrics, options.config, environ)
    if name == "status":
        from greenserve import status

        return status.run(url, options.json)
    from greenserve import top

    return top.run(url)
