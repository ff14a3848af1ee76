"""The docs site: reference pages generated from the declarations and kept current, a strict
MkDocs build, a README that is an introduction pointing into it."""

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
    """A strict build of the project at ``config``'s directory (snippets resolve from there)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
         "--site-dir", str(site)],
        capture_output=True, text=True, timeout=100, env=env, cwd=config.parent,
    )  # fmt: skip


class TestSite:
    def test_the_site_builds_strictly(self, tmp_path):
        result = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "site" / "reference" / "options" / "index.html").exists()

    def test_a_broken_link_fails_the_build(self, tmp_path):
        shutil.copytree(DOCS, tmp_path / "docs")
        for name in ("mkdocs.yml", "CHANGELOG.md"):
            shutil.copy(ROOT / name, tmp_path / name)
        page = tmp_path / "docs" / "signals.md"
        page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md#nothing).\n")
        result = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
        assert result.returncode != 0
        assert "no-such-page.md" in result.stderr

    def test_every_page_is_in_the_nav(self):
        config = (ROOT / "mkdocs.yml").read_text()
        for page in DOCS.rglob("*.md"):
            assert f": {page.relative_to(DOCS)}\n" in config, page

    def test_the_changelog_keeps_a_changelog(self):
        """Keep a Changelog's shape: Unreleased first, then versions with dates, known
        sections only."""
        text = (ROOT / "CHANGELOG.md").read_text()
        versions = re.findall(r"^## \[([^\]]+)\](.*)$", text, re.M)
        assert versions[0] == ("Unreleased", "")
        for version, date in versions[1:]:
            assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
            assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", date), date
        sections = set(re.findall(r"^### (.+)$", text, re.M))
        assert sections <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


class TestReadme:
    readme = (ROOT / "README.md").read_text()

    def test_it_is_an_introduction(self):
        assert len(self.readme.splitlines()) <= 200

    def test_its_links_into_the_docs_resolve(self):
        links = re.findall(r"\]\((docs/[^)#]+)", self.readme)
        assert len(links) >= 10
        for link in links:
            assert (ROOT / link).is_file(), link


def test_no_text_speaks_of_work_rounds_or_our_issue_numbers():
    """Documents and comments say what is, not which round of work made it; other projects'
    issues (gunicorn #1494) are citations and stay."""
    pattern = re.compile(
        r"\b[Ii]ssues? #?\d+|\(#\d+\)|\b(?:the|since|in|our) #\d+|\b(?:this|last|that) round\b"
        r"|\bwave (?:one|two|three)\b",
        re.I,
    )
    roots = ["docs", "service", "tests", "config", "deploy"]
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml"]
    for root in roots:
        files += [
            p
            for p in (ROOT / root).rglob("*")
            if p.suffix
            in {
                ".md",
                ".py",
                ".c",
                ".toml",
                ".yml",
                ".yaml",
                ".conf",
                ".service",
                ".socket",
                ".cfg",
            }
        ]
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
