"""Handlers used by the integration tests (run with this directory as the working directory)."""

from __future__ import annotations

import itertools
import time
from typing import Any


def slow_echo(sock: Any, address: Any) -> None:
    """Wait one second (cooperatively: time.sleep is patched), then echo one message."""
    data = sock.recv(65536)
    time.sleep(1.0)
    sock.sendall(data)


def fail_on_boom(sock: Any, address: Any) -> None:
    """Echo lines; a line 'boom' raises, which must close only this connection."""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        if data.strip() == b"boom":
            raise RuntimeError("boom requested by the client")
        sock.sendall(data)


not_callable = 42


def never_reads(sock: Any, address: Any) -> None:
    """Ignore the connection entirely: only the idle sweeper can end it."""
    while True:
        time.sleep(1)


def environ_echo(environ: dict, start_response: Any) -> list[bytes]:
    """WSGI: answer with the parts of the environ the conformance corpus checks, as JSON."""
    import json

    body = environ["wsgi.input"].read()
    shown = {
        key: value
        for key, value in environ.items()
        if key.startswith("HTTP_")
        or key
        in (
            "REQUEST_METHOD",
            "PATH_INFO",
            "QUERY_STRING",
            "CONTENT_TYPE",
            "CONTENT_LENGTH",
            "SERVER_PROTOCOL",
            "SCRIPT_NAME",
        )
    }
    shown["body"] = body.decode("latin-1")
    payload = json.dumps(shown).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    )
    return [payload]


def _plain(environ: dict, start_response: Any) -> Any:
    """A small app that exercises input, write() and an iterable result."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"got ")
    return [str(len(body)).encode(), b" bytes"]


def _make_validated() -> Any:
    from wsgiref.validate import validator

    return validator(_plain)


validated = _make_validated()


def _framing(environ: dict, start_response: Any) -> Any:
    """The response-framing cases as a PEP 3333 app should write them."""
    path = environ["PATH_INFO"]
    if path == "/204":
        start_response("204 No Content", [])
        return []
    if path == "/304":
        start_response("304 Not Modified", [("ETag", '"v1"')])
        return []
    if path == "/length":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    return _plain(environ, start_response)


def _make_validated_framing() -> Any:
    from wsgiref.validate import validator

    return validator(_framing)


validated_framing = _make_validated_framing()


def streamed(environ: dict, start_response: Any) -> Any:
    """2 MB in 64 KiB chunks with no Content-Length (chunked on HTTP/1.1)."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return (bytes([n % 256]) * 65536 for n in range(32))


def upload_size(environ: dict, start_response: Any) -> list[bytes]:
    """Read the body in pieces with read(n) and readline, and report its size and checksum."""
    import hashlib

    stream = environ["wsgi.input"]
    digest, total = hashlib.sha256(), 0
    first = stream.readline(100)
    digest.update(first)
    total += len(first)
    while True:
        block = stream.read(7000)
        if not block:
            break
        digest.update(block)
        total += len(block)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{total} {digest.hexdigest()}".encode()]


def raises(environ: dict, start_response: Any) -> Any:
    """/before raises before start_response; /after raises after the first chunk went out."""
    if environ["PATH_INFO"] == "/before":
        raise RuntimeError("app failed before responding")

    def body() -> Any:
        yield b"x" * 100000
        raise RuntimeError("app failed mid-body")

    start_response("200 OK", [("Content-Type", "text/plain")])
    return body()


def slow_hello(environ: dict, start_response: Any) -> list[bytes]:
    """Answer after one second (cooperatively)."""
    time.sleep(1.0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slow done"]


def send_file(environ: dict, start_response: Any) -> Any:
    """Serve this module's own source through wsgi.file_wrapper."""
    handle = open(__file__, "rb")  # noqa: SIM115 - closed by the server through the wrapper
    start_response("200 OK", [("Content-Type", "text/x-python")])
    return environ["wsgi.file_wrapper"](handle)


def spin_on_demand(sock: Any, address: Any) -> None:
    """Echo; the line 'spin' burns the CPU for 30 s without yielding (a blocked loop)."""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        if data.strip() == b"spin":
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pass
        if data.strip() == b"block":
            _blocking_call(0.5)
        sock.sendall(data)


def _blocking_call(seconds: float) -> None:
    """An unpatched blocking call, as a C extension would make: the hub cannot run."""
    import gevent.monkey

    gevent.monkey.get_original("time", "sleep")(seconds)


def conformance(environ: dict, start_response: Any) -> Any:
    """Routes that misbehave the ways real apps do; tests/http_corpus/exchanges.py drives them."""
    import io
    import json

    path = environ["PATH_INFO"]
    text = [("Content-Type", "text/plain")]
    if path == "/204":
        start_response("204 No Content", [])
        return [b"oops"]
    if path == "/304":
        start_response("304 Not Modified", [("ETag", '"v1"')])
        return [b"oops"]
    if path == "/103":
        start_response("103 Early Hints", [("Link", "</s.css>; rel=preload")])
        return [b"oops"]
    if path == "/cl-over":
        start_response("200 OK", [*text, ("Content-Length", "8")])
        return [b"abcdefghij"]
    if path == "/cl-over-write":
        write = start_response("200 OK", [*text, ("Content-Length", "8")])
        write(b"abcde")
        write(b"fghij")
        return []
    if path == "/cl-over-file":
        start_response("200 OK", [*text, ("Content-Length", "8")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"abcdefghij"))
    if path == "/cl-short":
        start_response("200 OK", [*text, ("Content-Length", "10")])
        return [b"abc"]
    if path == "/str":
        start_response("200 OK", text)
        return ["text, not bytes"]
    if path == "/bad-header-name":
        start_response("200 OK", [("Bad Name", "x")])
        return [b"never sent"]
    if path == "/bad-header-value":
        start_response("200 OK", [("X-A", "a\r\nX-Injected: 1")])
        return [b"never sent"]
    if path == "/401":  # answers without reading the body
        start_response("401 Unauthorized", text)
        return [b"denied"]
    body = environ["wsgi.input"].read()
    shown = {
        "path": path,
        "method": environ["REQUEST_METHOD"],
        "body": body.decode("latin-1"),
        "host": environ.get("HTTP_HOST"),
        "server_software": environ.get("SERVER_SOFTWARE"),
        "input_terminated": environ.get("wsgi.input_terminated"),
    }
    payload = json.dumps(shown).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [payload]


def environ_echo_tls(environ: dict, start_response: Any) -> list[bytes]:
    """The TLS part of the environ, as JSON."""
    import json

    shown = {k: environ.get(k) for k in ("wsgi.url_scheme", "SSL_CLIENT_S_DN", "SSL_CLIENT_VERIFY")}
    payload = json.dumps(shown).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [payload]


def environ_echo_remote(environ: dict, start_response: Any) -> list[bytes]:
    """What a proxy-aware app looks at, as JSON."""
    import json

    keys = (
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "wsgi.url_scheme",
        "HTTP_HOST",
        "SCRIPT_NAME",
        "PATH_INFO",
        "HTTP_X_FORWARDED_FOR",
        "HTTP_X_REQUEST_ID",
    )
    payload = json.dumps({key: environ.get(key) for key in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [payload]


def tell_address(sock: Any, address: Any) -> None:
    """TCP: answer each line with the client's address as the server sees it."""
    data = sock.recv(65536)
    sock.sendall(f"{address[0]}:{address[1]} ".encode() + data)


_served = itertools.count(1)


def busy_sequence(environ: dict, start_response: Any) -> list[bytes]:
    """Burn ``?ms=N`` ms of CPU (no yield), then answer with this worker's serving order."""
    query = dict(pair.split("=", 1) for pair in environ["QUERY_STRING"].split("&") if "=" in pair)
    end = time.perf_counter() + float(query.get("ms", "0")) / 1000
    while time.perf_counter() < end:
        pass
    body = str(next(_served)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def ambiguous(*args: Any) -> None:
    """A callable whose arguments say neither WSGI nor TCP handler (--protocol must say)."""


_leaked: list[bytes] = []


def leaky(environ: dict, start_response: Any) -> list[bytes]:
    """An app with a leak: every request keeps 1 MiB for good (written, so it is resident)."""
    _leaked.append(b"x" * (1 << 20))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"leaked %d MiB" % len(_leaked)]


def pipelined(environ: dict, start_response: Any) -> Any:
    """For pipelined batches: /sleep waits a second (cooperatively), /file is a real file sent
    with sendfile, anything else answers its path."""
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(1.0)
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [path.encode()]


_CONNECTION_VALUE: Any = None
_SERVED_BY: Any = None


def context_per_connection(environ: dict, start_response: Any) -> list[bytes]:
    """Answers how many requests its greenlet has served and what a ContextVar set by an earlier
    request holds (a connection must start in an empty context, even on a greenlet that served
    another)."""
    global _CONNECTION_VALUE, _SERVED_BY
    import contextvars
    import json
    import weakref

    import gevent

    if _CONNECTION_VALUE is None:
        _CONNECTION_VALUE = contextvars.ContextVar("connection_value")
        _SERVED_BY = weakref.WeakKeyDictionary()
    seen = _CONNECTION_VALUE.get(None)
    _CONNECTION_VALUE.set(environ["PATH_INFO"])
    me = gevent.getcurrent()
    _SERVED_BY[me] = _SERVED_BY.get(me, 0) + 1
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"served": _SERVED_BY[me], "seen": seen}).encode()]


def stack_cache(environ: dict, start_response: Any) -> list[bytes]:
    """Spawns and joins greenlets one after another, then answers the worker's frame stack
    cache figures (greenserve.worker.stackcache)."""
    import json

    import gevent

    from greenserve.worker import stackcache

    def work(n: int) -> int:  # Python code: a greenlet running only C needs no frame stack
        return sum(range(n))

    for n in range(20):
        gevent.spawn(work, n).join()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(stackcache.stats()).encode()]


def tell_nodelay(sock: Any, address: Any) -> None:
    """TCP: answer a line with whether the server's side of the connection has TCP_NODELAY."""
    import socket

    sock.recv(65536)
    if sock.family == socket.AF_UNIX:
        sock.sendall(b"unix")
    else:
        sock.sendall(b"nodelay=%d" % sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def socket_class_state(environ: dict, start_response: Any) -> list[bytes]:
    """Whether this worker's gevent sockets still have gevent's ``__getattr__`` (see
    greenserve.worker.socket_class), and a name it used to serve, read through a socket."""
    import json
    import socket

    from gevent import socket as gsocket

    with gsocket.socket() as sock:
        afalg = (
            callable(getattr(sock, "sendmsg_afalg", None))
            if hasattr(socket.socket, "sendmsg_afalg")
            else None
        )
    shown = {"hook": "__getattr__" in gsocket.socket.__dict__, "sendmsg_afalg": afalg}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(shown).encode()]
