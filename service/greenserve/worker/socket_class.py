"""gevent's socket class without its ``__getattr__``, in a worker.

gevent's ``socket`` defines ``__getattr__`` to hand any attribute it lacks to the real socket
beneath (``_sock``). A class with ``__getattr__`` anywhere in its MRO gets CPython's
``slot_tp_getattr_hook`` for every attribute read, found or not, and CPython 3.11 does not
specialise ``LOAD_ATTR`` on such a type: every ``sock.rx``, ``sock._sock``, ``sock.out`` and
phase field read of a connection's ``CountingSocket`` took the slow generic path. Counted with
callgrind in one worker serving hello over keep-alive (tests/bench/tracing.py's method, 20,000
requests): 69,055 instructions a request with the hook, 62,813 without it (-9%).

The forwarding it did is kept, statically: each public name of the real socket class that
gevent's class does not define itself (on gevent 26.9 and Linux, only ``sendmsg_afalg``) becomes
a property that reads it from ``_sock``, as ``__getattr__`` would have. A name neither has
raises AttributeError, as before. The change is made once per worker, after monkey-patching,
and applies to every gevent socket of that process, the app's included.
"""

from __future__ import annotations

import socket
from typing import Any

from gevent import socket as gsocket


def _forwarded(name: str) -> property:
    def read(self: Any) -> Any:
        return getattr(self._sock, name)

    return property(read, doc=f"``{name}`` of the real socket beneath, as __getattr__ gave it")


def install() -> list[str]:
    """Replace gevent's ``socket.__getattr__`` by a property per name it served; the names
    (none when it is gone already, or gevent's class no longer has it)."""
    cls = gsocket.socket
    if "__getattr__" not in cls.__dict__:
        return []
    real = getattr(cls, "_gevent_sock_class", None) or socket.socket  # what _sock is
    served = [
        name
        for name in dir(real)
        if not name.startswith("__") and not any(name in k.__dict__ for k in cls.__mro__)
    ]
    for name in served:
        setattr(cls, name, _forwarded(name))
    del cls.__getattr__
    return served
