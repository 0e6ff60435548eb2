"""Data-free statistics repair, method="fold", the sequential option, and repair's checks (issues 14 and 8)."""
import copy

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz.repair._data_free import data_free_repair, predicted_statistics


def _mlp(n=8, d=6, seed=0, duplicates=False):
    """Linear -> BatchNorm1d -> ReLU -> Linear with BN statistics exact for white Gaussian inputs."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, n), nn.BatchNorm1d(n), nn.ReLU(), nn.Linear(n, 3)).double()
    with torch.no_grad():
        lin, bn = model[0], model[1]
        if duplicates:
            half = n // 2
            lin.weight[half:] = lin.weight[:half]
            lin.bias[half:] = lin.bias[:half]
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        if duplicates:
            bn.weight[half:] = bn.weight[:half]
            bn.bias[half:] = bn.bias[:half]
            model[3].weight[:, half:] = model[3].weight[:, :half]
        # x ~ N(0, I): z_i = W_i x + b_i has mean b_i and variance |W_i|^2
        bn.running_mean.copy_(lin.bias)
        bn.running_var.copy_(lin.weight.pow(2).sum(1) - bn.eps)
    return model.eval()


def _cnn_with_duplicates(seed=0, scale=1.0):
    """Channels 4..7 of the first conv compute ``scale`` times channels 0..3 before BatchNorm: the same after it.

    The consumer's columns are duplicated too, so the channels are identical in every tensor (Model
    Folding's correlation estimate, which also compares consumer columns, is then 1).
    """
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        conv, bn = model[0], model[1]
        for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t[4:] = t[:4]
        model[3].weight[:, 4:] = model[3].weight[:, :4]
        bn.running_var.abs_().add_(0.5)
        bn.running_var[4:] = bn.running_var[:4]
        conv.weight[4:] *= scale
        conv.bias[4:] *= scale
        bn.running_mean[4:] *= scale
        bn.running_var[4:] = scale ** 2 * (bn.running_var[4:] + bn.eps) - bn.eps
    return model.eval()


def _keep_last(group):
    """An importance that keeps the highest-indexed channels (no ties between duplicates)."""
    return torch.arange(group.size, dtype=torch.float64)


def _same_function(a, b, x, tol=1e-9):
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=tol, rtol=tol)


@pytest.mark.parametrize("method,scale", [("intra-fusion", 1.0), ("intra-fusion", 2.0), ("fold", 1.0)])
@pytest.mark.parametrize("fold_bn", [True, False])
def test_data_free_repair_keeps_merged_duplicates_exact(method, scale, fold_bn):
    model = _cnn_with_duplicates(scale=scale)
    x = torch.randn(16, 2, 6, 6, dtype=torch.float64)
    kwargs = dict(method=method, importance=_keep_last, config=ifv.OTConfig(fold_batchnorm=fold_bn))
    res = ifv.prune(model, x[:1], {0: 0.5}, repair="none", **kwargs)
    assert res.groups[0].k == 4
    if fold_bn or scale == 1.0:  # unfolded, averaging z and 2z changes the statistics: the repair's job
        assert _same_function(res.model, model, x), "merging exact duplicates must be exact before repair"
    else:
        assert not _same_function(res.model, model, x)
    fixed = ifv.repair(res, model, mode="data-free")
    assert _same_function(fixed, model, x)
    via_prune = ifv.prune(model, x[:1], {0: 0.5}, repair="data-free", **kwargs)
    assert _same_function(via_prune.model, model, x)


def test_data_free_repair_at_sparsity_zero_and_default_pruning_changes_nothing():
    model = _mlp()
    x = torch.randn(32, 6, dtype=torch.float64)
    res = ifv.prune(model, x[:1], 0.0)
    assert _same_function(ifv.repair(res, model, mode="data-free"), res.model, x)
    res = ifv.prune(model, x[:1], 0.5, method="default")
    assert _same_function(ifv.repair(res, model, mode="data-free"), res.model, x)


def test_predicted_statistics_match_gaussian_measurement():
    torch.manual_seed(1)
    n, d, k = 6, 5, 3
    w, b = torch.randn(n, d, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    applied = torch.rand(n, k, dtype=torch.float64)
    sigma = w.norm(dim=1)
    unit = w / sigma[:, None]
    mean, var = predicted_statistics(applied, sigma, b, unit @ unit.T)
    x = torch.randn(400_000, d, dtype=torch.float64)
    merged = (x @ w.T + b) @ applied  # (N, k)
    assert torch.allclose(mean, merged.mean(0), atol=0.02)
    assert torch.allclose(var, merged.var(0), rtol=0.02)


@pytest.mark.parametrize("fold_bn", [True, False])
@pytest.mark.parametrize("method", ["intra-fusion"])
def test_repaired_channels_get_their_sources_statistics_on_white_inputs(fold_bn, method):
    """With white Gaussian inputs the producer rows' correlation is exact: every merged channel's BN output
    must have the plan-weighted mean and |gamma| of its sources."""
    model = _mlp(n=8, d=6)
    res = ifv.prune(model, torch.zeros(1, 6, dtype=torch.float64), 0.5, method=method, repair="none",
                    config=ifv.OTConfig(fold_batchnorm=fold_bn))
    fixed = data_free_repair(res, model, correlation="white-inputs")
    g = res.groups[0]
    w = g.plan / g.plan.sum(0, keepdim=True)
    bn = model[1]
    want_mean = w.T @ bn.bias.detach()
    want_std = w.T @ bn.weight.detach().abs()
    x = torch.randn(200_000, 6, dtype=torch.float64)
    with torch.no_grad():
        out = fixed[1](fixed[0](x))
    assert torch.allclose(out.mean(0), want_mean, atol=0.02)
    assert torch.allclose(out.std(0), want_std, rtol=0.02, atol=0.01)


def test_fold_method_on_duplicates_is_exact_and_clusters_the_pairs():
    model = _mlp(n=8, d=6, duplicates=True)
    x = torch.randn(64, 6, dtype=torch.float64)
    res = ifv.prune(model, x[:1], 0.5, method="fold")
    g = res.groups[0]
    assert g.k == 4
    assign = g.assignment
    assert torch.equal(assign[:4], assign[4:]), "each channel and its duplicate share a cluster"
    assert _same_function(res.model, model, x)


def test_callers_model_unchanged_by_fold_data_free_and_sequential():
    model = _cnn_with_duplicates()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    res = ifv.prune(model, x[:1], 0.5, method="fold")
    ifv.repair(res, model, mode="data-free")
    ifv.prune(model, x[:1], 0.5, sequential=True, repair="data-free")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sequential_matches_simultaneous_on_one_group_and_runs_on_all():
    model = _cnn_with_duplicates()
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    a = ifv.prune(model, x[:1], {0: 0.5})
    b = ifv.prune(model, x[:1], {0: 0.5}, sequential=True)
    assert _same_function(a.model, b.model, x)
    c = ifv.prune(model, x[:1], 0.5, sequential=True)
    assert [g.k for g in c.groups] == [4, 3]


def _model_folding_reference(model, labels, k):
    """Model Folding's DF_REPAIR of ``Linear -> BatchNorm1d -> ReLU -> Linear``, transcribed from
    marza96/ModelFolding (``fuse_bnorms_vgg``, ``concat_weights``, ``get_average_correlation``,
    ``merge_channel_clustering_approx_repair``), without its ``running_var = 1`` eps (so it is exact).
    (The full networks against their own code: tests/test_model_folding_golden.py.)"""
    import itertools

    lin, bn, out = model[0], model[1], model[3]
    sigma = torch.sqrt(bn.running_var + bn.eps)
    w_std = lin.weight / sigma[:, None]  # fuse_bnorms_vgg with gamma = 1, beta = 0
    b_std = (lin.bias - bn.running_mean) / sigma
    # concat_weights: every tensor along the channel but the running statistics
    w = torch.cat([w_std, b_std[:, None], bn.weight[:, None], bn.bias[:, None], out.weight.T], 1)
    merge = torch.zeros(k, len(labels), dtype=torch.float64)
    merge[labels, torch.arange(len(labels))] = 1.0
    avg_corr = torch.zeros(k, dtype=torch.float64)
    for c in range(k):  # get_average_correlation
        members = torch.nonzero(merge[c]).flatten().tolist()
        pairs = [(m, n) for m, n in itertools.product(members, members) if m != n]
        for m, n in pairs:
            avg_corr[c] += w[m] @ w[n] / torch.sqrt((w[m] @ w[m]) * (w[n] @ w[n]))
        avg_corr[c] /= max(len(pairs), 1)
    mean = torch.diag(1.0 / torch.diag(merge @ merge.T)) @ merge
    n_c = merge.sum(1)
    gamma = (mean @ bn.weight) * torch.sqrt(n_c / (1 + (n_c - 1) * avg_corr))
    beta = mean @ bn.bias
    w1, b1, w2 = mean @ w_std, mean @ b_std, out.weight @ merge.T

    def forward(x):
        return torch.relu(gamma * (x @ w1.T + b1) + beta) @ w2.T + out.bias

    return forward


@pytest.mark.parametrize("fold_bn", [True, False])
@pytest.mark.parametrize("repair_later", [False, True])
def test_fold_data_free_repair_is_model_foldings_on_hard_clusters(fold_bn, repair_later):
    """method="fold" + data-free repair computes Model Folding's DF_REPAIR network (unequal gammas and
    running variances; OTConfig.fold_batchnorm does not matter to it), also as ifv.repair after repair="none"."""
    model = _mlp(n=12, d=5, seed=3)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].running_var.uniform_(0.3, 2.0)
    x = torch.randn(64, 5, dtype=torch.float64)
    kwargs = dict(method="fold", config=ifv.OTConfig(fold_batchnorm=fold_bn))
    res = ifv.prune(model, x[:1], 0.5, repair="none" if repair_later else "auto", **kwargs)
    g = res.groups[0]
    sizes = torch.bincount(g.assignment)
    assert int(sizes.max()) >= 2, "the case must merge channels"
    reference = _model_folding_reference(model, g.assignment, g.k)
    fixed = ifv.repair(res, model, mode="data-free") if repair_later else res.model
    with torch.no_grad():
        assert torch.allclose(fixed(x), reference(x), atol=1e-9, rtol=1e-9)
        if repair_later:  # before the repair it is another network; repairing twice changes nothing
            assert not torch.allclose(res.model(x), reference(x), atol=1e-3)
        else:
            assert torch.equal(ifv.repair(res, model, mode="data-free")(x), fixed(x))
    with pytest.raises(ValueError, match="Model Folding repairs it"):
        data_free_repair(res, model, correlation="white-inputs")


def test_bad_inputs_raise_our_errors():
    model = _mlp()
    x = torch.randn(8, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="repair must be one of"):
        ifv.prune(model, x[:1], 0.5, repair="bn")
    res = ifv.prune(model, x[:1], 0.5)
    with pytest.raises(ValueError, match="needs a batch"):
        ifv.repair(res, model, mode="bn")
    with pytest.raises(ValueError, match="needs the PruneResult"):
        ifv.repair(res.model, model, mode="data-free")
    with pytest.raises(ValueError, match="correlation must be one of"):
        data_free_repair(res, model, correlation="rows")


def test_repair_refuses_the_wrong_original_model():  # issue 8 (b)
    model = _mlp(n=8)
    x = torch.randn(16, 6, dtype=torch.float64)
    res = ifv.prune(model, x[:1], 0.5)
    wider = _mlp(n=10)
    other_structure = nn.Sequential(nn.Linear(6, 3)).double()
    other_weights = _mlp(n=8, seed=5)
    for wrong in (wider, other_structure, other_weights, res.model):
        for mode, batch in (("bn", x), ("repair", x), ("data-free", None)):
            with pytest.raises(ValueError, match="not the model that was pruned|pruned model itself"):
                ifv.repair(res, wrong, batch, mode=mode)
    ifv.repair(res, model, x, mode="bn")  # the right one works


def test_bn_repair_keeps_gamma_signs_without_folding():  # issue 8 (a)
    model = _mlp(n=8)
    with torch.no_grad():
        model[1].weight.copy_(-model[1].weight.abs() - 0.1)  # every gamma negative
    x = torch.randn(256, 6, dtype=torch.float64)
    res = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig(fold_batchnorm=False))
    assert res.groups[0].cost is not None
    fixed = ifv.repair(res, model, x, mode="bn")
    assert torch.equal(fixed[1].weight, res.model[1].weight), "an unfolded BatchNorm keeps its merged gamma"
    assert bool((fixed[1].weight < 0).all())


def test_layer_drift_is_zero_without_merging_and_positive_with_it():
    model = _cnn_with_duplicates(seed=3)
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    res = ifv.prune(model, x[:1], 0.0)
    rows = ifv.layer_drift(model, res, x)
    assert [r["layer"] for r in rows][-1] == "logits"
    assert all(r["rel_error"] < 1e-9 and abs(r["std_ratio"] - 1) < 1e-9 for r in rows)
    assert rows[-1]["agreement"] == 100.0
    res = ifv.prune(model, x[:1], 0.5, method="default")
    rows = ifv.layer_drift(model, res, x)
    assert rows[0]["rel_error"] < 1e-9, "channels kept by default pruning are unchanged in the first layer"
    assert any(r["rel_error"] > 1e-3 for r in rows[1:])
    from intrafusion_viz.figures._diagnostics import drift_figure

    fig = drift_figure({"no repair": rows}, model_name="tiny CNN", method="default", importance="l1", sparsity=0.5)
    assert "tiny CNN" in fig.layout.title.text and "default" in fig.layout.title.text and "50%" in fig.layout.title.text
    with pytest.raises(ValueError, match="variants is empty"):
        drift_figure({})


def test_free_target_mass_sends_each_channel_whole_to_its_nearest_kept():
    cost = torch.tensor([[0.0, 2.0], [0.5, 0.1], [0.3, 0.9], [2.0, 0.0]], dtype=torch.float64)
    kept = torch.tensor([0, 3])
    cfg = ifv.OTConfig(target_mass="free")
    plan = ifv.transport_plan(cost, ifv.masses("uniform", None, 4), ifv.masses("free", None, 2), cfg, kept=kept)
    expect = torch.tensor([[0.25, 0], [0, 0.25], [0.25, 0], [0, 0.25]], dtype=torch.float64)
    assert torch.equal(plan, expect)
    with pytest.raises(ValueError, match="source_mass"):
        ifv.OTConfig(source_mass="free")
    model = _cnn_with_duplicates()
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    res = ifv.prune(model, x[:1], {0: 0.5}, importance=_keep_last, config=cfg)
    assert _same_function(res.model, model, x)


def test_reference_model_missing_checkpoint_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("INTRAFUSION_VIZ_REFERENCE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train_reference.py"):
        ifv.reference_model("vgg11_bn", seed=0, train_if_missing=False)
    with pytest.raises(ValueError, match="Unknown reference"):
        ifv.reference_model("vgg99")


def test_repair_measures_batchnorm_outputs_before_an_inplace_relu():
    """REPAIR reads BN outputs through hooks; a following ReLU(inplace=True) must not overwrite them."""
    model = _mlp(n=8, d=6)
    model[2] = nn.ReLU(inplace=True)
    x = torch.randn(512, 6, dtype=torch.float64)
    res = ifv.prune(model, x[:1], 0.5)
    fixed = ifv.repair(res, model, x, mode="repair")
    with torch.no_grad():
        src = model[1](model[0](x))
        got = fixed[1](fixed[0](x))
    g = res.groups[0]
    w = g.plan / g.plan.sum(0, keepdim=True)
    assert torch.allclose(got.mean(0), w.T @ src.mean(0), atol=1e-6)
    assert torch.allclose(got.std(0, unbiased=False), w.T @ src.std(0, unbiased=False), rtol=1e-4)


def test_fold_clusters_in_the_span_of_the_channels_as_in_the_full_space():
    """k-means on the n channels' coordinates in their span (d > n) finds the clusters it finds in R^d."""
    from intrafusion_viz.plan._kmeans import kmeans

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 500, generator=gen, dtype=torch.float64) * 3
    x = centres.repeat_interleave(8, 0) + 0.5 * torch.randn(48, 500, generator=gen, dtype=torch.float64)
    eigval, eigvec = torch.linalg.eigh(x @ x.T)
    reduced = eigvec * eigval.clamp_min(0).sqrt()
    assert torch.cdist(reduced, reduced).sub(torch.cdist(x, x)).abs().max() < 1e-5  # distances 15-95: kept
    assert torch.equal(kmeans(x, 6, seed=3), kmeans(reduced, 6, seed=3))
