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

from greenserve.tools.monitor import Scrape, Summary, Unreachable, WorkerRow, fetch, summarize

REFRESH = 1.0


def _fmt(value: float | None, spec: str = ".0f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


COLUMNS = (  # (heading, value of a row); the first COMPACT fit 80 columns
    ("worker", lambda row: row.worker),
    ("pid", lambda row: str(row.pid or "-")),
    ("state", lambda row: row.state),
    ("conns", lambda row: _fmt(row.active)),
    ("req/s", lambda row: _fmt(row.requests_per_s, ".0f")),
    ("acc/s", lambda row: _fmt(row.accepted_per_s, ".0f")),
    ("p99 ms", lambda row: _fmt(row.p99_ms, ".1f")),
    ("RSS MB", lambda row: _fmt(row.rss, ".0f", 1e6)),
    ("rst", lambda row: _fmt(row.restarts)),
    ("in flight", lambda row: _fmt(row.in_flight)),
    ("upgraded", lambda row: _fmt(row.upgraded)),
    ("in KB/s", lambda row: _fmt(row.bytes_in_per_s, ".1f", 1000)),
    ("out KB/s", lambda row: _fmt(row.bytes_out_per_s, ".1f", 1000)),
    ("p50 ms", lambda row: _fmt(row.p50_ms, ".2f")),
    ("lag p99 ms", lambda row: _fmt(row.loop_lag_p99_ms, ".2f")),
    ("blocked", lambda row: _fmt(row.blocked)),
)
COMPACT = 9
WIDE = 150  # the whole table needs about this many columns


def render(summary: Summary, width: int = WIDE) -> Table:
    """The table for a terminal ``width`` columns wide: the main columns fit 80."""
    health = "[green]healthy[/]" if summary.healthy else "[red]degraded[/]"
    table = Table(
        title=(
            f"greenserve {summary.url} {health} up {_fmt(summary.uptime_seconds)}s "
            f"gen {_fmt(summary.generation)} workers {_fmt(summary.workers_alive)}/"
            f"{_fmt(summary.workers_desired)} accept queue {_fmt(summary.listen_queue)}"
        ),
        caption="q quits" + ("" if width >= WIDE else "; widen the terminal for more columns"),
        expand=False,
        padding=(0, 1) if width >= WIDE else (0, 0, 0, 1),
    )
    columns = COLUMNS if width >= WIDE else COLUMNS[:COMPACT]
    for heading, _ in columns:
        table.add_column(heading, justify="right", no_wrap=True)
    rows: list[WorkerRow] = [*summary.workers, *([summary.totals] if summary.totals else [])]
    last = summary.workers[-1].worker if summary.workers else None
    for row in rows:
        table.add_row(*(value(row) for _, value in columns), end_section=row.worker == last)
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
                view: Table | Group | Text = render(summarize(url, now, before), console.width)
                before = now
            except Unreachable as exc:
                before = None  # rates restart from the next successful scrape
                view = Text(f"greenserve {url}: unreachable ({exc}); retrying every second")
            live.update(view, refresh=True)
            if _quit_pressed(stdin, REFRESH):
                return 0
