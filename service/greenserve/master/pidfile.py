"""The master's pid file: written atomically, handed over on a binary upgrade, removed on exit.

During a USR2 upgrade the old master moves its file to ``<pid file>.oldbin`` (gunicorn's name),
the new master writes the pid file once it starts, and the old file goes with the old master. A
failed upgrade moves the old file back.
"""

from __future__ import annotations

import contextlib
import os


class PidFile:
    """One master's pid file (``path`` None: none was asked for)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def write(self) -> None:
        if self.path is None:
            return
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        os.replace(temporary, self.path)  # atomic: a reader never sees a half-written file

    def set_aside(self) -> None:
        """An upgrade starts: the file becomes ``.oldbin`` so that the new master can write."""
        if self.path is not None and self._owned(self.path):
            os.replace(self.path, self.path + ".oldbin")

    def restore(self) -> None:
        """An upgrade failed: this master is current again."""
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path + ".oldbin")
        self.write()

    def remove(self) -> None:
        if self.path is None:
            return
        for path in (self.path, self.path + ".oldbin"):
            if self._owned(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    @staticmethod
    def _owned(path: str) -> bool:
        """Whether ``path`` names this process (another master may own it now)."""
        try:
            with open(path) as handle:
                return int(handle.read().strip()) == os.getpid()
        except (OSError, ValueError):
            return False
