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
    for method, accuracy in (("default", 40.0), ("IF (paper)", 75.0), ("IF (default config)", 78.0)):
        records.append(dict(model="vgg11_bn", group=2, sparsity=0.7, importance="l1", method=method,
                            group_name="features.8", accuracy=accuracy))
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_paper_cells_table_and_figure(tmp_path):
    assert paper.paper_table().shape[0] == len(paper.PAPER) == 2 * 3 * 5 * 2 + 3 + 10  # Tables 10, 12 + failures
    assert paper.read_results(tmp_path / "missing.jsonl") is None
    ours = paper.read_results(_results(tmp_path))
    assert set(ours.method) == {"original", "default", "intra-fusion (paper)", "intra-fusion"}
    table = paper.comparison_table(ours)
    assert len(table) == len(paper.PAPER)  # every paper cell, measured or not
    row = table.loc[("vgg11_bn", "l1", "G2", 0.7)]
    assert row["ours: IF (default config)"] == 78.0 and row["paper: Intra-Fusion"] == 80.11
    assert row["Δ IF"] == pytest.approx(75.0 - 80.11) and row["Δ default"] == pytest.approx(40.0 - 37.89)
    assert table["ours: default"].notna().sum() == 1
    fig = paper.paper_figure(ours, "vgg11_bn", "l1")
    by = {t.name: t for t in fig.data}
    labels = list(by["paper: default"].x)
    assert len(labels) == 15 + 3  # G1-G3 x 5 sparsities + G7's failure cases
    at = labels.index("G2 70%")
    assert by["paper: default"].y[at] == 37.89 and by["ours: IF (default config)"].y[at] == 78.0
    assert by["ours: IF (default config)"].y[0] is None
    assert [t.name for t in paper.paper_figure().data] == ["paper: default", "paper: Intra-Fusion"]
    with pytest.raises(ValueError, match="model must be one of"):
        paper.paper_figure(model="vgg16")


def test_parse_tables_reads_each_section():
    text = """## Table 10: VGG11-BN, CIFAR-10, one group pruned (l1 | Taylor)
G2 70: 37.89->80.11 | 65.62->80.86
G7 (first conv), l1, 30 / 40: 88.22->79.10, 87.19->68.28 (Intra-Fusion worse)
## Table 12: ResNet18, CIFAR-10, one group pruned (l1 | Taylor)
G4 and G7 with Taylor importance: Intra-Fusion 10.10 at every sparsity (the paper's own failure cases)
## Table 1: whole model, l1, CIFAR-10, WITH fine-tuning: default / Intra-Fusion
VGG11-BN (unpruned 89.56): 64 %: 88.95 / 89.19; 84 %: 88.14 / 88.51
## Section 6 (split-data fusion), VGG11-BN: training-time speed-up 1.81x; overall 1.42x (PaF), 1.31x (FaP)
"""
    parsed = paper.parse_tables(text)
    assert parsed["cells"][("vgg11_bn", "taylor", 2, 0.7)] == (65.62, 80.86)
    assert parsed["cells"][("vgg11_bn", "l1", 7, 0.4)] == (87.19, 68.28)
    assert parsed["cells"][("resnet18", "taylor", 7, 0.3)] == (None, 10.10)
    assert len(parsed["cells"]) == 2 + 2 + 10
    assert parsed["table_1"] == {("vgg11_bn", 0.64): (88.95, 89.19), ("vgg11_bn", 0.84): (88.14, 88.51)}
    assert parsed["section_6"]["overall_speedup_fap"] == 1.31
    with pytest.raises(ValueError, match="lacks Table 1, Section 6"):
        paper.parse_tables(text.split("## Table 1:")[0])


def test_shipped_numbers_equal_the_shared_transcription():
    path = paper.tables_path()
    if path is None:
        pytest.skip("../shared/paper/tables.md not here (set INTRAFUSION_VIZ_SHARED to the shared folder)")
    parsed = paper.parse_tables(path.read_text())
    assert parsed["cells"] == paper.PAPER
    assert parsed["table_1"] == paper.TABLE_1 and parsed["table_1_unpruned"] == paper.TABLE_1_UNPRUNED
    assert {k: paper.SECTION_6[k] for k in parsed["section_6"]} == parsed["section_6"]


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
