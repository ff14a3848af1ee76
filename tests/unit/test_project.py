"""Project hygiene that CI must enforce: lint, documented settings, README commands."""

from __future__ import annotations

import subprocess
import sys

from greenserve.config import OPTIONS, load
from tests.helpers import ROOT


class TestProject:
    """The repository keeps its own promises."""

    def test_ruff_is_clean(self):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--quiet", str(ROOT)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_mypy_is_clean(self):
        """The package type-checks as pyproject.toml's [tool.mypy] says (.ci/run runs it too)."""
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--no-error-summary"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=110,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_config_file_documents_every_setting_with_its_default(self):
        path = ROOT / "config" / "greenserve.toml"
        text = path.read_text()
        for option in OPTIONS:
            assert f"\n{option.name} = " in text, option.name
        assert load(["--config", str(path)], {}) == load([], {}).with_changes(config=str(path))

    def test_ci_runs_the_readme_test_command(self):
        readme = (ROOT / "README.md").read_text()
        ci = (ROOT / ".ci" / "run").read_text()
        command = "pip install -e '.[test]' && python -m pytest"
        assert command in readme
        assert command in ci
