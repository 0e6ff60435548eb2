"""Figure helpers: trace types, shapes, axis labels, and values equal to what prune recorded."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import intrafusion_viz as ifv


def _records():
    rows = [dict(group=-1, group_name="all", paper_group="", sparsity=0.0, method="original",
                 importance="l1", accuracy=95.0)]
    for s, d, f in [(0.3, 80.0, 90.0), (0.5, 60.0, 85.0), (0.7, 30.0, 70.0)]:
        rows.append(dict(group=-1, group_name="all", paper_group="", sparsity=s, method="default",
                         importance="l1", accuracy=d))
        rows.append(dict(group=-1, group_name="all", paper_group="", sparsity=s, method="intra-fusion",
                         importance="l1", accuracy=f))
    return rows


@pytest.mark.parametrize("as_frame", [False, True])
def test_accuracy_vs_sparsity_lines(as_frame):
    records = pd.DataFrame(_records()) if as_frame else _records()
    fig = ifv.figures.accuracy_vs_sparsity(records)
    assert isinstance(fig, go.Figure)
    names = [t.name for t in fig.data]
    assert names == ["default", "intra-fusion", "original"]
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    by = {t.name: t for t in fig.data}
    np.testing.assert_allclose(by["default"].x, [0.3, 0.5, 0.7])
    np.testing.assert_allclose(by["intra-fusion"].y, [90.0, 85.0, 70.0])
    assert by["original"].line.dash == "dash"
    np.testing.assert_allclose(by["original"].y, [95.0, 95.0])
    assert "accuracy" in fig.layout.yaxis.title.text and "sparsity" in fig.layout.xaxis.title.text


def test_accuracy_vs_sparsity_group_filter():
    rows = _records() + [dict(group=2, group_name="conv2", paper_group="G1", sparsity=0.5,
                              method="default", importance="l1", accuracy=11.0)]
    fig = ifv.figures.accuracy_vs_sparsity(rows, group="G1")
    assert [t.name for t in fig.data] == ["default"]
    np.testing.assert_allclose(fig.data[0].y, [11.0])
    with pytest.raises(KeyError):
        ifv.figures.accuracy_vs_sparsity(rows, group=7)
