"""``--reload``: watch the app's source and reload through the validated HUP on a change.

Master side, for development. A thread watches the working directory (``--chdir``) with
watchfiles (inotify on Linux: an idle watcher sleeps in the kernel, whatever the tree's size)
and sends the master a HUP when a watched file changes, after 50 ms without further changes (an
editor's save is several writes). The HUP is the one operators use: the new generation must
load before it replaces the old, so a syntax error keeps the old code serving and is logged
once; open WebSockets get Close 1001; several workers are fine (each loads the new code).
gunicorn's reloader is broken under gevent (gunicorn #1494) and others polled the tree
(uvicorn #338): this one does neither.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import threading
from pathlib import PurePath
from typing import Any

DEBOUNCE_MS = 50


def _globs(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


class Reloader:
    """The watcher thread; ``stop`` ends it."""

    def __init__(self, root: str, include: str, exclude: str, log: Any) -> None:
        self.root = os.path.abspath(root)
        self.include = _globs(include)
        self.exclude = _globs(exclude)
        self.log = log
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="greenserve-reload", daemon=True)

    def start(self) -> Reloader:
        self.thread.start()
        self.log.info("reload_watching", root=self.root, include=self.include, exclude=self.exclude)
        return self

    def stop(self) -> None:
        self.stopping.set()

    def wanted(self, path: str) -> bool:
        """Whether a change to ``path`` reloads: its name matches an include glob, and neither
        its name nor a folder above it (below the root) matches an exclude glob."""
        relative = PurePath(os.path.relpath(path, self.root))
        if any(fnmatch.fnmatch(part, glob) for part in relative.parts for glob in self.exclude):
            return False
        return any(
            fnmatch.fnmatch(relative.name, glob) or fnmatch.fnmatch(str(relative), glob)
            for glob in self.include
        )

    def _run(self) -> None:
        import logging

        from watchfiles import watch

        # its own "1 change detected" line would repeat reload_requested
        logging.getLogger("watchfiles").setLevel(logging.WARNING)

        changes = watch(
            self.root,
            watch_filter=lambda _, path: self.wanted(path),
            debounce=DEBOUNCE_MS,
            stop_event=self.stopping,
            rust_timeout=1000,  # how soon a stop is noticed
            raise_interrupt=False,
        )
        for batch in changes:
            paths = sorted({os.path.relpath(path, self.root) for _, path in batch})
            self.log.info("reload_requested", files=paths[:10], changed=len(paths))
            os.kill(os.getpid(), signal.SIGHUP)  # the master's own validated reload


def reloader_for(settings: Any, log: Any) -> Reloader | None:
    """The started watcher when --reload is on (the working directory is the app's: --chdir
    has been applied), else None."""
    if not settings.reload:
        return None
    return Reloader(os.getcwd(), settings.reload_include, settings.reload_exclude, log).start()
