"""Suite-wide guard: no greenserve process started by a test outlives the suite."""

from __future__ import annotations

import time

import pytest

from tests.helpers import STARTED_GROUPS, group_alive


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes():
    yield
    deadline = time.monotonic() + 5
    leftovers = []
    while time.monotonic() < deadline:
        leftovers = [(pgid, group_alive(pgid)) for pgid in STARTED_GROUPS if group_alive(pgid)]
        if not leftovers:
            return
        time.sleep(0.05)
    pytest.fail(f"greenserve processes left after the suite: {leftovers}")
