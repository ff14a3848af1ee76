"""Freed frame stack chunks kept for the next greenlet (greenserve._stackcache, C).

Each greenlet that runs Python maps a 16 KiB chunk of CPython's frame data stack and unmaps it
when it ends; a worker makes greenlets per HTTP/2 stream and per connection beyond those kept
(protocols/runners.py). The extension keeps freed chunks (at most 128) and hands them out again:
``gevent.spawn`` + ``join`` of a small function went from 13.7 to 5.5 us. Without the extension
(not built, or ``GREENSERVE_NO_EXTENSIONS=1``) chunks are mapped and unmapped as before.
"""

from __future__ import annotations

from greenserve import extensions

# The extension's interface version this module expects (STACKCACHE_ABI in _stackcache.c).
STACKCACHE_ABI = 1


def install() -> bool:
    """Keep freed chunks from now on in this process; True if the extension is in use."""
    module = extensions.load("_stackcache", STACKCACHE_ABI)
    if module is None:
        return False
    module.install()
    return True


def stats() -> dict[str, int] | None:
    """``{'installed', 'kept', 'reused'}``, or None without the extension."""
    module = extensions.load("_stackcache", STACKCACHE_ABI)
    return None if module is None else module.stats()
