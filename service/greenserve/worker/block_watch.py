"""``--block-warn``: a worker's event loop blocked longer than the threshold is logged with the
stack of the greenlet that blocks it, and counted.

Until 2026-12-07 gevent's monitor thread did this (``gevent.config.monitor_thread`` with
``max_blocking_time``). It learns which greenlet runs from a greenlet trace function, called on
every switch, several switches per request: in one worker serving hello over keep-alive, under
callgrind, 2,915 of a request's 61,447 instructions (4.7%), with ``--block-warn`` on by default.

This watcher costs nothing per switch. A real thread wakes every threshold and reads two
things: libev's count of loop iterations, and the main thread's current Python stack
(``sys._current_frames``), whose outermost frame names the greenlet that runs (the hub's is
``Hub.run``, also while it waits in epoll). The loop is blocked when it has begun no iteration
since the last look and the same greenlet, not the hub, runs now as then: one greenlet has held
the thread for at least the threshold. Greenlets that each run a little within one long
iteration (many connections ready at once) are not one greenlet, and the hub's callback pass
ends itself after the switch interval. Each blocked stretch is reported once.
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from types import FrameType
from typing import Any

import gevent
from gevent import events, monkey
from gevent import hub as gevent_hub

from greenserve.metrics.stats import WorkerStats

_HUB_RUN = gevent_hub.Hub.run.__code__
_sleep = monkey.get_original("time", "sleep")
_start_thread = monkey.get_original("_thread", "start_new_thread")
_thread_id = monkey.get_original("_thread", "get_ident")


def _outermost(frame: FrameType) -> FrameType:
    while frame.f_back is not None:
        frame = frame.f_back
    return frame


class BlockWatch:
    """The watcher of one worker's loop; ``start`` from the thread that runs the hub."""

    def __init__(self, threshold: float, stats: WorkerStats, log: Any) -> None:
        self.threshold = threshold
        self.stats = stats
        self.log = log
        self.loop = gevent_hub.get_hub().loop
        self.hub_thread = 0
        self.stopped = False  # a worker never stops it: it ends with the process

    def start(self) -> None:
        self.hub_thread = _thread_id()
        _start_thread(self._run, ())

    def _run(self) -> None:
        # (loop iteration, id and code of the outermost frame) at the last look: an id, not the
        # frame, so that no frame of the main thread is kept alive while this thread sleeps
        seen: tuple[int, int, Any] = (-1, 0, None)
        reported = False
        since = 0.0
        while True:
            _sleep(self.threshold)
            iteration = self.loop.iteration
            frame = sys._current_frames().get(self.hub_thread)
            if frame is None or self.stopped:  # the worker's main thread has ended
                return
            running = _outermost(frame)
            now = (iteration, id(running), running.f_code)
            if now != seen or running.f_code is _HUB_RUN:
                seen, reported, since = now, False, time.monotonic()
            elif not reported:
                reported = True
                self._report(frame, running, time.monotonic() - since)
            del frame, running

    def _report(self, frame: FrameType, running: FrameType, blocked: float) -> None:
        self.stats.event_loop_blocked += 1
        code = running.f_code
        self.log.warning(
            "event_loop_blocked",
            blocked_seconds=round(blocked, 3),
            greenlet=f"{code.co_name} ({code.co_filename}:{code.co_firstlineno})",
            stack="".join(traceback.format_stack(frame)),
        )


def watch_blocking(threshold: float, stats: WorkerStats, log: Any) -> None:
    """Start the watcher for ``--block-warn`` seconds (0: none)."""
    if not threshold:
        return
    if getattr(gevent_hub.get_hub().loop, "iteration", -1) >= 0:
        BlockWatch(threshold, stats, log).start()
    else:  # no iteration count (GEVENT_LOOP=libuv gives -1): gevent's own monitor
        _gevent_monitor(threshold, stats, log)


def _gevent_monitor(threshold: float, stats: WorkerStats, log: Any) -> None:
    """gevent's monitor thread reports a hub blocked longer than ``threshold``: log and count."""
    gevent.config.monitor_thread = True
    gevent.config.max_blocking_time = threshold
    gevent.config.print_blocking_reports = False  # our log line replaces gevent's stderr dump
    # Only gevent's blocked-loop check is used, not its memory monitor, which warns on stderr
    # that psutil is missing.
    warnings.filterwarnings("ignore", message="Unable to monitor memory usage")

    def on_event(event: Any) -> None:
        if isinstance(event, events.EventLoopBlocked):
            stats.event_loop_blocked += 1
            log.warning(
                "event_loop_blocked",
                blocked_seconds=round(event.blocking_time, 3),
                greenlet=repr(event.greenlet),
                stack="".join(line if line.endswith("\n") else line + "\n" for line in event.info),
            )

    events.subscribers.append(on_event)
    # The hub exists already (sockets were made), so its monitor is started explicitly.
    gevent.get_hub().start_periodic_monitoring_thread()
