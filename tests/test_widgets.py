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


# --- bad input is refused clearly -------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,phrase", [
    (dict(importance="l3"), ValueError, "importance must be one of"),
    (dict(importance=lambda g: g), ValueError, "call ifv.prune directly"),
    (dict(sparsity=0.97), ValueError, "slider range"),
    (dict(sparsity=-0.1), ValueError, "slider range"),
    (dict(sparsity=True), ValueError, "slider range"),
    (dict(method="fuse"), ValueError, "method must be one of"),
    (dict(groups=["nope"]), (KeyError, ValueError), "nope"),
    (dict(groups=[7]), (IndexError, KeyError, ValueError), "7"),
    (dict(groups="G9"), (KeyError, ValueError), "G9"),
])
def test_explore_refuses_bad_input(setup, kwargs, error, phrase):
    model, data, example = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=phrase):
        ifv.widgets.explore(model, data, example, renderer="widget", **kwargs)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs,phrase", [
    (dict(importance="L7"), "importance must be one of"), (dict(sparsities=(0.5, 1.0)), "slider range"),
    (dict(methods=("fold-ish",)), "methods must be"), (dict(groups=[0, "G9"]), "G9")])
def test_sweep_dashboard_refuses_bad_input(setup, kwargs, phrase):
    model, data, example = setup
    with pytest.raises((ValueError, KeyError, IndexError), match=phrase):
        ifv.widgets.sweep_dashboard(model, data, example, renderer="widget", **kwargs)


def test_group_keys_mean_the_same_as_in_prune(setup):
    model, data, example = setup
    groups = ifv.find_groups(model, example)
    g = groups[0]
    for key in (g.index, g.name, f"G{g.paper_index}"):
        db = ifv.widgets.explore(model, data, example, renderer="widget", groups=[key])
        assert list(db.groups) == [g.index]
    sd = ifv.widgets.sweep_dashboard(model, data, example, renderer="widget", groups=f"G{g.paper_index}")
    assert sd.groups.value == (g.index,)


def test_explore_lists_the_packages_importances_and_methods(setup):
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget")
    assert tuple(db.importance.options) == tuple(ifv.IMPORTANCES)
    assert tuple(db.method.options) == tuple(ifv.METHODS)
    assert all(m in db.readout for m in ifv.METHODS)


# --- read-out, reg slider, figures say what they show -----------------------------------------
def test_readout_differences_params_and_titles(setup):
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget", model_name="TinyCNN", importance="l2")
    assert db.reg.disabled  # exact solver: reg does nothing
    db.solver.value = "sinkhorn"
    assert not db.reg.disabled
    db.solver.value = "emd"
    assert db.reg.disabled
    db.sparsity.value = 0.5
    r = db.readout
    res = ifv.prune(model, example, {db.group.value: 0.5}, groups=[db.group.value], importance="l2")
    assert r["params_intra-fusion"] == res.params_after and r["params_before"] == res.params_before
    html = db.readout_html.value
    diff = r["intra-fusion"] - r["original"]
    assert f"{diff:+.2f}" in html and f"{res.params_after:,}" in html and "chance level 10.0%" in html
    title = db.plan_fig.layout.title.text
    g = db.groups[db.group.value]
    for phrase in ("TinyCNN", f"G{g.paper_index} {g.name}", "intra-fusion", "importance l2", "sparsity 0.50"):
        assert phrase in title and phrase in db.embedding_fig.layout.title.text
    db.target.value = "centroid"
    assert "centroid" in db.plan_fig.layout.xaxis.title.text
    db.compare.value = True  # default and Intra-Fusion side by side
    assert [type(t) for t in db.plan_fig.data] == [go.Heatmap] * len(ifv.METHODS)  # one plan per method
    assert [a.text for a in db.plan_fig.layout.annotations][:len(ifv.METHODS)] == list(ifv.METHODS)  # fold named as such
    table = db.readout_table()
    assert list(table.model) == ["original", *ifv.METHODS]


def test_curve_of_the_group_with_marker_at_slider(setup):
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget")
    rows = db.compute_curve(sparsities=(0.25, 0.5, 0.75))
    fused = {r["sparsity"]: r["accuracy"] for r in rows if r["method"] == "intra-fusion"}
    _, acc = _direct(model, data, example, db.group.value, 0.75, "intra-fusion")
    assert fused[0.75] == pytest.approx(acc)
    assert [s.x0 for s in db.curve_fig.layout.shapes] == [pytest.approx(db.sparsity.value)]
    assert "chance" in [t.name for t in db.curve_fig.data]
    db.sparsity.value = 0.25
    assert [s.x0 for s in db.curve_fig.layout.shapes] == [pytest.approx(0.25)]
    db.importance.value = "l2"  # another curve: the old one is not shown under new settings
    assert len(db.curve_fig.data) == 0


def test_prefix_evaluator_equals_full_evaluation():
    from intrafusion_viz.widgets._prefix import PrefixEvaluator

    torch.manual_seed(0)
    for model, shape in ((ifv.models.vgg11_bn(width_mult=0.25).eval(), (3, 32, 32)),
                         (ifv.models.resnet18(width=8).train(), (3, 16, 16))):
        x, y = torch.randn(70, *shape), torch.randint(0, 10, (70,))
        evaluator = PrefixEvaluator(model, x, y, chunk=32)  # three chunks, the last one short
        assert evaluator.original_accuracy == pytest.approx(ifv.accuracy(model, (x, y)))
        for g in ifv.find_groups(model, x[:2]):
            for method in ("default", "intra-fusion"):
                pruned = ifv.prune(model, x[:2], {g.index: 0.6}, groups=[g.index], method=method).model
                fast = evaluator.accuracy(pruned, g.index, [m.name for m in g.members])
                assert fast == ifv.accuracy(pruned, (x, y)), (g.name, method)
        assert any(evaluator.shortcut.values())  # the shortcut is used where it applies
        assert model.training == isinstance(model, type(ifv.models.resnet18()))  # modes restored


def test_prefix_evaluator_on_the_first_samples():
    from intrafusion_viz.widgets._prefix import PrefixEvaluator

    torch.manual_seed(0)
    model = ifv.models.vgg11_bn(width_mult=0.25).eval()
    x, y = torch.randn(70, 3, 32, 32), torch.randint(0, 10, (70,))
    evaluator = PrefixEvaluator(model, x, y, chunk=32)
    assert evaluator.original_accuracy_on(40) == pytest.approx(ifv.accuracy(model, (x[:40], y[:40])))
    for g in ifv.find_groups(model, x[:2])[::3]:
        pruned = ifv.prune(model, x[:2], {g.index: 0.5}, groups=[g.index]).model
        for samples in (1, 20, 32, 45, 70, 500):
            fast = evaluator.accuracy(pruned, g.index, [m.name for m in g.members], samples)
            assert fast == pytest.approx(ifv.accuracy(pruned, (x[:samples], y[:samples]))), (g.name, samples)
        assert evaluator.seconds_per_sample[g.index] > 0
    with pytest.raises(ValueError, match="positive int"):
        evaluator.accuracy(pruned, g.index, [m.name for m in g.members], 0)


@pytest.fixture(scope="module")
def setup_200():
    torch.manual_seed(1)
    model = ifv.models.SmallCNN(width=(8, 16)).eval()
    x, y = torch.randn(200, 1, 8, 8), torch.randint(0, 10, (200,))
    return model, (x, y), x[:2]


def test_progressive_steps_in_an_event_loop(setup_200):
    """In a running event loop the figures come first, then the accuracies on 32 images (labelled),
    then on the whole batch; a newer value preempts the older one's pending steps."""
    import asyncio

    model, data, example = setup_200
    db = ifv.widgets.explore(model, data, example, renderer="widget", progressive=True, first_budget_s=1e-9,
                             include_fold=False)
    evaluated = []
    accuracy = db._evaluator.accuracy
    db._evaluator.accuracy = lambda *a: evaluated.append(a[-1]) or accuracy(*a)

    async def moves():
        db.sparsity.value = 0.3
        seen = [dict(db.readout)]
        assert db.refining and db.readout["intra-fusion"] is None and db.result.sparsity == pytest.approx(0.3)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if db.readout not in seen:
                seen.append(dict(db.readout))
            if not db.refining:
                break
        db.sparsity.value = 0.6
        db.sparsity.value = 0.65  # before the loop runs a step of 0.6
        while db.refining:
            await asyncio.sleep(0.01)
        return seen

    seen = asyncio.run(moves())
    first = next(r for r in seen if r["intra-fusion"] is not None)
    assert first["eval_samples"] == 32 and first["eval_total"] == 200
    assert first["intra-fusion"] == pytest.approx(_direct(model, (data[0][:32], data[1][:32]), example,
                                                          db.group.value, 0.3, "intra-fusion")[1])
    assert "accuracy on 32 of 200 images" in readout_text(first)
    assert seen[-1]["eval_samples"] == 200 and not seen[-1]["refining"]
    assert seen[-1]["intra-fusion"] == pytest.approx(_direct(model, data, example, db.group.value, 0.3,
                                                             "intra-fusion")[1])
    assert db.readout["sparsity"] == pytest.approx(0.65) and db.readout["eval_samples"] == 200
    _, acc = _direct(model, data, example, db.group.value, 0.65, "intra-fusion")
    assert db.readout["intra-fusion"] == pytest.approx(acc)
    assert evaluated.count(32) == 2 * 2  # 0.3 and 0.65, both methods: 0.6 was never evaluated
    assert db.readout["fold"] is None and db.readout["excluded"] == ["fold"]
    move = db.timings[-1]
    assert move["figures"] <= move["first"] <= move["full"] <= move["all"] and move["first_samples"] == 32


def readout_text(readout):
    import re
    return re.sub("<[^>]+>", "", ifv.widgets._explore.readout_html(readout, ifv.METHODS))


def test_fold_is_optional_and_computed_after_the_others(setup):
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget", include_fold=False)
    assert db.readout["fold"] is None and "off" in readout_text(db.readout)
    assert list(db.readout_table().model) == ["original", *(m for m in ifv.METHODS if m != "fold")]
    db.include_fold.value = True  # from code: complete when the assignment returns
    _, acc = _direct(model, data, example, db.group.value, db.sparsity.value, "fold")
    assert db.readout["fold"] == pytest.approx(acc) and not db.refining
    assert ifv.widgets.explore(model, data, example, renderer="widget").include_fold.value  # small model: on
    with pytest.raises(TypeError, match="include_fold"):
        ifv.widgets.explore(model, data, example, renderer="widget", include_fold="yes")
    with pytest.raises(ValueError, match="progressive"):
        ifv.widgets.explore(model, data, example, renderer="widget", progressive="sometimes")


# --- stale state and progress in the sweep dashboard ------------------------------------------
def test_sweep_dashboard_marks_stale_and_resets_progress(setup):
    model, data, example = setup
    sd = ifv.widgets.sweep_dashboard(model, data, example, sparsities=(0.5,), renderer="widget")
    assert sd.progress.value == 0 and not sd.stale  # nothing has run: not 100 %
    sd.run()
    assert sd.progress.value == sd.progress.max and not sd.stale
    assert "SmallCNN" in sd.heatmap_fig.layout.title.text and "importance l1" in sd.bars_fig.layout.title.text
    assert "chance" in " ".join(a.text for a in sd.bars_fig.layout.annotations)
    sd.importance.value = "l2"
    assert sd.stale and sd.progress.value == 0
    assert "press 'run sweep'" in sd.status.value
    assert sd.heatmap_fig.layout.title.text.startswith("OUT OF DATE")
    assert sd.bars_fig.layout.title.text.startswith("OUT OF DATE")
    sd.run()
    assert not sd.stale and not sd.heatmap_fig.layout.title.text.startswith("OUT OF DATE")
    assert set(sd.table.importance) == {"l2"}


# --- export -------------------------------------------------------------------------------------
def test_export_model_and_tables(setup, tmp_path):
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget", export_dir=str(tmp_path))
    db.sparsity.value = 0.5
    path = db.save_model()
    loaded = torch.load(path, weights_only=False).eval()
    direct = ifv.prune(model, example, {db.group.value: 0.5}, groups=[db.group.value],
                       method="intra-fusion").model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(data[0]), direct(data[0]))
    assert ifv.accuracy(loaded, data) == pytest.approx(db.readout["intra-fusion"])
    csv = db.save_tables()
    import pandas as pd
    assert pd.read_csv(csv[0]).accuracy.round(6).tolist() == db.readout_table().accuracy.round(6).tolist()
    db._run_export(db.save_tables)
    assert "wrote" in db.export_status.value
    pytest.importorskip("onnx")
    onnx_path = db.export_onnx()
    import onnx
    onnx.checker.check_model(onnx.load(str(onnx_path)))


def test_readout_macs_count_conv_and_linear():
    from intrafusion_viz.widgets._explore import conv_linear_macs, weight_positions

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 25, 4))
    positions = weight_positions(model, torch.randn(2, 3, 5, 5))
    assert conv_linear_macs(model, positions) == 8 * 3 * 9 * 25 + 8 * 25 * 4
    half = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 25, 4))
    assert conv_linear_macs(half, positions) == 4 * 3 * 9 * 25 + 4 * 25 * 4


def test_export_without_optional_packages_says_what_to_install(setup, tmp_path, monkeypatch):
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget", export_dir=str(tmp_path))
    monkeypatch.setitem(sys.modules, "onnx", None)     # import onnx -> ImportError
    monkeypatch.setitem(sys.modules, "kaleido", None)
    with pytest.raises(ImportError, match=r"pip install 'intrafusion_viz\[export\]'"):
        db.export_onnx()
    with pytest.raises(ImportError, match="kaleido"):
        db.save_figures()
    db._run_export(db.export_onnx)
    assert "onnx" in db.export_status.value and "pip install" in db.export_status.value


@pytest.mark.slow
def test_save_figures_png(setup, tmp_path):
    pytest.importorskip("kaleido")
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget", export_dir=str(tmp_path))
    try:
        paths = db.save_figures()
    except RuntimeError as error:  # kaleido without a Chrome: our message says what to install
        assert "Chrome" in str(error)
        pytest.skip(str(error))
    assert [p.suffix for p in paths] == [".png", ".png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_explore_curve_and_group_map_get_their_own_height(setup):
    """A figure replacing a placeholder gets its own height (the curve was left a 110 px strip)."""
    model, data, example = setup
    db = ifv.widgets.explore(model, data, example, renderer="widget", include_fold=False)
    assert db.curve_fig.layout.height == 260  # the placeholder
    db.compute_curve(sparsities=(0.3, 0.6))
    assert db.curve_fig.layout.height >= 400
    assert [t.name for t in db.curve_fig.data][:2] == ["default", "intra-fusion"]
    fig = db.show_group_map()
    assert fig.layout.title.text.startswith("Group map · SmallCNN")
    shown = {int(g) for t in fig.data if t.customdata is not None and t.name == "merged" for _, g in t.customdata}
    assert shown == {db.group.value}  # the group the controls prune, and only it
    assert fig.layout.height >= 400 and "group_map" in db.figures
    db.sparsity.value = 0.75  # the map follows the controls
    assert f"keeps {db.result.k} of {db.result.n}" in db._map_slot.figure.layout.title.text


def test_explore_file_is_small():
    """Files a reader can take in at once (DEVELOPERS.md): the dashboard module stays below 600 lines."""
    from pathlib import Path

    import intrafusion_viz.widgets._explore as explore_module

    assert len(Path(explore_module.__file__).read_text().splitlines()) < 600
