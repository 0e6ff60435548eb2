"""The main job: ``intrafusion-viz demo`` runs offline and writes a report."""
import re

import pytest
import torch

import intrafusion_viz as ifv
from intrafusion_viz import cli


def test_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli.main(["demo", "--sparsities", "0.3", "0.6", "--epochs", "4", "--quiet", "--out", str(out),
                     "--importance", "l2", "--seed", "3"]) == 0
    page = out.read_text()
    assert "plotly" in page and "intra-fusion" in page
    assert "<pre>" not in page and "|---" not in page  # an HTML table, not raw markdown
    table = re.search(r"<table class='results'>.*?</table>", page, re.S).group(0)
    assert table.count("<tr>") == 1 + 1 + 2 and "<th>intra-fusion (paper)</th>" in table
    for setting in ("importance</th><td>l2", "seed</th><td>3", "sparsities</th><td>0.30, 0.60",
                    "epochs</th><td>4", "version: torch</th>", "version: POT</th>", "SmallCNN"):
        assert setting in page, setting
    printed = capsys.readouterr().out
    assert "| 30% |" in printed and "| 60% |" in printed and "original accuracy" in printed


def test_demo_records_match_sparsity_sweep_and_leave_global_rng_alone():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    records = cli.run_demo((0.5,), epochs=4, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # a library call changes no global state
    methods = [r["method"] for r in records]
    # the demo also shows the default call prune(model, x, s) (capped fold, docs/defaults.md)
    assert methods == ["original", "default", "intra-fusion", "intra-fusion (paper)", cli.DEFAULT_CALL]
    assert all(0 <= r["accuracy"] <= 100 for r in records)
    pruned = [r for r in records if r["method"] != "original"]
    assert all(r["params"] < records[0]["params"] for r in pruned)
    assert records == cli.run_demo((0.5,), epochs=4, progress=False)  # seeded: the same run twice


def test_demo_rejects_bad_input(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--sparsities", "1.2"])
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--importance", "l7"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="importance must be one of"):
        cli.run_demo((0.5,), epochs=1, importance="l7", progress=False)
    assert list(ifv.IMPORTANCES)  # the CLI's choices are this list
