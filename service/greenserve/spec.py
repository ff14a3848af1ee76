"""The master-worker contract, stdlib only: exit codes, the stack signal, what a worker starts with.

Both sides import this module and nothing of each other: the master never imports the worker's
modules (they import gevent), and the worker learns everything it needs from ``WorkerSpec``.
"""

from __future__ import annotations

import signal
import socket
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from greenserve.config import Settings

# Exit codes of the greenserve command (the contract operators and supervisors rely on).
EXIT_OK = 0
EXIT_RUNTIME = 1  # also a worker that crashed
EXIT_USAGE = 2  # a bad option or config value, before anything binds
EXIT_APP_LOAD = 3  # the app cannot be loaded: the master halts instead of restarting workers

STACK_SIGNAL = signal.SIGUSR2  # the master asks a stuck worker for its stacks with this


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with; pickled to the forkserver child."""

    slot: int
    generation: int
    settings: Settings
    listeners: tuple[socket.socket, ...]  # one per --bind (the slot's own with --reuse-port)
    stats_queue: Any
    heartbeat: Any
    master_alive: Connection
    stack_file: str  # faulthandler writes the worker's stacks here when the master asks
    load: Any  # shared array: each slot's open connections, the slot count, the drain flag
    master_pid: int  # the server hooks' server.pid (the worker's parent is the forkserver)
