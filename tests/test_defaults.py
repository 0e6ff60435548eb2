"""The default call ``ifv.prune(model, x, s)`` (Model Folding: ``method="fold"``) and transport with capacities.

Properties of transport with capacities (``target_mass="capped"``): hard, every target 1..m channels, least
total cost, kept channels stay themselves with most-important targets; capacitated k-means; and what the
default call resolves to (``resolve_default``).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import intrafusion_viz as ifv
from intrafusion_viz.plan._centroids import _capped_labels, capped_cluster_labels, capped_size
from intrafusion_viz.plan._config import default_config, resolve_default


def _uniform(n):
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def test_capped_size_is_ceil_of_capacity_times_mean():
    assert capped_size(64, 16, 2.0) == 8
    assert capped_size(10, 3, 1.0) == 4  # ceil(10 / 3): a balanced assignment still fits everyone
    assert capped_size(10, 3, 1.5) == 5
    assert capped_size(5, 4, 10.0) == 2  # never more than n - k + 1 (every other target keeps one)


@pytest.mark.parametrize("n,k,capacity,seed", [(7, 3, 1.0, 0), (8, 3, 1.5, 1), (6, 2, 2.0, 2), (7, 4, 1.0, 3)])
def test_capped_assignment_is_the_cheapest_with_bounded_sizes(n, k, capacity, seed):
    """Brute force over every assignment of n rows to k columns with 1..m rows each: same least cost."""
    cost = torch.rand(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cost[:, 0] -= 1.0  # every row prefers column 0: the cap must bind
    m = capped_size(n, k, capacity)
    labels = _capped_labels(cost, capacity)
    sizes = torch.bincount(labels, minlength=k)
    assert int(sizes.min()) >= 1 and int(sizes.max()) <= m
    got = float(cost[torch.arange(n), labels].sum())
    best = math.inf
    for assign in itertools.product(range(k), repeat=n):
        counts = [assign.count(j) for j in range(k)]
        if min(counts) >= 1 and max(counts) <= m:
            best = min(best, float(cost[torch.arange(n), torch.tensor(assign)].sum()))
    assert got == pytest.approx(best, abs=1e-12)


def test_capped_plan_is_hard_with_the_source_masses_and_bounded_columns():
    x = torch.randn(64, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kept = torch.arange(0, 64, 4)
    cfg = ifv.OTConfig.capped(capacity=1.5)
    cost = ifv.cost_matrix(x, kept, cfg)
    plan = ifv.transport_plan(cost, _uniform(64), _uniform(16), cfg, kept=kept)
    assert torch.equal((plan > 0).sum(1), torch.ones(64, dtype=torch.long))  # every channel whole to one target
    torch.testing.assert_close(plan.sum(1), _uniform(64), rtol=0, atol=1e-15)
    sizes = (plan > 0).sum(0)
    assert int(sizes.min()) >= 1 and int(sizes.max()) <= capped_size(64, 16, 1.5) == 6


def test_capped_with_most_important_targets_keeps_kept_channels_in_place():
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kept = torch.tensor([0, 3, 9, 17, 21, 33])
    cfg = ifv.OTConfig(target_mass="capped", capacity=1.0)
    cost = ifv.cost_matrix(x, kept, cfg)
    plan = ifv.transport_plan(cost, _uniform(40), _uniform(6), cfg, kept=kept)
    assert torch.equal(plan[kept].argmax(1), torch.arange(6))
    assert int((plan > 0).sum(0).max()) <= capped_size(40, 6, 1.0) == 7


def test_capacity_is_validated():
    with pytest.raises(ValueError, match="capacity must be a number >= 1"):
        ifv.OTConfig(capacity=0.5)
    with pytest.raises(TypeError, match="capacity"):
        ifv.OTConfig(capacity="2")


def test_capped_cluster_labels_bound_sizes_and_keep_clusters_that_fit():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 5, generator=gen, dtype=torch.float64) * 0.1,  # one dense blob of 30
                   torch.randn(10, 5, generator=gen, dtype=torch.float64) * 3.0])
    gram = x @ x.T
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.arange(1, 11) % 8])  # k = 8
    capped = capped_cluster_labels(gram, labels, 8, capacity=1.5)  # at most ceil(1.5 * 40 / 8) = 8
    sizes = torch.bincount(capped, minlength=8)
    assert int(sizes.max()) <= capped_size(40, 8, 1.5) == 8 and int(sizes.min()) >= 1
    assert torch.equal(capped_cluster_labels(gram, labels, 8, capacity=10.0), labels)  # already fits: unchanged


def test_default_call_resolution():
    capped, fold = ifv.OTConfig.capped(), ifv.OTConfig()
    # a model with BatchNorm statistics: Intra-Fusion with capacities, repaired on synthetic inputs
    assert resolve_default(None, None, "auto", synthesizable=True) == ("intra-fusion", capped, "synthetic")
    assert resolve_default(None, None, "none", synthesizable=True) == ("intra-fusion", capped, "none")
    # without: Model Folding exactly
    assert resolve_default(None, None) == ("fold", fold, "auto")
    assert resolve_default(None, ifv.OTConfig.paper()) == ("intra-fusion", ifv.OTConfig.paper(), "auto")
    assert resolve_default("fold", None, synthesizable=True) == ("fold", fold, "auto")  # Model Folding exactly
    # method="intra-fusion" alone: the balanced barycentric plan onto the kept channels (exact on duplicates)
    assert resolve_default("intra-fusion", None, synthesizable=True) == ("intra-fusion", fold, "auto")


def test_default_config_per_method_and_the_presets_one_switch_away():
    assert default_config("intra-fusion") == ifv.OTConfig()
    assert default_config("fold") == ifv.OTConfig() and default_config("default") == ifv.OTConfig()
    assert ifv.OTConfig.capped().auto_repair("intra-fusion") == "data-free"
    assert ifv.OTConfig.paper().auto_repair("intra-fusion") == "none"  # the balanced plan: no repair
    assert ifv.OTConfig().auto_repair("default") == "none"
    assert ifv.OTConfig().auto_repair("fold") == "data-free"


def _net():
    torch.manual_seed(0)
    model = ifv.models.vgg11_bn(num_classes=10, width_mult=0.125, in_channels=1).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as in a trained network
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model, torch.randn(8, 1, 32, 32)


def test_default_call_on_batchnorm_nets_is_capped_intra_fusion_repaired_on_synthetic_inputs():
    model, x = _net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    default = ifv.prune(model, x[:1], 0.5)
    assert (default.method, default.config) == ("intra-fusion", ifv.OTConfig.capped())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # the caller's model unchanged
    # the same network as the pipeline spelled out: capped plan, data-free repair, then BatchNorm statistics
    # re-estimated on inputs synthesised from the unpruned model (no data)
    spelled = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig.capped(), repair="data-free")
    synthetic = ifv.synthetic_inputs(model, x[:1], n=64, steps=200, seed=0)
    by_hand = ifv.repair(spelled, model, synthetic, mode="bn")
    with torch.no_grad():
        torch.testing.assert_close(default.model(x), by_hand(x), rtol=1e-5, atol=1e-6)
        # and it is not the data-free repair alone
        assert not torch.allclose(default.model(x), spelled.model(x), atol=1e-4)
    # in place: the same network (the BatchNorm affines were read before the merge)
    copy = _net()[0]
    inplace = ifv.prune(copy, x[:1], 0.5, inplace=True)
    with torch.no_grad():
        torch.testing.assert_close(inplace.model(x), default.model(x), rtol=1e-5, atol=1e-6)
    one = ifv.prune(model, x[:1], 0.5, groups=[0])  # one group: the same rule
    assert one.method == "intra-fusion" and [g.index for g in one.groups if g.k < g.n] == [0]


def test_default_call_without_batchnorm_is_model_folding():
    torch.manual_seed(0)
    model, x = ifv.models.MLP(), torch.randn(8, 64)
    default = ifv.prune(model, x[:1], 0.5)
    assert default.method == "fold" and default.config == ifv.OTConfig()
    explicit = ifv.prune(model, x[:1], 0.5, method="fold")
    with torch.no_grad():
        torch.testing.assert_close(default.model(x), explicit.model(x), rtol=0, atol=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="synthetic.*BatchNorm"):
        ifv.prune(model, x[:1], 0.5, repair="synthetic", inplace=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_capped_fold_bounds_model_foldings_clusters():
    model, x = _net()
    capped = ifv.prune(model, x[:1], 0.5, method="fold", config=ifv.OTConfig.capped_fold(capacity=1.0))
    for g in capped.groups:
        if g.k < g.n:
            plan = torch.as_tensor(g.plan)
            assert bool(((plan > 0).sum(1) == 1).all())  # hard clusters
            assert int((plan > 0).sum(0).max()) <= capped_size(g.n, g.k, 1.0)
    with torch.no_grad():
        assert torch.isfinite(capped.model(x)).all()


def test_capped_preset_is_capped_hartigan_clusters_with_the_data_free_repair():
    model, x = _net()
    res = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig.capped())  # repair="auto" -> data-free
    assert res.method == "intra-fusion"
    explicit = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig.capped(), repair="data-free")
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), explicit.model(x), rtol=0, atol=0)
        unrepaired = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig.capped(), repair="none")
        assert not torch.allclose(res.model(x), unrepaired.model(x), atol=1e-4)  # the repair did act
    for g in res.groups:
        if g.k < g.n:
            assert int((torch.as_tensor(g.plan) > 0).sum(0).max()) <= capped_size(g.n, g.k, 2.0)


def test_paper_preset_is_still_the_balanced_plan_without_repair():
    model, x = _net()
    paper = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig.paper())
    explicit = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig.paper(), repair="none")
    with torch.no_grad():
        torch.testing.assert_close(paper.model(x), explicit.model(x), rtol=0, atol=0)


def test_default_call_over_the_synthetic_budget_is_model_folding_with_a_warning(monkeypatch):
    from intrafusion_viz.repair import _synthetic

    model, x = _net()
    flops = _synthetic.synthetic_flops(model, x[:1])
    assert flops == pytest.approx(3 * 64 * 200 * _synthetic.synthetic_flops(model, x[:1], n=1, steps=1) / 3)
    monkeypatch.setitem(_synthetic.SYNTHETIC_FLOP_BUDGET, "cpu", flops / 2)
    with pytest.warns(UserWarning, match="synthetic inputs.*Model Folding.*repair='synthetic'"):
        res = ifv.prune(model, x[:1], 0.5)
    assert (res.method, res.config) == ("fold", ifv.OTConfig())
    # asked for explicitly, the synthetic repair runs whatever it costs
    res = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig.capped(), repair="synthetic")
    assert res.method == "intra-fusion"
