"""What one idle connection's greenlet costs at least, whatever the server around it does.

Each way of waiting runs in a fresh process: it makes N socket pairs first (their RSS is the
baseline, so the kernel's and the socket objects' share is left out), then N greenlets that each
wait, in that way, for one of them to become readable, and reports the RSS added per greenlet and
the median of the C stack each greenlet saved on the heap when it switched out
(``greenlet._stack_saved``). It bounds what a greenlet-per-connection server can reach per idle
WebSocket: the engine, the environ and the socket objects come on top.

A greenlet that has run any Python code holds its own chunk of CPython 3.11's frame data stack
(16 KiB mapped, its first 4 KiB page touched): ``hub.wait`` spawned directly is the only way here
without one, and a connection's handler cannot be that, as it is Python waiting in Python.

    python -m tests.bench.greenlet_floor --count 8000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WAYS = {
    "gevent.spawn + socket.recv": "a gevent socket's recv (what a handler written for gevent does)",
    "gevent.spawn + hub.wait": "hub.wait (Cython) run directly: no Python frame at all",
    "gevent.spawn + park": "watcher.start(greenlet.switch) and hub.switch (greenserve's park)",
    "greenlet + recv": "a bare greenlet (no gevent Greenlet) in a gevent socket's recv",
    "greenlet + switch": "a bare greenlet that only switches out: the floor of a greenlet",
}


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(way: str, count: int) -> dict[str, float]:
    """In this process: RSS per greenlet waiting ``way`` on one of ``count`` socket pairs."""
    import gc

    import greenlet
    from gevent import get_hub, getcurrent, sleep, spawn
    from gevent import socket as gsocket

    from greenserve.worker.protocols.tcp import park

    hub = get_hub()
    pairs = [gsocket.socketpair() for _ in range(count)]
    for a, _b in pairs:  # the watchers exist before the baseline, as they would in a server
        a._read_event  # noqa: B018
    sleep(0)
    gc.collect()
    before = rss_bytes()

    waiting: list[object] = []
    for a, _b in pairs:
        if way == "gevent.spawn + socket.recv":
            waiting.append(spawn(a.recv, 1))
        elif way == "gevent.spawn + hub.wait":
            waiting.append(spawn(hub.wait, a._read_event))
        elif way == "gevent.spawn + park":
            waiting.append(spawn(park, a._read_event, hub))
        elif way == "greenlet + recv":
            g = greenlet.greenlet(a.recv, parent=hub)
            hub.loop.run_callback(g.switch, 1)
            waiting.append(g)
        elif way == "greenlet + switch":
            g = greenlet.greenlet(lambda: getcurrent().parent.switch())
            g.switch()
            waiting.append(g)
        else:
            raise SystemExit(f"unknown way: {way}")
    # a greenlet that ran up to its wait and switched out has saved some of its C stack
    for _ in range(100):
        if all(g._stack_saved and not g.dead for g in waiting):  # type: ignore[attr-defined]
            break
        sleep(0)
    else:
        raise SystemExit(f"{way}: not every greenlet came to wait")
    gc.collect()
    added = rss_bytes() - before
    saved = [g._stack_saved for g in waiting]  # type: ignore[attr-defined]
    return {
        "rss_per_greenlet": added / count,
        "stack_saved_median": statistics.median(saved),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--count", type=int, default=8000)
    parser.add_argument("--way", help=argparse.SUPPRESS)  # one way, in a child process
    args = parser.parse_args()
    if args.way:
        print(json.dumps(measure(args.way, args.count)))
        return
    print(f"{args.count:,} greenlets each waiting on a socket pair, one process per way")
    print(f"{'way':<30} {'KiB RSS each':>13} {'stack saved':>12}")
    count = str(args.count)
    for way, what in WAYS.items():
        out = subprocess.run(
            [sys.executable, "-m", "tests.bench.greenlet_floor", "--way", way, "-c", count],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
        found = json.loads(out)
        print(
            f"{way:<30} {found['rss_per_greenlet'] / 1024:>13.2f} "
            f"{found['stack_saved_median']:>10,.0f} B   {what}"
        )


if __name__ == "__main__":
    main()
