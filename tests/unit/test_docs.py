"""The docs site: reference pages generated from the declarations and kept current, a strict
MkDocs build, a README that is an introduction pointing into it (issue 35)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from greenserve.config import OPTIONS
from greenserve.hooks import HOOKS
from greenserve.metrics import catalog
from greenserve.tools import reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

pytestmark = pytest.mark.timeout(120)


class TestReferencePages:
    def test_the_committed_pages_are_what_the_declarations_give(self):
        assert reference.missing_help() == []
        assert reference.stale(DOCS) == []
        assert reference.main([str(DOCS), "--check"]) == 0

    def test_a_hand_edit_is_stale(self, tmp_path):
        shutil.copytree(DOCS / "reference", tmp_path / "reference")
        page = tmp_path / "reference" / "metrics.md"
        page.write_text(page.read_text().replace("Worker processes alive now.", "Workers."))
        (problem,) = reference.stale(tmp_path)
        assert "metrics.md is stale" in problem
        assert reference.main([str(tmp_path), "--check"]) == 1
        reference.main([str(tmp_path)])
        assert reference.stale(tmp_path) == []

    def test_a_declaration_without_help_fails(self, monkeypatch):
        bare = dataclasses.replace(OPTIONS[0], name="bare", help=" ")
        monkeypatch.setattr(reference, "OPTIONS", (*OPTIONS, bare))
        assert reference.missing_help() == ["option bare: no help text"]
        assert reference.main([str(DOCS), "--check"]) == 1

    def test_every_option_has_its_section_flag_and_variable(self):
        page = (DOCS / "reference" / "options.md").read_text()
        for option in OPTIONS:
            section = page[page.index(f"\n### {option.flag}\n") :]
            section = section[: section.index("\n### ", 1)] if "\n### " in section[1:] else section
            assert f"env `{option.env}`" in section, option.name
            assert f"file `{option.name}" in section, option.name
        for flag in ("`-c`, `--config`", "`--check-config`", "`--print-config`", "`APP`"):
            assert flag in page

    def test_the_metric_rows_are_the_catalog(self):
        """One row per family with the catalog's type and labels, parsed back from the page."""
        page = (DOCS / "reference" / "metrics.md").read_text()
        rows = {}
        for match in re.finditer(r"^\| `(greenserve_\w+)` \| (\w+) \| ([^|]*) \|", page, re.M):
            labels = tuple(re.findall(r"`(\w+)`", match.group(3).split("(")[0]))
            rows[match.group(1)] = (labels, match.group(2))
        expected = {}
        for family in catalog.FAMILIES:
            per_worker = family.stat or family in catalog.SLOT_FAMILIES
            labels = (("worker",) if per_worker else ()) + ((family.label,) if family.label else ())
            expected[family.sample] = (labels, family.kind)
        assert rows == expected

    def test_the_hook_rows_are_the_declarations(self):
        page = (DOCS / "reference" / "hooks.md").read_text()
        for hook in HOOKS:
            row = f"| `{hook.name}({', '.join(hook.args)})` | {hook.process} | {hook.when} | "
            assert row + hook.if_it_raises + " |" in page, hook.name


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
         "--site-dir", str(site)],
        capture_output=True, text=True, timeout=100, env=env,
    )  # fmt: skip


class TestSite:
    def test_the_site_builds_strictly(self, tmp_path):
        result = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "site" / "reference" / "options" / "index.html").exists()

    def test_a_broken_link_fails_the_build(self, tmp_path):
        shutil.copytree(DOCS, tmp_path / "docs")
        shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
        page = tmp_path / "docs" / "signals.md"
        page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md#nothing).\n")
        result = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
        assert result.returncode != 0
        assert "no-such-page.md" in result.stderr

    def test_every_page_is_in_the_nav(self):
        config = (ROOT / "mkdocs.yml").read_text()
        for page in DOCS.rglob("*.md"):
            assert f": {page.relative_to(DOCS)}\n" in config, page


class TestReadme:
    readme = (ROOT / "README.md").read_text()

    def test_it_is_an_introduction(self):
        assert len(self.readme.splitlines()) <= 200

    def test_its_links_into_the_docs_resolve(self):
        links = re.findall(r"\]\((docs/[^)#]+)", self.readme)
        assert len(links) >= 10
        for link in links:
            assert (ROOT / link).is_file(), link
