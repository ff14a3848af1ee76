"""An app that waits 50 ms on a "backend" (a cooperative sleep under gevent, a blocking one in a
thread elsewhere): the I/O-bound case where a greenlet per connection should shine."""

from __future__ import annotations

import time
from typing import Any


def app(environ: dict, start_response: Any) -> list[bytes]:
    time.sleep(0.05)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"done\n"]
