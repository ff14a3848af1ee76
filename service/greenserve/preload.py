"""Imported only by the multiprocessing forkserver (the master's ``PRELOAD``).

It loads a worker's heavy imports (gevent, structlog, the worker module) once, so that every worker
forked from the forkserver starts warm, and names the process so ``ps`` tells what it is. The
worker module patches nothing at import, so the forkserver itself stays unpatched.
"""

from setproctitle import setproctitle

import greenserve.worker  # noqa: F401 - imported for its side effect: a warm forkserver

setproctitle("greenserve: forkserver")
