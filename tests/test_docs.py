"""The documentation: the mkdocs site builds without a warning, and the README stays a user's page."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# what `mkdocs build` needs beyond mkdocs itself: the theme and the API-reference plugin (the `docs` extra)
DOCS_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_modules() -> list[str]:
    missing = []
    for name in DOCS_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ModuleNotFoundError:
            missing.append(name)
    return missing


def test_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav, a docstring mkdocstrings
    cannot render or a module it cannot find fails the build, and so this test."""
    missing = _missing_docs_modules()
    if missing:
        pytest.skip(f"the docs extra is not installed (missing {', '.join(missing)}): pip install -e '.[docs]'")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    # paths in mkdocs.yml (snippets' base path, the griffe extension) are relative to the repository root
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert not warnings, "mkdocs warned:\n" + "\n".join(warnings)
    site = tmp_path / "site"
    for page in (
        "index.html",
        "api/datvit/index.html",
        "api/models/index.html",
        "api/inference/index.html",
        "api/dense/index.html",
        "api/tools/index.html",
        "api/deploy/index.html",
    ):
        assert (site / page).is_file(), page
    # the API pages are generated from the docstrings, not empty shells
    assert 'id="datvit.models.DAT"' in (site / "api/models/index.html").read_text(encoding="utf-8")
    assert 'id="datvit.inference.load_model"' in (site / "api/inference/index.html").read_text(encoding="utf-8")
    # snippets from the README made it into the home page
    assert "dat_base_384" in (site / "index.html").read_text(encoding="utf-8")


# a commit id: 7 to 40 hex digits with at least one digit and one letter, standing alone between spaces,
# backticks, brackets or punctuation (so words like "deadbeef" in prose and numbers like 1000000 do not count)
_COMMIT = re.compile(r"(?<![\w.-])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w-])")
_ISSUE = re.compile(r"\b(?:issues?|PR|pull request|stop)\s*#?\d+\b|(?<![\w&/#])#\d+\b", re.IGNORECASE)


def test_readme_is_for_users():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 350, f"README.md has {len(lines)} lines; keep it a user's page, move depth to docs/"
    commits = _COMMIT.findall(text)
    assert not commits, f"README.md names commits {commits}: history belongs in CHANGELOG.md, without hashes"
    issues = [m.group(0) for m in _ISSUE.finditer(text)]
    assert not issues, f"README.md refers to issues/stops {issues}: describe what the software does instead"
    # the commands CI and users run
    for command in ("make test", "make demo"):
        assert command in text, command


def test_readme_links_resolve():
    """Relative links in the README (the guides, the changelog) point at files in the repository."""
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert local, "expected links to the guides"
    broken = [t for t in local if t and not (ROOT / t).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def test_commit_pattern():
    assert _COMMIT.findall("measured at commit ed874ef today") == ["ed874ef"]
    assert _COMMIT.findall("(`335f90c`)") == ["335f90c"]
    assert not _COMMIT.findall("1000000 images, 2201.00520, dat_tiny, deadbeef, 4.589G, 1e-5")
    assert [m.group(0) for m in _ISSUE.finditer("see issue 11 and #4, stop 12")] == ["issue 11", "#4", "stop 12"]
    assert not list(_ISSUE.finditer("## Install\n# a comment\n--8<-- x"))
