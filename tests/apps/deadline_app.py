"""WSGI views for --request-timeout and request ids (tests/integration/test_deadlines.py)."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qs

from flask import Flask

log = logging.getLogger("deadline_app")


def app(environ: dict, start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    query = parse_qs(environ["QUERY_STRING"])
    seconds = float(query.get("s", ["0"])[0])
    text = [("Content-Type", "text/plain")]
    if path == "/sleep":  # waits cooperatively (time.sleep is patched)
        try:
            time.sleep(seconds)
        finally:
            log.warning("finally ran for %s", environ["greenserve.request_id"])
        start_response("200 OK", text)
        return [b"slept"]
    if path == "/stall":  # the response starts, then the app stalls
        start_response("200 OK", text)

        def body() -> Any:
            yield b"first chunk\n"
            time.sleep(seconds)
            yield b"never sent\n"

        return body()
    if path == "/swallow":  # catches the timeout and goes on waiting
        try:
            time.sleep(seconds)
        except BaseException:
            log.warning("swallowed the timeout")
            time.sleep(seconds)
        start_response("200 OK", text)
        return [b"swallowed"]
    if path == "/log":  # the app logs the id it was given; the log line must carry the same
        log.info("app sees %s", environ["greenserve.request_id"])
        time.sleep(seconds)
        log.info("app still sees %s", environ["greenserve.request_id"])
        start_response("200 OK", text)
        return [environ["greenserve.request_id"].encode()]
    if path == "/print":
        print("printed by the app")
        start_response("200 OK", text)
        return [b"printed"]
    start_response("200 OK", text)
    return [b"fast"]


flask_app = Flask(__name__)


@flask_app.get("/sleep")
def flask_sleep() -> str:
    try:
        time.sleep(5)
    finally:
        log.warning("flask finally ran")
    return "slept"


@flask_app.get("/fail")
def flask_fail() -> str:
    raise RuntimeError("flask view failed")


@flask_app.get("/asyncio")
def flask_asyncio() -> dict:
    """A sync Flask view that runs a coroutine with asyncio.run."""
    import asyncio

    async def many() -> int:
        await asyncio.gather(*(asyncio.sleep(0.05) for _ in range(20)))
        return 20

    return {"slept": asyncio.run(many())}
