"""--reload: a saved file is served within a second through the validated HUP; a syntax error
keeps the old code; the watcher idles."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import running, wait_until

pytestmark = pytest.mark.slow

APP = """VERSION = b"{version}"


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [VERSION]
"""


def body(server) -> bytes | None:
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as response:
            return response.read()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TestReload:
    def test_save_syntax_error_and_fix(self, tmp_path):
        # a tree of 5,000 files, as a real project with its templates and assets
        for folder in range(50):
            sub = tmp_path / "pkg" / f"m{folder}"
            sub.mkdir(parents=True)
            for number in range(100):
                (sub / f"f{number}.py").write_text("X = 1\n")
        source = tmp_path / "devapp.py"
        source.write_text(APP.format(version="v1"))
        with running("devapp:app", "--reload", "-w", "2", cwd=tmp_path) as server:
            server.started()
            server.wait_event("reload_watching")
            assert body(server) == b"v1"
            master = server.proc.pid
            idle_before = cpu_seconds(master)
            time.sleep(2)  # measuring idle CPU over a fixed window, not waiting for an event
            idle = (cpu_seconds(master) - idle_before) / 2
            print(f"\nmaster CPU while idle with the watcher: {idle * 100:.2f}%")
            assert idle < 0.05

            saved = time.monotonic()
            source.write_text(APP.format(version="v2"))
            wait_until(lambda: body(server) == b"v2", 15, "the new code served")
            print(f"saved to served: {(time.monotonic() - saved) * 1000:.0f} ms")
            server.wait_event("reload_complete", timeout=15)

            source.write_text(APP.format(version="v3") + "\ndef broken(:\n")
            server.wait_event("reload_failed", timeout=15)
            assert body(server) == b"v2"  # the old code goes on
            errors = server.find("app_load_failed")
            print(f"app_load_failed events for one bad save: {len(errors)}")
            assert errors and "SyntaxError" in str(errors[0])

            source.write_text(APP.format(version="v4"))
            wait_until(lambda: body(server) == b"v4", 15, "the fixed code served")

    def test_excluded_and_other_files_do_not_reload(self, tmp_path):
        (tmp_path / "devapp.py").write_text(APP.format(version="v1"))
        (tmp_path / "notes.txt").write_text("a")
        (tmp_path / ".git").mkdir()
        with running("devapp:app", "--reload", "-w", "1", cwd=tmp_path) as server:
            server.started()
            server.wait_event("reload_watching")
            (tmp_path / "notes.txt").write_text("b")  # not *.py
            (tmp_path / ".git" / "hook.py").write_text("x = 1\n")  # under an excluded folder
            (tmp_path / "marker.py").write_text("x = 1\n")  # this one reloads
            requested = server.wait_event("reload_requested", timeout=15)[0]
            assert requested["files"] == ["marker.py"], requested
