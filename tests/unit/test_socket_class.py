"""gevent's socket class without its __getattr__ hook (greenserve.worker.socket_class): every
attribute it forwarded is still there, and a missing one still raises (the worker's own use:
tests/integration/test_http.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import ROOT

CHECK = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    from gevent import socket as gsocket
    from greenserve.worker import socket_class

    cls = gsocket.socket
    sock = cls()
    real = sock._sock
    names = [n for n in dir(type(real)) if not n.startswith("__")]
    before = {n: getattr(sock, n) for n in names}
    served = socket_class.install()
    assert "__getattr__" not in cls.__dict__ and not hasattr(cls, "__getattr__")
    assert socket_class.install() == []  # once only
    for name in names:  # what each name gave before, it gives now
        now, then = getattr(sock, name), before[name]
        if callable(then):
            assert getattr(now, "__name__", None) == getattr(then, "__name__", None), name
        else:
            assert now == then, name
    for name in served:  # a property reading the real socket's attribute
        assert isinstance(cls.__dict__[name], property)
        assert getattr(sock, name) == getattr(real, name), name
    try:
        sock.no_such_attribute
    except AttributeError as exc:
        assert "no_such_attribute" in str(exc)
    else:
        raise AssertionError("a missing attribute must raise")
    sock.close()
    print(sorted(served))
    """
)


def test_every_forwarded_name_stays_reachable_without_the_hook() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("[")
