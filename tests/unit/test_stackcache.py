"""Freed frame stack chunks kept for the next greenlet (greenserve._stackcache, stackcache.py).

Each check runs in its own interpreter: the cache is an allocator for the whole process, which
this test process should not take on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from greenserve.worker import stackcache
from tests.helpers import ROOT

needs_build = pytest.mark.skipif(
    stackcache.stats() is None and os.environ.get("CI") != "true",
    reason="greenserve._stackcache is not built (no compiler at install)",
)


def _python(code: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_build
def test_greenlets_one_after_another_reuse_one_chunk():
    result = _python(
        """
        import json
        import gevent
        from greenserve.worker import stackcache

        def work(n):
            return sum(range(n))

        installed = stackcache.install()
        before = stackcache.stats()["reused"]
        values = [gevent.spawn(work, n).get() for n in range(300)]
        after = stackcache.stats()
        ok = values == [sum(range(n)) for n in range(300)]
        print(json.dumps({"installed": installed, "reused": after["reused"] - before,
                          "kept": after["kept"], "ok": ok}))
        """
    )
    assert result["installed"] and result["ok"]
    assert result["reused"] >= 290  # each new greenlet took the chunk the last one left
    assert 1 <= result["kept"] <= 128


@needs_build
def test_many_at_once_deep_stacks_and_the_bound():
    """More greenlets alive than chunks kept, some deep enough for bigger chunks (which are not
    kept): every result right, and no more than 128 chunks kept afterwards."""
    result = _python(
        """
        import json
        import gevent
        from greenserve.worker import stackcache

        def deep(n):
            return n if n == 0 else 1 + deep(n - 1)

        def work(i):
            gevent.sleep(0)
            return deep(400 if i % 7 == 0 else 5) + i

        stackcache.install()
        for _ in range(3):
            greenlets = [gevent.spawn(work, i) for i in range(500)]
            gevent.joinall(greenlets, timeout=60)
            expected = [(400 if i % 7 == 0 else 5) + i for i in range(500)]
            ok = [g.value for g in greenlets] == expected
            if not ok:
                break
        stats = stackcache.stats()
        print(json.dumps({"ok": ok, "kept": stats["kept"], "reused": stats["reused"]}))
        """
    )
    assert result["ok"]
    assert result["kept"] == 128
    assert result["reused"] >= 128


def test_turned_off_it_is_not_installed():
    result = _python(
        """
        import json
        from greenserve.worker import stackcache
        print(json.dumps({"installed": stackcache.install(), "stats": stackcache.stats()}))
        """,
        GREENSERVE_NO_EXTENSIONS="1",
    )
    assert result == {"installed": False, "stats": None}
