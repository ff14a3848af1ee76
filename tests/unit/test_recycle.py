"""When a worker asks to be replaced: by requests served, by age, by resident memory."""

from __future__ import annotations

import random

import pytest

from greenserve.config import ConfigError, load
from greenserve.worker.recycle import MIB, Recycle


def policy(*flags: str, started: float = 100.0, seed: int = 1) -> Recycle:
    return Recycle(load(list(flags), {}), started, random.Random(seed))


def test_off_by_default() -> None:
    recycle = policy()
    assert recycle.check(10**9, 10**9) == "" and recycle.sample_rss(1 << 40) == ""


def test_max_requests_with_jitter() -> None:
    recycle = policy("--max-requests", "10", "--max-requests-jitter", "5")
    assert 10 <= recycle.requests_at <= 15
    assert recycle.check(recycle.requests_at - 1, 0) == ""
    assert recycle.check(recycle.requests_at, 0) == "max_requests"
    assert recycle.check(recycle.requests_at + 1, 0) == ""  # asked once


def test_lifetime_counts_from_the_start_plus_jitter() -> None:
    due = [policy("--max-worker-lifetime", "60", "--max-worker-lifetime-jitter", "30",
                  seed=seed).lifetime_at for seed in range(20)]  # fmt: skip
    assert all(160 <= at <= 190 for at in due) and len(set(due)) > 1  # spread, not together
    recycle = policy("--max-worker-lifetime", "60")
    assert recycle.check(0, 159.9) == ""
    assert recycle.check(0, 160.0) == "lifetime"


def test_rss_needs_consecutive_samples_above_the_cap() -> None:
    recycle = policy("--max-worker-rss", "100", "--rss-samples", "3")
    above, below = 101 * MIB, 99 * MIB
    for rss in (above, above, below, above, above):  # a dip starts the count again
        assert recycle.sample_rss(rss) == ""
    assert recycle.sample_rss(above) == "rss"
    assert recycle.sample_rss(above) == ""  # asked once
    assert recycle.check(10**9, 10**9) == ""  # and nothing else is reported after it


def test_bad_values_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"rss.samples"):
        load(["--rss-samples", "0"], {})
    with pytest.raises(ConfigError, match=r"max.worker.rss"):
        load(["--max-worker-rss", "-1"], {})
