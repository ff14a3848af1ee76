"""How long a request waited before the app: ``X-Request-Start`` as proxies send it.

Heroku's router and New Relic's convention: ``t=`` (or a bare number) in microseconds,
milliseconds or seconds since the epoch, told apart by magnitude (nginx's ``t=${msec}`` gives
seconds with a fraction). Pure: the caller passes the wall clock.
"""

from __future__ import annotations

import time

# A proxy's clock a little ahead of ours is skew, not a future request: read as no wait.
SKEW = 1.0

_MICROSECONDS = 1e14  # above this, the number counts microseconds (until the year 5138)
_MILLISECONDS = 1e11  # above this, milliseconds; below, seconds


def waited(header: str, now: float) -> float | str:
    """Seconds between the proxy's ``X-Request-Start`` and ``now`` (both Unix time), or why it
    is ignored: ``"malformed"`` or ``"future"``."""
    text = header.strip()
    if text[:2] in ("t=", "T="):
        text = text[2:]
    try:
        number = float(text)
    except ValueError:
        return "malformed"
    if not number > 0 or number == float("inf"):
        return "malformed"
    if number > _MICROSECONDS:
        started = number / 1e6
    elif number > _MILLISECONDS:
        started = number / 1e3
    else:
        started = number
    wait = now - started
    if wait < -SKEW:
        return "future"
    return max(wait, 0.0)


def queue_wait(
    header: str | None, trusted: bool, ignored: dict[str, int], accepted_at: float | None
) -> float | None:
    """Seconds a request waited before the app, or None when it is not known: a trusted
    proxy's ``X-Request-Start``, else the time since ``accepted_at`` (given for a connection's
    first request). A header not used is counted in ``ignored`` by reason; only a peer in
    --forwarded-allow-ips is believed (anyone can send one)."""
    if header is not None:
        reason = "untrusted"
        if trusted:
            wait = waited(header, time.time())
            if isinstance(wait, float):
                return wait
            reason = wait
        ignored[reason] = ignored.get(reason, 0) + 1
    if accepted_at is not None:
        return time.monotonic() - accepted_at
    return None
