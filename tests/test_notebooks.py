"""Every notebook runs top to bottom from a fresh kernel in fast mode; committed notebooks are clean.

Run only these with ``pytest -m notebooks``.
"""
import json
import time

import pytest

from notebook_runner import NOTEBOOKS, NotebookCellError, run_notebook

NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 600  # a cell that hangs fails; speed itself is a benchmark's business, not a test's


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
    nb = run_notebook(path, timeout=CELL_TIMEOUT_S)
    print(f"{path.name}: {time.perf_counter() - start:.0f} s in fast mode")  # shown with -s / on failure
    first_output = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "mode: fast" in first_output, first_output


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


@pytest.mark.notebooks
def test_reproduce_notebook_shows_results_file(tmp_path):
    """With a results file from a full run, 06 puts our numbers beside the paper's and draws the curves."""
    import json as _json

    from notebook_runner import fast_env

    records = [dict(model="vgg11_bn", group=0, sparsity=0.0, importance="", method="original", group_name="",
                    accuracy=90.0)]
    for sparsity in (0.5, 0.7):
        for method, accuracy in (("default", 40.0), ("IF (paper)", 75.0), ("IF (barycentric)", 78.0)):
            records.append(dict(model="vgg11_bn", group=2, sparsity=sparsity, importance="l1", method=method,
                                group_name="features.8", accuracy=accuracy + 10 * (0.7 - sparsity)))
    (tmp_path / "results.jsonl").write_text("\n".join(_json.dumps(r) for r in records) + "\n")
    nb = run_notebook(NOTEBOOKS / "06_reproduce_paper.ipynb", timeout=120,
                      env=fast_env({"IFV_PAPER_OUT": str(tmp_path)}))
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "80.11" in html and "37.89" in html, "the paper's VGG11-BN G2 70% cell is missing from the comparison"
    assert "<td>78.0</td>" in html, "our intra-fusion number (78.0 at 70%) is missing from the comparison"
    texts = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "1 figures" in texts
