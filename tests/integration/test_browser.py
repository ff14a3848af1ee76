"""A real browser: headless Chromium opens a WebSocket from a page greenserve serves, sends
three messages and shows the echoes; the test reads the page's DOM over the DevTools protocol."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

from tests.helpers import STARTED_GROUPS, free_port, need, serving_http, wait_until

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def evaluate(target: str, expression: str) -> object:
    import websocket

    ws = websocket.create_connection(target, timeout=10, suppress_origin=True)
    try:
        ws.send(
            json.dumps(
                {
                    "id": 1,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression, "returnByValue": True},
                }
            )
        )
        while True:
            reply = json.loads(ws.recv())
            if reply.get("id") == 1:
                return reply["result"]["result"].get("value")
    finally:
        ws.close()


def page_target(devtools: int) -> str:
    """The DevTools WebSocket address of the browser's page, once it has one."""

    def found() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json", timeout=2) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
        except OSError:
            return None
        return pages[0]["webSocketDebuggerUrl"] if pages else None

    return wait_until(found, 30, "Chromium's DevTools page target", step=0.2)


def test_chromium_echoes_through_a_websocket(tmp_path):
    chromium = need("chromium")
    with serving_http("ws_apps:browser_page") as server:
        server.started()
        host, port = server.address
        devtools = free_port()
        browser = subprocess.Popen(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--remote-debugging-port={devtools}",
                f"http://{host}:{port}/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        STARTED_GROUPS.append(browser.pid)
        try:
            target = page_target(devtools)
            title = wait_until(
                lambda: (lambda t: t if t in ("done", "error") else None)(
                    evaluate(target, "document.title")
                ),
                30,
                "the page to finish its exchange",
                step=0.2,
            )
            assert title == "done"
            items = evaluate(
                target, "[...document.querySelectorAll('#log li')].map(li => li.textContent)"
            )
            assert items == ["echo: one", "echo: two", "echo: caf\u00e9"]
        finally:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(10)
