"""Imported only by the multiprocessing forkserver (the master's ``PRELOAD``).

It loads a worker's heavy imports (gevent, structlog, the worker module) once, so that every worker
forked from the forkserver starts warm, and names the process so ``ps`` tells what it is. The
worker module patches nothing at import, so the forkserver itself stays unpatched.

Process managers signal the whole process group (supervisord's ``stopasgroup``, a terminal's
Ctrl-C, ``kill -TERM -PGID``). A forkserver killed by such a TERM would take every worker with it
(they die with their parent), cutting the master's graceful drain short; so it ignores the
operator signals and exits only when the master does (PR_SET_PDEATHSIG, and end of file on its
alive pipe). Workers
set their own handlers for the signals they act on.
"""

import signal

# The app's prometheus_client, imported here, before a worker patches threading: the locks it
# takes per call (labels()'s, and each value's where greenserve._appvalue is not built, see
# metrics/appvalue.py) are then thread locks instead of gevent's (a Counter.inc() under a
# MutexValue: 330 ns against 600 ns). That is safe: nothing inside can switch greenlets while
# the lock is held, and real threads still exclude each other.
import prometheus_client  # noqa: F401
from setproctitle import setproctitle

import greenserve.worker.worker  # noqa: F401 - imported for its side effect: a warm forkserver
from greenserve.worker.boot import die_with_parent

# The forkserver dies with the master (and its workers with it) without waiting to read end of
# file on its alive pipe: a supervisord test caught old workers still holding the port seconds
# after their master was SIGKILLed.
die_with_parent()

for _signum in (
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
):
    signal.signal(_signum, signal.SIG_IGN)

setproctitle("greenserve: forkserver")
