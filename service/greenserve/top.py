"""``greenserve top``: a live per-worker view of a running server, refreshed every second."""

from __future__ import annotations

import contextlib
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from greenserve.monitor import Scrape, Summary, Unreachable, WorkerRow, fetch, summarize

REFRESH = 1.0


def _fmt(value: float | None, spec: str = ".0f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def render(summary: Summary) -> Table:
    health = "[green]healthy[/]" if summary.healthy else "[red]degraded[/]"
    uptime = _fmt(summary.uptime_seconds)
    table = Table(
        title=(
            f"greenserve {summary.url}  {health}  up {uptime}s  generation "
            f"{_fmt(summary.generation)}  workers {_fmt(summary.workers_alive)}/"
            f"{_fmt(summary.workers_desired)}"
        ),
        caption="q quits",
        expand=False,
    )
    for column in (
        "worker",
        "pid",
        "state",
        "active",
        "accepted/s",
        "req/s",
        "in KB/s",
        "out KB/s",
        "p50 ms",
        "p99 ms",
        "RSS MB",
        "restarts",
        "lag p99 ms",
        "blocked",
    ):
        table.add_column(column, justify="right")
    rows: list[WorkerRow] = [*summary.workers, *([summary.totals] if summary.totals else [])]
    for row in rows:
        table.add_row(
            row.worker,
            str(row.pid or "-"),
            row.state,
            _fmt(row.active),
            _fmt(row.accepted_per_s, ".1f"),
            _fmt(row.requests_per_s, ".1f"),
            _fmt(row.bytes_in_per_s, ".1f", 1000),
            _fmt(row.bytes_out_per_s, ".1f", 1000),
            _fmt(row.p50_ms, ".2f"),
            _fmt(row.p99_ms, ".2f"),
            _fmt(row.rss, ".1f", 1e6),
            _fmt(row.restarts),
            _fmt(row.loop_lag_p99_ms, ".2f"),
            _fmt(row.blocked),
            end_section=row.worker == summary.workers[-1].worker if summary.workers else False,
        )
    return table


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[None]:
    """cbreak mode on a terminal so that a single 'q' is read without Enter."""
    if not stream.isatty():
        yield
        return
    saved = termios.tcgetattr(stream)
    tty.setcbreak(stream)
    try:
        yield
    finally:
        termios.tcsetattr(stream, termios.TCSADRAIN, saved)


def _quit_pressed(stream: TextIO, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select([stream], [], [], left)
        if readable:
            char = stream.read(1)
            if char in ("q", "Q", ""):
                return True


def run(url: str, stdin: TextIO = sys.stdin) -> int:
    """Refresh every second until 'q' (or end of input); survives the server restarting."""
    console = Console()
    before: Scrape | None = None
    with _keys(stdin), Live(Text("connecting..."), console=console, auto_refresh=False) as live:
        while True:
            try:
                now = fetch(url)
                view: Table | Group | Text = render(summarize(url, now, before))
                before = now
            except Unreachable as exc:
                before = None  # rates restart from the next successful scrape
                view = Text(f"greenserve {url}: unreachable ({exc}); retrying every second")
            live.update(view, refresh=True)
            if _quit_pressed(stdin, REFRESH):
                return 0
