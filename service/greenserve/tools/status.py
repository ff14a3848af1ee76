"""``greenserve status``: one look at a running server, for people and for scripts."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from greenserve.tools.monitor import Summary, Unreachable, fetch, summarize

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_UNREACHABLE = 0, 1, 2


def run(url: str, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Print the server's state; exit 0 healthy, 1 degraded, 2 unreachable."""
    try:
        summary = summarize(url, fetch(url))
    except Unreachable as exc:
        if as_json:
            json.dump({"url": url, "reachable": False, "error": str(exc)}, out)
            out.write("\n")
        else:
            out.write(f"greenserve status: unreachable: {exc}\n")
        return EXIT_UNREACHABLE
    if as_json:
        json.dump({"reachable": True, **summary.to_json()}, out, indent=2)
        out.write("\n")
    else:
        out.write(render_text(summary))
    return EXIT_HEALTHY if summary.healthy else EXIT_DEGRADED


def render_text(summary: Summary) -> str:
    state = "healthy" if summary.healthy else "DEGRADED"
    uptime = f"{summary.uptime_seconds:.0f}s" if summary.uptime_seconds is not None else "?"
    lines = [
        f"greenserve at {summary.url}: {state}, up {uptime}, generation "
        f"{_num(summary.generation)}, workers {_num(summary.workers_alive)}/"
        f"{_num(summary.workers_desired)}",
        f"{'worker':>6} {'pid':>8} {'state':>10} {'active':>7} {'upgraded':>8} "
        f"{'accepted':>10} {'bytes in':>12} {'bytes out':>12} {'rss MB':>7} {'restarts':>8}",
    ]
    for row in [*summary.workers, *([summary.totals] if summary.totals else [])]:
        lines.append(
            f"{row.worker:>6} {row.pid or '-':>8} {row.state:>10} {row.active:>7.0f} "
            f"{row.upgraded:>8.0f} {row.accepted:>10.0f} {row.bytes_in:>12.0f} "
            f"{row.bytes_out:>12.0f} {row.rss / 1e6:>7.1f} {row.restarts:>8.0f}"
        )
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"
