"""asyncio inside sync views under gevent: Django's async_to_sync and Flask's asyncio.run,
many at once in one worker (islands.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import serving_http

pytestmark = pytest.mark.slow

REQUESTS = 1000  # per app; the benchmark note gives 10,000


def hammer(url: str, count: int, concurrency: int = 50) -> list[str]:
    """``count`` GETs, ``concurrency`` at a time; the failures (status or error) it saw."""

    def one(_: int) -> str | None:
        try:
            response = requests.get(url, timeout=30)
        except requests.RequestException as exc:
            return repr(exc)
        return (
            None if response.status_code == 200 else f"{response.status_code} {response.text[:200]}"
        )

    with ThreadPoolExecutor(concurrency) as pool:
        return [failure for failure in pool.map(one, range(count)) if failure]


class TestIslands:
    def test_django_async_to_sync_then_the_database(self):
        with serving_http(
            "fw_django.wsgi:application", "--asyncio-threads", "32", workers=1
        ) as server:
            server.started()
            host, port = server.address
            assert requests.get(f"http://{host}:{port}/island", timeout=10).json() == {
                "slept": 200,
                "db": 1,
            }
            failures = hammer(f"http://{host}:{port}/island", REQUESTS)
            assert failures == [], failures[:3]
            assert not server.find("Internal Server Error: /island")

    def test_flask_asyncio_run(self):
        with serving_http("deadline_app:flask_app", "--asyncio-threads", "32", workers=1) as server:
            server.started()
            host, port = server.address
            failures = hammer(f"http://{host}:{port}/asyncio", REQUESTS)
            assert failures == [], failures[:3]
