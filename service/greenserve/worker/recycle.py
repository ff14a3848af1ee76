"""When a worker asks to be replaced: --max-requests, --max-worker-rss, --max-worker-lifetime.

The worker only asks; the master replaces one worker at a time through the hand-over (the
successor accepts before this one stops), so a recycle never leaves a slot empty and no request
is lost. The first reason found is the one reported: it labels ``worker_restarts_total``.
"""

from __future__ import annotations

import random

from greenserve.config import Settings

MIB = 1 << 20


class Recycle:
    def __init__(
        self, settings: Settings, started: float, rng: random.Random | None = None
    ) -> None:
        """``started``: the worker's start on the monotonic clock."""
        rng = rng or random.Random()
        requests = settings.max_requests
        self.requests_at = (
            requests + rng.randint(0, settings.max_requests_jitter) if requests else 0
        )
        lifetime = settings.max_worker_lifetime
        # jitter spreads the workers of one start over time: they do not all come due together
        jitter = rng.uniform(0, settings.max_worker_lifetime_jitter) if lifetime else 0.0
        self.lifetime_at = started + lifetime + jitter if lifetime else 0.0
        self.rss_cap = settings.max_worker_rss * MIB
        self.rss_samples = settings.rss_samples
        self.over_cap = 0  # consecutive samples above the cap
        self.reason = ""  # set once: the worker asked

    def check(self, served: int, now: float) -> str:
        """The reason to ask now ("max_requests", "lifetime"), or "" (also once asked)."""
        if self.reason:
            return ""
        if self.requests_at and served >= self.requests_at:
            self.reason = "max_requests"
        elif self.lifetime_at and now >= self.lifetime_at:
            self.reason = "lifetime"
        return self.reason

    def sample_rss(self, rss: int) -> str:
        """One RSS sample (one per stats interval): "rss" once the cap was passed in
        ``rss_samples`` consecutive samples, else "" (also once asked). One sample back
        under the cap starts the count again: a spike is not a leak."""
        if not self.rss_cap or self.reason:
            return ""
        self.over_cap = self.over_cap + 1 if rss > self.rss_cap else 0
        if self.over_cap >= self.rss_samples:
            self.reason = "rss"
        return self.reason
