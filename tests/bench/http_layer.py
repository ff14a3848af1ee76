"""The HTTP layer's own cost per request, in process: no sockets, no gevent switches, no load
generator sharing the cores, so two trees compare within a few percent run to run.

    python -m tests.bench.http_layer [TREE ...]     # e.g. the checkout and a git worktree of HEAD~5
    python -m tests.bench.http_layer --instructions [TREE ...]    # needs valgrind

40,000 keep-alive requests (the wrk hello request) go through HttpHandler with an in-memory
socket; the best of 5 runs is printed in microseconds per request.

``--instructions`` counts instead of timing: the same loop under valgrind (callgrind), run with
0 and with 3,000 requests after a warm-up, the difference divided by 3,000. The count repeats
to within about 20 instructions (hash seed fixed), where the timing on this shared machine
drifts by 10%: small changes to the hot path are measured this way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
COUNT = 40_000

# The handler over hello, in any tree this bench has compared: the package grouped by role or
# the flat layout before it, the handler that reads Settings or the keyword form before that.
_SETUP = """
import sys, time
import structlog
from tests.helpers import ScriptedSocket
try:
    from greenserve.worker import apps
    from greenserve.worker.protocols.http_handler import HttpHandler
    from greenserve.metrics.stats import WorkerStats
except ImportError:
    from greenserve import apps
    from greenserve.protocols.http import HttpHandler
    from greenserve.stats import WorkerStats

structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
try:
    from greenserve.config import load
    handler = HttpHandler(apps.hello, load(["--protocol", "http"], {}), stats=WorkerStats(),
                          log=structlog.get_logger(), server_address=("127.0.0.1", 8000))
except TypeError:
    handler = HttpHandler(apps.hello, stats=WorkerStats(), log=structlog.get_logger(),
                          server_address=("127.0.0.1", 8000), max_body=1 << 20,
                          header_timeout=10.0, keepalive_timeout=5.0, access_log=False)
"""

_MEASURE = """
best = float("inf")
for _ in range(5):
    sock = ScriptedSocket([REQUEST] * COUNT)
    started = time.perf_counter()
    handler.handle(sock, ("127.0.0.1", 40000))
    assert sock.sent.count(b"HTTP/1.1 200 ") == COUNT
    best = min(best, (time.perf_counter() - started) / COUNT * 1e6)
print(f"{best:.2f}")
"""

_COUNT_LOOP = """
handler.handle(ScriptedSocket([REQUEST] * 2000), ("127.0.0.1", 40000))  # warm
handler.handle(ScriptedSocket([REQUEST] * int(sys.argv[1])), ("127.0.0.1", 40000))
"""
COUNTED = 3000


def _run(
    tree: Path, loop: str, tool: tuple[str, ...] = (), arg: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    """``loop`` after the setup, in a Python of its own over ``tree`` (each tree with its own
    tests package: the in-memory socket matches that tree's code), under ``tool`` if given."""
    code = f"REQUEST = {REQUEST!r}\nCOUNT = {COUNT}\n" + _SETUP + loop
    environ = dict(os.environ, PYTHONPATH=f"{tree / 'service'}{os.pathsep}{tree}", **env)
    return subprocess.run(
        [*tool, sys.executable, "-c", code, *([arg] if arg else [])],
        env=environ, cwd=tree, capture_output=True, text=True, check=True,
    )  # fmt: skip


def measure(tree: Path) -> float:
    return float(_run(tree, _MEASURE).stdout.strip())


def _instructions(tree: Path, requests: int) -> int:
    valgrind = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
    # PYTHONHASHSEED: dict layouts, and so the count, the same every run
    out = _run(tree, _COUNT_LOOP, valgrind, str(requests), PYTHONHASHSEED="0")
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit(out.stderr[-2000:])
    return int(found.group(1).replace(",", ""))


def instructions(tree: Path) -> float:
    """Instructions per request: the loop with COUNTED requests less the loop with none."""
    return (_instructions(tree, COUNTED) - _instructions(tree, 0)) / COUNTED


def main() -> None:
    args = sys.argv[1:]
    counting = "--instructions" in args
    trees = [Path(arg).resolve() for arg in args if arg != "--instructions"] or [ROOT]
    for tree in trees:
        if counting:
            print(f"{tree}: {instructions(tree):,.0f} instructions per request", flush=True)
        else:
            print(f"{tree}: {measure(tree):.2f} us per request", flush=True)


if __name__ == "__main__":
    main()
