"""A WSGI app for the HTTP/2 tests: what the request looked like, slow answers, uploads read in
pieces, large streamed bodies, early hints, and a page for a browser."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from urllib.parse import parse_qs

PAGE = b"""<!doctype html><html><head><title>loading</title></head><body>
<script>
const nav = performance.getEntriesByType("navigation")[0];
fetch("/env").then(r => r.json()).then(env => {
  document.title = nav.nextHopProtocol + " " + env.SERVER_PROTOCOL;
});
</script></body></html>"""


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    if path == "/slow":
        time.sleep(float(query.get("ms", "200")) / 1000)  # gevent-patched: a greenlet waits
    elif path == "/upload":
        body = environ["wsgi.input"]
        digest, size = hashlib.sha256(), 0
        while True:
            block = body.read(65536)
            if not block:
                break
            digest.update(block)
            size += len(block)
        return _json(
            start_response,
            {"size": size, "sha256": digest.hexdigest(), "length": environ.get("CONTENT_LENGTH")},
        )
    elif path == "/big":
        blocks = int(query.get("blocks", "160"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (bytes([i % 251]) * 65536 for i in range(blocks))
    elif path == "/hints":
        environ["wsgi.early_hints"]([("Link", "</style.css>; rel=preload; as=style")])
    elif path == "/page":
        start_response("200 OK", [("Content-Type", "text/html")])
        return [PAGE]
    elif path == "/fail":
        raise RuntimeError("the app failed on purpose")
    elif path == "/gc-off":
        gc.disable()  # what the requests after this leave in reference cycles stays for /cycles
    elif path == "/cycles":
        return _json(start_response, _cycles())
    return _json(
        start_response,
        {
            "SERVER_PROTOCOL": environ["SERVER_PROTOCOL"],
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": path,
            "QUERY_STRING": environ["QUERY_STRING"],
            "HTTP_HOST": environ.get("HTTP_HOST"),
            "HTTP_COOKIE": environ.get("HTTP_COOKIE"),
            "CONTENT_LENGTH": environ.get("CONTENT_LENGTH"),
            "url_scheme": environ["wsgi.url_scheme"],
            "request_id": environ["greenserve.request_id"],
            "pid": os.getpid(),
        },
    )


def _json(start_response, value):
    body = json.dumps(value).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def _cycles() -> dict[str, int]:
    """greenserve's objects that only the cyclic GC would free, by class."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found: dict[str, int] = {}
        for thing in gc.garbage:
            kind = f"{type(thing).__module__}.{type(thing).__qualname__}"
            if kind.startswith("greenserve."):
                found[kind] = found.get(kind, 0) + 1
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
    return found
