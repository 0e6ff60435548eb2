"""Figure helpers: trace types, shapes, axis labels, and values equal to what prune recorded."""
import re

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


# --- figures of a prune result ------------------------------------------------------------------
import torch  # noqa: E402

from helpers import conv_bn_net  # noqa: E402


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = ifv.models.SmallCNN(width=(8, 12)).eval()
    x = torch.randn(4, 1, 8, 8)
    return model, x


def _configs():
    return [("intra-fusion", ifv.OTConfig()), ("intra-fusion", ifv.OTConfig(solver="sinkhorn", reg=0.1)),
            ("default", ifv.OTConfig())]


@pytest.mark.parametrize("method,config", _configs())
def test_plan_heatmap_values_equal_recorded_plan(small, method, config):
    model, x = small
    res = ifv.prune(model, x, 0.5, method=method, config=config)
    for g in res.groups:
        fig = ifv.figures.plan_heatmap(g)
        assert isinstance(fig.data[0], go.Heatmap) and all(isinstance(t, go.Scatter) for t in fig.data[1:])
        kept_marks = fig.data[1] if len(fig.data) > 1 else None  # the kept neurons' own cells
        if kept_marks is not None:
            assert list(kept_marks.x) == [str(j) for j in g.kept.tolist()]
        z = np.asarray(fig.data[0].z)
        assert z.shape == (g.n, g.k)
        order = ifv.figures.source_order(g)
        assert sorted(order.tolist()) == list(range(g.n))
        np.testing.assert_allclose(z, g.plan.numpy()[order], rtol=0, atol=0)
        rows = [re.fullmatch(r"(\d+) \(importance (\S+)\)", name) for name in fig.data[0].y]
        assert all(rows), list(fig.data[0].y)[:3]
        assert [int(r.group(1)) for r in rows] == order.tolist()        # hover: source neuron index
        np.testing.assert_allclose([float(r.group(2)) for r in rows], g.importance.numpy()[order], rtol=5e-3)
        assert list(fig.data[0].x) == [str(j) for j in g.kept.tolist()]   # hover: kept neuron index
        assert fig.layout.xaxis.type == fig.layout.yaxis.type == "category"
        assert fig.data[0].customdata is None  # no per-cell hover data
        # tick labels: the neuron numbers of the rows they mark
        ticks = list(fig.layout.yaxis.tickvals)
        assert set(ticks) <= set(fig.data[0].y)
        assert [name.split()[0] for name in ticks] == list(fig.layout.yaxis.ticktext)
        # clusters are contiguous blocks: the argmax column never returns once left
        has = z.sum(1) > 0
        cols = z[has].argmax(1)
        assert np.all(np.diff(cols) >= 0)
        assert fig.layout.xaxis.title.text == "kept neuron"
        assert "source neuron" in fig.layout.yaxis.title.text


def test_plan_heatmap_large_group_is_light():
    g = ifv.GroupResult(0, 1, "big", 512, 256, 0.5, torch.arange(0, 512, 2), torch.rand(512, dtype=torch.float64),
                        torch.rand(512, 256, dtype=torch.float64), torch.rand(512, 256, dtype=torch.float64) / 512 / 256,
                        torch.zeros(512, 256), torch.zeros(512, 256))
    fig = ifv.figures.plan_heatmap(g)
    assert np.asarray(fig.data[0].z).shape == (512, 256)
    assert len(fig.layout.shapes) == 0            # no 256 cluster lines at this size
    assert fig.layout.height <= 900
    # readable tick labels: at least 12 px apart
    assert (fig.layout.height - 140) / len(fig.layout.yaxis.tickvals) >= 14 - 1e-9
    assert len(fig.layout.xaxis.tickvals) <= 32


def test_similarity_matrix(small):
    model, x = small
    res = ifv.prune(model, x, 0.5)
    g = res.groups[0]
    order = ifv.figures.source_order(g)
    fig = ifv.figures.similarity_matrix(g, kind="cost")
    assert isinstance(fig.data[0], go.Heatmap)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), g.cost.numpy()[order])
    feats = ifv.channel_features(model, ifv.find_groups(model, x)[0])
    full = np.asarray(ifv.figures.similarity_matrix(g, kind="cosine", features=feats).data[0].z)
    assert full.shape == (g.n, g.n)
    np.testing.assert_allclose(np.diag(full), 1.0, atol=1e-6)
    # the cosine of the vectors themselves (unit rows, in cluster order)
    unit = feats.double() / feats.double().norm(dim=1, keepdim=True)
    np.testing.assert_allclose(full, (unit @ unit.T).numpy()[np.ix_(order, order)], atol=1e-6)
    # the recorded cost is not a cosine in general (p=1 here): refused, not derived
    with pytest.raises(ValueError, match="features="):
        ifv.figures.similarity_matrix(ifv.prune(model, x, 0.5, config=ifv.OTConfig(p=1)).groups[0], kind="cosine")
    with pytest.raises(ValueError):
        ifv.figures.similarity_matrix(ifv.prune(model, x, 0.5, method="default").groups[0])


@pytest.mark.parametrize("how", ["pca", "mds", "cost"])
def test_neuron_embedding(small, how):
    model, x = small
    res = ifv.prune(model, x, 0.5)
    g = res.groups[1]
    feats = None if how == "cost" else ifv.channel_features(model, ifv.find_groups(model, x)[1])
    fig = ifv.figures.neuron_embedding(g, features=feats, method="pca" if how == "cost" else how)
    lines, neurons, kept = fig.data
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    assert len(neurons.x) == g.n and len(kept.x) == g.k
    # one segment (3 entries: from, to, gap) per merged neuron, ending at its kept neuron's marker
    merged = [i for i, j in enumerate(g.assignment.tolist()) if g.kept[j] != i]
    assert len(lines.x) == 3 * len(merged)
    i, j = merged[0], int(g.assignment[merged[0]])
    assert lines.x[0] == neurons.x[i] and lines.x[1] == neurons.x[int(g.kept[j])]
    np.testing.assert_allclose(kept.x, np.asarray(neurons.x)[g.kept.numpy()])
    assert fig.layout.xaxis.title.text == "component 1"


def test_landmark_mds_recovers_distances():
    from intrafusion_viz.figures._similarity import _landmark_mds

    rng = np.random.default_rng(0)
    pts = rng.normal(size=(30, 2))
    kept = np.arange(0, 30, 3)
    cost = np.linalg.norm(pts[:, None] - pts[kept][None], axis=-1)
    coords = _landmark_mds(cost, kept)
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.testing.assert_allclose(d, np.linalg.norm(pts[:, None] - pts[None], axis=-1), atol=1e-8)


def test_merge_gallery_images_and_bars(small):
    model, x = small
    res = ifv.prune(model, x, 0.5)
    img = ifv.figures.merge_gallery(res.groups[0], model)   # conv with 1 input channel: image tiles
    assert isinstance(img.data[0], go.Image) and isinstance(img.data[1], go.Scatter)
    assert np.asarray(img.data[0].z).shape[-1] == 3
    bars = ifv.figures.merge_gallery(res.groups[1], model)  # 8 input channels: weight-norm bars
    assert [t.name for t in bars.data] == ["kept", "merged in", "merged result"]
    assert all(isinstance(t, go.Bar) for t in bars.data)
    g = res.groups[1]
    rows = ifv.figures.producer_rows(g, model).reshape(g.n, -1)
    kept_norms = np.asarray(bars.data[0].y)
    shown = [int(v) for v in bars.data[0].x[1]]
    np.testing.assert_allclose(kept_norms, np.linalg.norm(rows[shown], axis=1))
    result = np.asarray(bars.data[2].y)
    expected = [np.linalg.norm(g.out_map.numpy()[:, list(g.kept.numpy()).index(k)] @ rows) for k in shown]
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_merge_gallery_rgb_conv():
    torch.manual_seed(0)
    model = ifv.models.vgg11_bn(width_mult=0.125).eval()
    x = torch.randn(2, 3, 32, 32)
    res = ifv.prune(model, x, 0.5, groups=[0], method="intra-fusion")
    g = res.groups[0]
    fig = ifv.figures.merge_gallery(g, model)
    assert isinstance(fig.data[0], go.Image)
    assert len(fig.data[1].x) == g.k * 3  # every cluster drawn: kept, the one merged in, the result
    height, width = np.asarray(fig.data[0].z).shape[:2]
    assert width >= 2 * height  # blocks side by side: the mosaic fills a laptop's width, not a third of it
    assert "showing" not in fig.layout.title.text
    part = ifv.figures.merge_gallery(g, model, max_clusters=2)
    assert len(part.data[1].x) == 2 * 3 and f"showing the 2 of {g.k} kept neurons" in part.layout.title.text


def test_sweep_figures_and_table():
    model = conv_bn_net(c=6)
    torch.manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 4, (40,))
    df = ifv.sweeps.layer_sweep(model, (x, y), x[:2], sparsities=(0.3, 0.5),
                                methods=("default", "intra-fusion", "intra-fusion (paper)"), progress=False, cache=False)
    ngroups = len(ifv.find_groups(model, x[:2]))
    assert len(df) == 1 + ngroups * 2 * 3
    assert set(df.columns) >= {"group", "group_name", "paper_group", "sparsity", "method", "importance", "accuracy"}
    # a row equals a direct prune + accuracy
    row = df[(df.group == 0) & (df.sparsity == 0.5) & (df.method == "intra-fusion")].iloc[0]
    direct = ifv.accuracy(ifv.prune(model, x[:2], {0: 0.5}, groups=[0], method="intra-fusion").model, (x, y))
    assert row.accuracy == pytest.approx(direct)
    heat = ifv.figures.sweep_heatmap(df)
    assert [type(t) for t in heat.data] == [go.Heatmap] * 3
    assert all(np.asarray(t.z).shape == (ngroups, 2) for t in heat.data)
    base = df[df.method == "original"].accuracy.iloc[0]
    z = np.asarray(heat.data[1].z)  # intra-fusion
    assert z[0, 1] == pytest.approx(base - row.accuracy)
    bars = ifv.figures.sweep_bars(df)
    assert [t.name for t in bars.data] == ["default", "intra-fusion", "intra-fusion (paper)"]
    assert len(bars.data[0].y) == ngroups * 2
    assert bars.layout.yaxis.title.text == "accuracy drop (points)"


def test_size_comparison(small):
    model, x = small
    res = ifv.prune(model, x, 0.5)
    before = ifv.figures.model_size(model, x, repeats=3)
    after = ifv.figures.model_size(res.model, x, repeats=3)
    assert before["params"] == res.params_before and after["params"] == res.params_after
    assert after["macs"] < before["macs"]
    fig = ifv.figures.size_comparison(model, res.model, x, sizes=(before, after))
    assert all(isinstance(t, go.Bar) for t in fig.data) and len(fig.data) == 6
    assert fig.layout.yaxis.title.text == "parameters" and fig.layout.yaxis3.title.text == "CPU latency (ms)"


# --- figures say what they show ------------------------------------------------------------------
@pytest.mark.parametrize("method,config", _configs() + [("intra-fusion", ifv.OTConfig(target="centroid"))])
def test_group_figure_titles_name_model_group_method_importance_sparsity(small, method, config):
    model, x = small
    res = ifv.prune(model, x, {1: 0.75}, groups=[1], method=method, config=config, importance="l2")
    g = res.groups[0]
    feats = ifv.channel_features(model, ifv.find_groups(model, x)[1])
    figs = [ifv.figures.plan_heatmap(g, model_name="SmallCNN", importance="l2", config=res.config),
            ifv.figures.neuron_embedding(g, features=feats, model_name="SmallCNN", importance="l2",
                                         config=res.config),
            ifv.figures.similarity_matrix(g, kind="cosine", features=feats, model_name="SmallCNN",
                                          importance="l2", config=res.config),
            ifv.figures.merge_gallery(g, model, model_name="SmallCNN", importance="l2", config=res.config)]
    for fig in figs:
        title = fig.layout.title.text
        for phrase in ("SmallCNN", f"G{g.paper_index} {g.name}", method, "importance l2", "sparsity 0.75",
                       f"keeps {g.k} of {g.n}"):
            assert phrase in title, (phrase, title)
        if method == "intra-fusion" and config.solver == "sinkhorn":
            assert "sinkhorn reg 0.1" in title
    x_title = figs[0].layout.xaxis.title.text
    if method == "intra-fusion" and config.target == "centroid":
        assert "centroid" in x_title and "centroid" in figs[0].layout.title.text
    else:
        assert x_title == "kept neuron"
    # the embedding explains its colours: one colour per merge cluster, grey for dropped neurons
    neurons = figs[1].data[1]
    steps = [color for _, color in neurons.marker.colorscale][::2]  # a stepped scale: one colour per step
    colors = [steps[int(v)] for v in neurons.marker.color]
    assignment = g.assignment.numpy()
    if method == "default":
        assert "grey" in neurons.name
        assert all(c == "#bbbbbb" for c, a in zip(colors, assignment) if a < 0)
    else:
        assert "merge cluster" in neurons.name
        by_cluster = {}
        for c, a in zip(colors, assignment):
            by_cluster.setdefault(int(a), set()).add(c)
        assert all(len(v) == 1 for v in by_cluster.values())
        assert len({next(iter(v)) for v in by_cluster.values()}) == len(by_cluster)


def test_accuracy_plots_show_original_and_chance():
    records = [dict(r, model="SmallCNN") for r in _records()]
    fig = ifv.figures.accuracy_vs_sparsity(records, num_classes=10, marker_at=0.5)
    by = {t.name: t for t in fig.data}
    np.testing.assert_allclose(by["chance"].y, [10.0, 10.0])
    np.testing.assert_allclose(by["original"].y, [95.0, 95.0])
    texts = [a.text for a in fig.layout.annotations]
    assert "original 95.0%" in texts and "chance 10.0%" in texts and "slider 0.50" in texts
    assert [s.x0 for s in fig.layout.shapes] == [0.5]
    title = fig.layout.title.text
    assert "SmallCNN" in title and "importance l1" in title and "every group pruned at once" in title
    # chance from a num_classes column; absent without one
    assert "chance" in [t.name for t in ifv.figures.accuracy_vs_sparsity(
        [dict(r, num_classes=4) for r in _records()]).data]
    assert "chance" not in [t.name for t in ifv.figures.accuracy_vs_sparsity(_records()).data]


def test_sweep_figure_titles_and_chance_line():
    rows = [dict(group=-1, group_name="all", paper_group="", sparsity=0.0, method="original",
                 importance="lamp", accuracy=90.0)]
    for m, a in (("default", 40.0), ("intra-fusion", 70.0)):
        rows.append(dict(group=0, group_name="conv1", paper_group="G1", sparsity=0.5, method=m,
                         importance="lamp", accuracy=a))
    bars = ifv.figures.sweep_bars(rows, sparsity=0.5, num_classes=10, model_name="VGG11-BN")
    title = bars.layout.title.text
    assert "VGG11-BN" in title and "importance lamp" in title and "sparsity 0.50" in title
    assert "original 90.00%" in title
    assert bars.layout.shapes[0].y0 == pytest.approx(80.0)  # drop that leaves the model at chance
    heat = ifv.figures.sweep_heatmap(rows, model_name="VGG11-BN")
    assert "VGG11-BN" in heat.layout.title.text and "importance lamp" in heat.layout.title.text


def test_plan_comparison_panels_are_named_and_uncrowded():
    """Side by side: one heatmap per method, rows and columns named by neuron, at most 18 column labels
    across the panels (16 kept columns in three panels showed 16 overlapping labels in each)."""
    torch.manual_seed(0)
    model, x = ifv.models.SmallCNN(width=(16, 32)).eval(), torch.randn(4, 1, 8, 8)
    group = max(ifv.find_groups(model, x), key=lambda g: g.size)
    records = [ifv.prune(model, x, {group.index: 0.5}, groups=[group.index], method=m).group(group.index)
               for m in ("intra-fusion", "default", "fold")]
    assert records[0].k == 16
    fig = ifv.figures.plan_comparison(records, model_name="SmallCNN")
    assert [type(t).__name__ for t in fig.data] == ["Heatmap"] * 3
    labels = 0
    for i, (g, trace) in enumerate(zip(records, fig.data), start=1):
        assert [name.split()[0] for name in trace.y] == [str(v) for v in ifv.figures.source_order(g)]
        assert list(trace.x) == [str(v) for v in g.kept.tolist()]
        xaxis = fig.layout[f"xaxis{'' if i == 1 else i}"]
        assert xaxis.type == "category" and set(xaxis.tickvals) <= set(trace.x)
        labels += len(xaxis.tickvals)
    assert labels <= 18
    assert "SmallCNN" in fig.layout.title.text


# ---------------------------------------------------------------- group map and default model names

def _tiny_resnet():
    from helpers import TinyResNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyResNet(w=8).eval(), torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_group_map_layers_groups_and_outcomes():
    model, x = _tiny_resnet()
    groups = ifv.find_groups(model, x)
    res = ifv.prune(model, x, {groups[0].index: 0.5, groups[1].index: 0.25}, method="intra-fusion")
    fig = ifv.figures.group_map(groups, result=res)
    points = [(c, int(g)) for t in fig.data if t.customdata is not None for c, g in t.customdata]
    # one marker per (layer, group) membership, every member of every group
    assert sorted(points) == sorted((m.name, g.index) for g in groups for m in g.members)
    layers = list(fig.layout.yaxis.categoryarray)
    order = [n for n, _ in model.named_modules()]
    assert layers == sorted(layers, key=order.index)  # forward (module) order
    by_status = {t.name: {int(g) for _, g in t.customdata} for t in fig.data if t.customdata is not None}
    assert by_status["merged"] == {groups[0].index, groups[1].index}
    assert by_status["not pruned"] == {g.index for g in groups[2:]}
    headers = list(fig.layout.xaxis.categoryarray)
    assert headers[0] == f"G{groups[0].paper_index}<br>{res.groups[0].k}/{groups[0].size}"
    # the residual stream of layer1 (stem + two block outputs add into the same channels) says so
    stream = next(g for g in groups if sum(m.role == "out" for m in g.members) > 1)
    hovers = [h for t in fig.data if t.hovertext is not None for h in t.hovertext if f"group {stream.index} " in h]
    assert hovers and all("residual stream" in h for h in hovers)
    assert "Group map · TinyResNet" in fig.layout.title.text and "2 merged" in fig.layout.title.text
    assert fig.layout.height <= 900  # a laptop screen: ~13 px a layer for this model


def test_group_map_dropped_and_skipped_and_records():
    model, x = _tiny_resnet()
    groups = ifv.find_groups(model, x)
    res = ifv.prune(model, x, 0.5, method="default")
    fig = ifv.figures.group_map(groups, result=res)
    assert {t.name for t in fig.data if t.customdata is not None} == {"dropped"}
    # the dict a CLI result stores works the same, skipped groups included
    record = dict(groups=[dict(index=g.index, paper_group=f"G{g.paper_index}", name=g.name, size=g.size,
                               mergeable=True, reason="", members=[[m.name, m.role, m.layer_type] for m in g.members])
                          for g in groups],
                  pruned=[dict(index=groups[0].index, n=groups[0].size, k=4, method="intra-fusion", has_cost=True)],
                  skipped=[[groups[1].index, groups[1].name, "a reason"]], model="TinyResNet", method="intra-fusion")
    fig = ifv.figures.group_map(record)
    by_status = {t.name: {int(g) for _, g in t.customdata} for t in fig.data if t.customdata is not None}
    assert by_status["merged"] == {groups[0].index} and by_status["skipped"] == {groups[1].index}
    assert any("a reason" in h for t in fig.data if t.hovertext is not None for h in t.hovertext)


def test_titles_name_the_model_by_default():
    model, x = _tiny_resnet()
    res = ifv.prune(model, x, 0.5)
    key = res.groups[0].index
    for helper in (ifv.figures.plan_heatmap, ifv.figures.similarity_matrix, ifv.figures.neuron_embedding):
        assert " · TinyResNet · " in helper(res, group=key).layout.title.text, helper.__name__
    assert " · TinyResNet · " in ifv.figures.merge_gallery(res.groups[0], model).layout.title.text
    assert "TinyResNet" in ifv.figures.size_comparison(model, res.model, x, sizes=(
        dict(params=2, macs=2, latency_ms=1.0), dict(params=1, macs=1, latency_ms=0.5))).layout.title.text
    assert " · Other · " in ifv.figures.plan_heatmap(res, group=key, model_name="Other").layout.title.text
