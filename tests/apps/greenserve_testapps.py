"""Handlers used by the integration tests (run with this directory as the working directory)."""

from __future__ import annotations

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
