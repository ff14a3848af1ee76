"""systemd's service protocol from the master: sd_notify and socket activation, stdlib only.

sd_notify is one datagram to ``$NOTIFY_SOCKET`` per state change (``READY=1``, ``RELOADING=1``,
``STOPPING=1``, ``STATUS=...``, ``WATCHDOG=1``, ``MAINPID=...``); no library is needed for that.
Socket activation hands listening sockets as file descriptors 3.. with ``LISTEN_FDS`` and
``LISTEN_PID`` (the fds are this process's only when ``LISTEN_PID`` is its pid).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import MutableMapping

LISTEN_FDS_START = 3


class Notifier:
    """Sends sd_notify messages when systemd (or a test) asked for them; otherwise does nothing.

    Never raises: a notification that cannot be sent must not disturb serving.
    """

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        address = environ.pop("NOTIFY_SOCKET", "")
        self.given = address  # as systemd wrote it, for a child that reports too (USR2)
        if address.startswith("@"):  # the abstract namespace
            address = "\0" + address[1:]
        self.address = address
        self.sock: socket.socket | None = None
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
        self.watchdog_interval = _watchdog_interval(environ)
        self.last_ping = 0.0
        self.ready_sent = False

    def child_environ(self) -> dict[str, str]:
        """NOTIFY_SOCKET for a process that must report to systemd as well (a new master)."""
        return {"NOTIFY_SOCKET": self.given} if self.given else {}

    def send(self, *fields: str) -> None:
        if self.sock is None:
            return
        with contextlib.suppress(OSError):  # systemd gone or the socket full: serving goes on
            self.sock.sendto("\n".join(fields).encode(), self.address)

    def ready(self, status: str) -> None:
        self.ready_sent = True
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def main_pid(self, pid: int) -> None:
        self.send(f"MAINPID={pid}")

    def ping(self, now: float) -> None:
        """WATCHDOG=1 at half the interval systemd asked for; called from the master's loop only,
        so a frozen loop stops the pings and systemd's watchdog fires."""
        if self.watchdog_interval and now - self.last_ping >= self.watchdog_interval / 2:
            self.last_ping = now
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _watchdog_interval(environ: MutableMapping[str, str]) -> float:
    usec = environ.pop("WATCHDOG_USEC", "")
    pid = environ.pop("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 1_000_000


def activated_fds(environ: MutableMapping[str, str]) -> list[int]:
    """The listening fds systemd passed to this process (and the variables removed, so that no
    child process takes them for its own)."""
    count = environ.pop("LISTEN_FDS", "")
    pid = environ.pop("LISTEN_PID", "")
    environ.pop("LISTEN_FDNAMES", None)
    if not count.isdigit() or pid != str(os.getpid()):
        return []
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
