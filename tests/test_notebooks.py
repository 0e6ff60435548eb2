"""Every notebook runs top to bottom from a fresh kernel in fast mode; committed notebooks are clean.

Run only these with ``pytest -m notebooks``.
"""
import json
import time

import pytest

from notebook_runner import NOTEBOOKS, NotebookCellError, run_notebook

NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
FAST_BUDGET_S = 90  # fast mode targets ~30 s; generous for a shared 2-core machine


def _ids(paths):
    return [p.stem for p in paths]


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOK_PATHS]
    assert "01_quickstart.ipynb" in names, names


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=_ids(NOTEBOOK_PATHS))
def test_committed_notebook_is_clean(path):
    """Outputs stripped, no execution counts, a Colab badge, and a first code cell that seeds and guards pip."""
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in code:
        assert cell.get("outputs") == [], f"{path.name}: a cell has outputs; strip them"
        assert cell.get("execution_count") is None, f"{path.name}: a cell has an execution count"
    first_markdown = "".join(nb["cells"][0]["source"])
    assert "colab.research.google.com/github/" in first_markdown and path.name in first_markdown
    setup = "".join(code[0]["source"])
    assert '"google.colab" in sys.modules' in setup
    assert "IFV_FAST" in setup and "IFV_FULL" in setup
    assert "torch.manual_seed" in setup and "np.random.seed" in setup


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=_ids(NOTEBOOK_PATHS))
def test_notebook_runs_in_fast_mode(path):
    start = time.perf_counter()
    nb = run_notebook(path, timeout=120)
    elapsed = time.perf_counter() - start
    first_output = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "mode: fast" in first_output, first_output
    assert elapsed < FAST_BUDGET_S, f"{path.name} took {elapsed:.0f}s in fast mode (budget {FAST_BUDGET_S}s)"


@pytest.mark.notebooks
def test_failing_cell_is_reported_with_its_source(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("raise ValueError('boom from cell')"),
                             new_code_cell("y = 2")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(NotebookCellError) as info:
        run_notebook(path, timeout=30)
    message = str(info.value)
    assert "cell 1 failed" in message
    assert "raise ValueError('boom from cell')" in message
    assert "boom from cell" in message.split("----- error -----")[1]
