"""The docs site builds, strictly, from a clean checkout, and the docs name no path of one machine.

``mkdocs build --strict`` fails on a broken link or anchor, a page missing from the nav, a docstring griffe
cannot parse or a notebook that does not render.  It needs the ``docs`` extra
(``pip install -e ".[docs]"``); without it the build test skips and says so (CI installs it).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted([ROOT / "README.md", ROOT / "DEVELOPERS.md", ROOT / "BENCHMARKS.md",
                    ROOT / "benchmarks" / "results" / "README.md", *(ROOT / "docs").rglob("*.md")])
# a home, root's home or a build machine's work tree: what a reader's machine does not have
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home/\w+|Users/\w+|tmp/[\w.-]+)/")


def test_docs_name_no_absolute_path_of_a_machine():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in DOC_FILES if p.exists()
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not found, "absolute paths in the docs (say it relative to the project root):\n" + "\n".join(found)


def test_machine_path_pattern_catches_what_it_should():
    assert MACHINE_PATH.search("data in /work/shared/data/mnist")
    assert MACHINE_PATH.search("see /root/.cache/x")
    assert not MACHINE_PATH.search("`~/.cache/intrafusion_viz` and ../shared/data and docs/api/index.md")


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = [p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")]
    missing = [p for p in pages if p not in nav]
    assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"


_HAVE_DOCS = all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings", "mkdocs_jupyter"))


@pytest.mark.skipif(not _HAVE_DOCS, reason='the docs extra is not installed: pip install -e ".[docs]"')
def test_docs_site_builds_strictly(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        line for line in proc.stderr.splitlines() if not line.startswith("INFO"))[-4000:]
    site = tmp_path / "site"
    for page in ("index.html", "results/index.html", "api/plan/index.html", "notebooks/02_teach_ot/index.html"):
        assert (site / page).is_file(), f"the built site lacks {page}"
    api = (site / "api" / "pruning" / "index.html").read_text(encoding="utf-8")
    assert ":class:" not in api, "Sphinx roles show literally on the API pages (docs/_ext/sphinx_roles.py)"
    assert "intrafusion_viz.pruning.prune" in api or 'id="intrafusion_viz.pruning.prune"' in api, \
        "the API page of pruning does not document prune()"
