"""Dashboards headless: controls set from code change the figures and the read-out to what prune gives."""
import sys

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import intrafusion_viz as ifv


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = ifv.models.SmallCNN(width=(8, 16)).eval()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    return model, (x, y), x[:2]


def _direct(model, data, example, group, sparsity, method, config=None):
    res = ifv.prune(model, example, {group: sparsity}, groups=[group], method=method, config=config)
    return res.groups[0], ifv.accuracy(res.model, data)


def test_explore_updates_to_direct_prune(setup):
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget")
    assert isinstance(db.plan_fig, go.FigureWidget) and isinstance(db.embedding_fig, go.FigureWidget)
    plan_fig = db.plan_fig
    z_before = np.asarray(db.plan_fig.data[0].z).copy()
    db.group.value = 1
    db.sparsity.value = 0.75
    assert db.plan_fig is plan_fig  # updated in place
    record, acc_fused = _direct(model, data, example, 1, 0.75, "intra-fusion")
    _, acc_default = _direct(model, data, example, 1, 0.75, "default")
    z = np.asarray(db.plan_fig.data[0].z)
    assert z.shape == (16, 4) and z.shape != z_before.shape
    np.testing.assert_allclose(z, record.plan.numpy()[ifv.figures.source_order(record)])
    assert db.readout["intra-fusion"] == pytest.approx(acc_fused)
    assert db.readout["default"] == pytest.approx(acc_default)
    assert db.readout["original"] == pytest.approx(ifv.accuracy(model, data))
    assert len(db.embedding_fig.data[2].x) == 4  # kept neurons marked
    # OT options: Sinkhorn gives a soft plan equal to the direct call's
    db.solver.value = "sinkhorn"
    db.reg.value = 0.1
    config = ifv.OTConfig(solver="sinkhorn", reg=db.reg.value)
    record, acc = _direct(model, data, example, 1, 0.75, "intra-fusion", config)
    np.testing.assert_allclose(np.asarray(db.plan_fig.data[0].z),
                               record.plan.numpy()[ifv.figures.source_order(record)], atol=1e-12)
    assert db.readout["intra-fusion"] == pytest.approx(acc)
    db.method.value = "default"
    record, _ = _direct(model, data, example, 1, 0.75, "default")
    np.testing.assert_allclose(np.asarray(db.plan_fig.data[0].z), record.plan.numpy()[ifv.figures.source_order(record)])


def test_burst_of_slider_moves_ends_in_last_state(setup):
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget")
    values = np.round(np.random.default_rng(0).uniform(0.05, 0.95, 20) / 0.05) * 0.05
    for v in values:
        db.sparsity.value = float(v)
    last = db.sparsity.value
    record, acc = _direct(model, data, example, db.group.value, last, "intra-fusion")
    assert db.error is None
    assert db.readout["sparsity"] == pytest.approx(last)
    assert np.asarray(db.plan_fig.data[0].z).shape == (record.n, record.k)
    np.testing.assert_allclose(np.asarray(db.plan_fig.data[0].z), record.plan.numpy()[ifv.figures.source_order(record)])
    assert db.readout["intra-fusion"] == pytest.approx(acc)


def test_reentrant_change_is_not_lost(setup):
    """A control changed while a refresh runs is picked up before the refresh returns."""
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget")
    original = db._compute
    calls = []

    def compute_and_move():
        calls.append(db.sparsity.value)
        if len(calls) == 1:
            db.sparsity.value = 0.25  # arrives mid-refresh
        return original()

    db._compute = compute_and_move
    db.sparsity.value = 0.6
    assert calls[-1] == 0.25 and db.readout["sparsity"] == pytest.approx(0.25)


def test_bad_settings_show_an_error_not_raise(setup):
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget")
    db.p.value = 1.0
    assert db.error is None
    db._base_config = ifv.OTConfig(max_iter=1)  # force the solver to fail
    db.target.value = "centroid"
    assert db.error is not None and "error" in db.status.value


def test_static_renderer_and_colab_detection(setup, monkeypatch):
    model, data, example = setup
    assert ifv.widgets.pick_renderer("auto") == "widget"
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert ifv.widgets.pick_renderer("auto") == "static"
    db = ifv.widgets.explore(model, data, example)  # auto -> static on "Colab"
    assert type(db.plan_fig) is go.Figure
    html_before = db._plan_slot.widget.outputs[0]["data"]["text/html"]
    db.sparsity.value = 0.25
    record, acc = _direct(model, data, example, db.group.value, 0.25, "intra-fusion")
    np.testing.assert_allclose(np.asarray(db.plan_fig.data[0].z), record.plan.numpy()[ifv.figures.source_order(record)])
    html_after = db._plan_slot.widget.outputs[0]["data"]["text/html"]
    assert html_after != html_before and "plotly" in html_after
    assert db.readout["intra-fusion"] == pytest.approx(acc)
    with pytest.raises(ValueError):
        ifv.widgets.pick_renderer("nope")


def test_sweep_dashboard(setup):
    model, data, example = setup
    sd = ifv.widgets.sweep_dashboard(model, data, example, sparsities=(0.5,), renderer="widget")
    sd.methods.value = ("default", "intra-fusion")
    table = sd.run()
    assert sd.progress.value == sd.progress.max == 2 * 2
    assert len(table) == 1 + 2 * 2
    assert [type(t) for t in sd.heatmap_fig.data] == [go.Heatmap, go.Heatmap]
    assert [t.name for t in sd.bars_fig.data] == ["default", "intra-fusion"]
    _, acc = _direct(model, data, example, 0, 0.5, "intra-fusion")
    row = table[(table.group == 0) & (table.method == "intra-fusion")].iloc[0]
    assert row.accuracy == pytest.approx(acc)
    static = ifv.widgets.sweep_dashboard(model, data, example, sparsities=(0.5,), renderer="static", run=True)
    assert "plotly" in static._heatmap_slot.widget.outputs[0]["data"]["text/html"]
