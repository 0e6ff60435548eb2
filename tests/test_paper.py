"""``intrafusion_viz.paper`` and notebook 06 work where only the package is installed (no clone)."""
import json
import shutil

import plotly.graph_objects as go
import pytest

from intrafusion_viz import paper
from notebook_runner import NOTEBOOKS, fast_env, run_notebook


def _results(tmp_path):
    records = [dict(model="vgg11_bn", group=0, sparsity=0.0, importance="", method="original", group_name="",
                    accuracy=90.0)]
    for method, accuracy in (("default", 40.0), ("IF (paper)", 75.0), ("IF (barycentric)", 78.0)):
        records.append(dict(model="vgg11_bn", group=2, sparsity=0.7, importance="l1", method=method,
                            group_name="features.8", accuracy=accuracy))
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_paper_cells_table_and_figure(tmp_path):
    assert paper.paper_table().shape[0] == len(paper.PAPER)
    assert paper.read_results(tmp_path / "missing.jsonl") is None
    ours = paper.read_results(_results(tmp_path))
    assert set(ours.method) == {"original", "default", "intra-fusion (paper)", "intra-fusion"}
    table = paper.comparison_table(ours)
    row = table.loc[("vgg11_bn", "l1", "G2", 0.7)]
    assert row["intra-fusion"] == 78.0 and row["paper: Intra-Fusion"] == 80.11
    fig = paper.paper_figure(ours)
    by = {t.name: t for t in fig.data}
    assert isinstance(by["paper: default"], go.Bar) and list(by["paper: default"].y)[0] == 37.89
    assert list(by["ours: intra-fusion"].y)[0] == 78.0
    assert [t.name for t in paper.paper_figure().data] == ["paper: default", "paper: Intra-Fusion"]


def test_script_reads_the_papers_cells_from_the_package():
    import importlib.util

    from notebook_runner import REPO

    spec = importlib.util.spec_from_file_location("reproduce_paper", REPO / "benchmarks" / "reproduce_paper.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PAPER is paper.PAPER and module.PAPER_TABLE is paper.PAPER_TABLE


@pytest.mark.notebooks
def test_reproduce_notebook_outside_a_clone(tmp_path):
    """06 copied alone into an empty folder (no benchmarks/ anywhere near): runs and shows a figure."""
    alone = tmp_path / "somewhere" / "else"
    alone.mkdir(parents=True)
    shutil.copy(NOTEBOOKS / "06_reproduce_paper.ipynb", alone)
    nb = run_notebook(alone / "06_reproduce_paper.ipynb", timeout=120, cwd=alone,
                      env=fast_env({"IFV_PAPER_OUT": str(tmp_path / "out")}))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    texts = "".join(o.get("text", "") for o in outputs)
    assert "not here" in texts
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs), "no figure on CPU"
