"""README.md is read by people who paste its code: every ```python block must run as pasted.

Each block runs in a fresh interpreter (a subprocess, from a temporary folder, so it sees only what it
imports itself).  A block that needs something the test machine may lack says so in a comment on its
first line, ``# needs ...``, and is skipped visibly with that reason.  The README must stay short.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 250
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def python_blocks(text: str):
    """(line number, code) of every ```python block of ``text``, in order."""
    return [(text[:m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; keep it within {MAX_LINES} and move detail to docs/"


def test_block_extraction_finds_blocks_and_their_lines():
    text = "intro\n```python\nprint(1)\n```\ntext\n```bash\nls\n```\n```python\nx = 2\n```\n"
    assert python_blocks(text) == [(2, "print(1)\n"), (9, "x = 2\n")]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2, "README.md should show the library in Python"


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs_as_pasted(line, code, tmp_path):
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    if first.startswith("# needs"):
        pytest.skip(f"README.md line {line}: {first.lstrip('# ')}")
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (f"the ```python block at README.md line {line} fails when pasted:\n"
                                  f"{proc.stderr[-3000:]}")


def test_readme_keeps_the_two_commands():
    text = README.read_text(encoding="utf-8")
    for command in ('pip install -e . && intrafusion-viz demo', 'pip install -e ".[dev]" && python -m pytest'):
        assert f"```bash\n{command}\n```" in text, f"README.md must show the command `{command}` in its own block"


def _demo_table(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    m = re.search(r"<!-- DEMO-TABLE.*?-->\n(.*?)<!-- /DEMO-TABLE -->", text, re.S)
    assert m, f"{path.name} lacks its <!-- DEMO-TABLE --> ... <!-- /DEMO-TABLE --> block"
    return m.group(1)


def test_demo_table_is_the_same_in_readme_and_docs():
    """The demo's printed table appears twice; regenerating it means pasting it into both."""
    readme = _demo_table(README)
    assert "| sparsity | params | default | intra-fusion |" in readme
    assert readme == _demo_table(ROOT / "docs" / "getting-started.md"), \
        "README.md and docs/getting-started.md show different demo tables: paste the new one into both"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(md: Path) -> set:
    """The anchors MkDocs gives ``md``'s headings: explicit ``{ #id }`` or the slug of the title."""
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            continue
        explicit = re.search(r"\{\s*#([\w-]+)\s*\}", line)
        title = re.sub(r"\{.*?\}", "", line.lstrip("#")).strip().lower()
        out.add(explicit.group(1) if explicit else re.sub(r"[^\w\- ]", "", title).strip().replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", ["README.md", "BENCHMARKS.md"])
def test_relative_links_resolve(doc):
    """GitHub shows README.md and BENCHMARKS.md outside the docs site, so mkdocs does not check their links."""
    broken = []
    for target in LINK.findall((ROOT / doc).read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        file = ROOT / path
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert not broken, f"{doc} links to files or anchors that do not exist: {broken}"
