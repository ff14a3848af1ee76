"""asyncio inside sync views: each event loop runs on a real OS thread (an "island").

Under gevent every greenlet of a worker shares one OS thread, and asyncio keeps its running
loop per OS thread: a second request's ``asyncio.run`` fails with "cannot be called from a
running event loop", and Django raises SynchronousOnlyOperation for a sync view that touches
the database while another request's ``async_to_sync`` loop runs (gunicorn #3000, #3053,
#3428, #3429; asgiref #443). So ``asyncio.run`` and asgiref's ``AsyncToSync.__call__`` are run
on gevent's thread pool, whose threads are real: the calling greenlet waits cooperatively, the
others go on, and each loop has an OS thread of its own. Installed in a worker after it patches
and before it loads the app. A loop a view drives itself (``loop.run_until_complete``) is not
covered.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey

# The OS thread's id without gevent (patched, get_ident names the greenlet).
_os_thread_id: Callable[[], int] = monkey.get_original("_thread", "get_ident")
_hub_thread = 0


def install(threads: int) -> None:
    """Route asyncio.run (and asgiref's async_to_sync, once importable) to ``threads`` threads."""
    global _hub_thread
    _hub_thread = _os_thread_id()
    gevent.get_hub().threadpool.maxsize = threads
    asyncio.run = _on_island(asyncio.run)
    try:
        import asgiref.sync
    except ImportError:
        return
    asgiref.sync.AsyncToSync.__call__ = _on_island(  # type: ignore[method-assign]
        asgiref.sync.AsyncToSync.__call__
    )


def _on_island(function: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(function, "__greenserve_island__", False):
        return function

    @functools.wraps(function)
    def on_island(*args: Any, **kwargs: Any) -> Any:
        if _os_thread_id() != _hub_thread:
            return function(*args, **kwargs)  # already on an island (nested): run it here
        return gevent.get_hub().threadpool.apply(function, args, kwargs)

    on_island.__greenserve_island__ = True  # type: ignore[attr-defined]
    return on_island
