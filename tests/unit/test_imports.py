"""The package's import rules: no cycle among its modules, gevent only on the worker side."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "service" / "greenserve"
WORKER_SIDE = "worker"  # the package whose modules may import gevent: greenserve/worker/


def top_level_imports() -> dict[str, set[str]]:
    """Module -> the modules it imports at import time (not inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        name = name.removesuffix(".__init__") if name != "__init__" else "__init__"
        imported: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                if node.module == "greenserve":
                    imported |= {f"greenserve.{alias.name}" for alias in node.names}
        graph[name] = imported
    return graph


class TestImports:
    """What the layout promises, checked on every run."""

    def test_no_cycle(self):
        graph = {
            name: {i.removeprefix("greenserve.") for i in imports if i.startswith("greenserve.")}
            for name, imports in top_level_imports().items()
        }
        visiting: set[str] = set()
        done: set[str] = set()

        def visit(name: str, path: list[str]) -> None:
            if name in done or name not in graph:
                return
            assert name not in visiting, "import cycle: " + " -> ".join([*path, name])
            visiting.add(name)
            for other in graph[name]:
                visit(other, [*path, name])
            visiting.discard(name)
            done.add(name)

        for name in graph:
            visit(name, [])

    def test_gevent_only_on_the_worker_side(self):
        for name, imports in top_level_imports().items():
            if any(i == "gevent" or i.startswith("gevent.") for i in imports):
                assert name.split(".")[0] == WORKER_SIDE, f"{name} imports gevent"

    def test_master_side_modules_load_without_gevent(self):
        import subprocess
        import sys

        code = (
            "import sys, greenserve.master.master, greenserve.metrics.metrics, greenserve.cli, "
            "greenserve.tools.top; print('gevent' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert out.stdout.strip() == "False"


def test_master_stays_readable_in_one_sitting():
    """The master's loop and handlers fit under 400 lines; decisions live elsewhere."""
    lines = (PACKAGE / "master" / "master.py").read_text().count("\n")
    assert lines < 400, f"master.py has {lines} lines"


def test_slot_table_has_no_side_effects():
    """slots.py decides; it must not signal, log or read the clock itself."""
    imports = top_level_imports()["master.slots"]
    assert not imports & {"os", "signal", "time", "logging", "structlog", "greenserve.logs"}


def test_no_protocol_module_grows_past_600_lines():
    """A protocol module that long is doing two things: split it by responsibility."""
    protocols = PACKAGE / "worker" / "protocols"
    sizes = {p.name: len(p.read_text().splitlines()) for p in protocols.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 600} == {}
