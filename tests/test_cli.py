"""The main job: ``intrafusion-viz demo`` runs offline and writes a report."""
from intrafusion_viz import cli


def test_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli.main(["demo", "--sparsities", "0.3", "0.6", "--epochs", "4", "--quiet", "--out", str(out)]) == 0
    page = out.read_text()
    assert "plotly" in page and "intra-fusion" in page and "<pre>" in page
    printed = capsys.readouterr().out
    assert "| 30% |" in printed and "| 60% |" in printed and "original accuracy" in printed


def test_demo_records():
    records = cli.run_demo((0.5,), epochs=4, progress=False)
    methods = [r["method"] for r in records]
    assert methods == ["original", "default", "intra-fusion", "intra-fusion (paper)"]
    assert all(0 <= r["accuracy"] <= 100 for r in records)
    pruned = [r for r in records if r["method"] != "original"]
    assert all(r["params"] < records[0]["params"] for r in pruned)


def test_demo_rejects_bad_sparsity(capsys):
    import pytest
    with pytest.raises(SystemExit):
        cli.main(["demo", "--sparsities", "1.2"])
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
