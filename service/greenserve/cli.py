"""Command line: argv -> Settings -> Master(settings).run(), errors mapped to exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from greenserve import logs
from greenserve.config import ConfigError, load

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the exit code (0 stop, 1 runtime, 2 usage, 3 app load)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        settings = load(args, os.environ)
    except ConfigError as exc:
        print(f"greenserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(log_format=settings.log_format, level=settings.log_level, worker="master")
    from greenserve.master import Master

    return Master(settings).run()
