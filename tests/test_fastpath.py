"""The per-call shortcuts of ``prune`` (fold memo, model copy, lazy cost rows, folded scores) change no result.

Each shortcut is checked against the plain computation it replaces: the cost whose kept rows are
filled in on first use against ``cost_matrix``, the fold memo against a fresh fold (and against
stale reuse after an in-place change), the model copy against ``copy.deepcopy`` (values, sharing,
independence), and the one-sum finiteness check against the elementwise one.
"""
import copy
import pickle

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz.merge._copy import private_copy
from intrafusion_viz.merge._memo import _local, exact_scale, fold_memo
from intrafusion_viz.merge._scores import folded_magnitude_importances
from intrafusion_viz.plan._lazy_cost import dropped_rows_cost, dropped_rows_suffice, kept_rows_unused
from intrafusion_viz.plan._transport import all_finite
from intrafusion_viz.merge._surgery import folded_weights

from helpers import TinyResNet, conv_bn_net, randomize_bn


@pytest.mark.parametrize("n, k, d", [(40, 13, 70), (64, 32, 300), (9, 8, 5)])
def test_dropped_rows_cost_completes_to_cost_matrix_bit_for_bit(n, k, d):
    g = torch.Generator().manual_seed(n)
    features = torch.randn(n, d, generator=g)
    kept = torch.sort(torch.randperm(n, generator=g)[:k]).values
    cfg = ifv.OTConfig.paper()
    lazy = dropped_rows_cost(features, kept, cfg)
    expect = ifv.cost_matrix(features, kept, cfg)
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[kept] = False
    assert torch.equal(lazy.partial[dropped], expect[dropped])  # what the plan reads is final
    assert torch.equal(lazy.full(), expect)


@pytest.mark.parametrize("n, k, d", [(40, 13, 70), (64, 32, 300), (9, 8, 5), (300, 210, 900)])
def test_dropped_rows_cost_at_p2_is_cost_matrix_to_float32_rounding(n, k, d):
    """p = 2 (the default config): the same float32 dot products, in fewer rows; the plan reads the same."""
    g = torch.Generator().manual_seed(n)
    features = torch.randn(n, d, generator=g)
    kept = torch.sort(torch.randperm(n, generator=g)[:k]).values
    cfg = ifv.OTConfig()
    assert cfg.p == 2 and dropped_rows_suffice(cfg, ifv.masses("uniform", None, n), ifv.masses("uniform", None, k))
    lazy = dropped_rows_cost(features.clone(), kept, cfg, inplace=True).compact()
    expect = ifv.cost_matrix(features, kept, cfg)
    assert lazy.partial.shape == (n - k, k)
    full = pickle.loads(pickle.dumps(lazy)).full()
    assert torch.allclose(full, expect, rtol=0, atol=1e-5)  # distances of unit vectors, at most 2
    assert torch.equal(full[kept, torch.arange(k)], torch.zeros(k, dtype=torch.float64))
    a, b = ifv.masses("uniform", None, n), ifv.masses("uniform", None, k)
    plan = ifv.transport_plan(full, a, b, cfg, kept=kept)
    assert torch.allclose(plan.sum(0), b, atol=1e-12)
    # random vectors: no two costs within rounding of each other, so the plans are the same
    assert torch.equal(plan, ifv.transport_plan(expect, a, b, cfg, kept=kept))
    for other in (ifv.OTConfig(p=3.0), ifv.OTConfig(standardize=True), ifv.OTConfig(normalize=False)):
        assert not dropped_rows_suffice(other, a, b)


def test_kept_rows_unused_only_where_the_plan_ignores_them():
    n, k = 10, 4
    uniform_a, uniform_b = ifv.masses("uniform", None, n), ifv.masses("uniform", None, k)
    assert kept_rows_unused(ifv.OTConfig.paper(), uniform_a, uniform_b)
    imp = torch.ones(n, dtype=torch.float64)
    imp[3] = 20.0  # a channel heavier than a target's room: some of it moves, its row is read
    heavy = ifv.masses("importance", imp, n)
    assert not kept_rows_unused(ifv.OTConfig.paper(source_mass="importance"), heavy, uniform_b)
    assert not kept_rows_unused(ifv.OTConfig.paper(solver="sinkhorn"), uniform_a, uniform_b)
    assert not kept_rows_unused(ifv.OTConfig.paper(target="centroid"), uniform_a, uniform_b)


def test_the_plan_from_the_partial_cost_is_the_plan_from_the_full_cost():
    g = torch.Generator().manual_seed(1)
    n, k = 30, 11
    features = torch.randn(n, 50, generator=g)
    kept = torch.sort(torch.randperm(n, generator=g)[:k]).values
    cfg = ifv.OTConfig.paper()
    a, b = ifv.masses("uniform", None, n), ifv.masses("uniform", None, k)
    full = ifv.transport_plan(ifv.cost_matrix(features, kept, cfg), a, b, cfg, kept=kept)
    lazy = ifv.transport_plan(dropped_rows_cost(features, kept, cfg).partial, a, b, cfg, kept=kept)
    assert torch.equal(full, lazy)


def test_prune_records_the_full_cost_and_it_survives_pickling():
    torch.manual_seed(0)
    model = randomize_bn(conv_bn_net(c=8)).eval()
    x = torch.randn(2, 1, 8, 8)
    group = ifv.find_groups(model, x)[0]
    cfg = ifv.OTConfig.paper()
    res = ifv.prune(model, x, {group.index: 0.5}, config=cfg)
    record = res.groups[0]
    clone = pickle.loads(pickle.dumps(record))
    expect = ifv.cost_matrix(ifv.channel_features(model, group, bias=False), record.kept, cfg)
    assert torch.equal(record.cost, expect)
    assert torch.equal(clone.cost, expect)
    assert torch.equal(record.cost[record.kept, torch.arange(record.k)], torch.zeros(record.k, dtype=torch.float64))


@torch.no_grad()
def test_fold_memo_reuses_a_fold_only_while_its_tensors_are_unchanged():
    torch.manual_seed(0)
    model = randomize_bn(conv_bn_net(c=6)).eval()
    conv, bn = model[0], model[1]
    fresh_w, fresh_b = folded_weights(conv, bn)  # outside the block: no memo
    with fold_memo():
        w, b = folded_weights(conv, bn)
        assert torch.equal(w, fresh_w) and torch.equal(b, fresh_b)
        assert folded_weights(conv, bn)[0].data_ptr() == w.data_ptr()  # computed once
        assert folded_weights(conv, bn, "authors")[0].data_ptr() != w.data_ptr()
        copied = private_copy(model)  # an untouched clone has the original's fold
        assert folded_weights(copied[0], copied[1])[0].data_ptr() == w.data_ptr()
        copied[1].running_var.mul_(4.0)  # changed in place: folded again, with the new values
        w2, _ = folded_weights(copied[0], copied[1])
        assert torch.allclose(w2, w / 2, rtol=1e-4)
        bn.weight.mul_(3.0)
        assert torch.allclose(folded_weights(conv, bn)[0], 3 * w)
        bn.weight.div_(3.0)
    assert getattr(_local, "memo", None) is None  # nothing outlives the block


def _tensors(model):
    return list(model.state_dict(keep_vars=True).values())


@torch.no_grad()
def test_private_copy_is_deepcopy_and_shares_nothing():
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).train()
    model.layer1[0].conv1.weight.requires_grad_(False)
    model.register_buffer("view_a", torch.arange(6.0))
    model.register_buffer("view_b", model.view_a[2:])  # two buffers on one storage stay one storage
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copied = private_copy(model)
    reference = copy.deepcopy(model)
    assert list(copied.state_dict()) == list(reference.state_dict())
    for (name, a), b in zip(copied.state_dict(keep_vars=True).items(), _tensors(reference)):
        assert type(a) is type(b) and a.dtype == b.dtype and torch.equal(a, b), name
        assert a.requires_grad == b.requires_grad, name
    assert [m.training for m in copied.modules()] == [m.training for m in model.modules()]
    ours = {t.untyped_storage().data_ptr() for t in _tensors(model)}
    assert not ours & {t.untyped_storage().data_ptr() for t in _tensors(copied)}
    assert copied.view_b.untyped_storage().data_ptr() == copied.view_a.untyped_storage().data_ptr()
    for t in _tensors(copied):
        t.add_(1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_prune_result_is_independent_of_the_callers_model():
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).eval()
    x = torch.randn(2, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = ifv.find_groups(model, x)
    res = ifv.prune(model, x, {groups[1].index: 0.5}, config=ifv.OTConfig.paper())
    ours = {t.untyped_storage().data_ptr() for t in _tensors(model)}
    assert not ours & {t.untyped_storage().data_ptr() for t in _tensors(res.model)}
    with torch.no_grad():
        for t in _tensors(res.model):
            t.mul_(-2).add_(1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_all_finite():
    assert all_finite(torch.randn(100, 7))
    assert all_finite(torch.empty(0))
    assert all_finite(torch.full((4,), 3e38))  # the sum overflows; every entry is finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(50)
        t[17] = bad
        assert not all_finite(t)
    t = torch.zeros(4)
    t[0], t[1] = float("inf"), -float("inf")
    assert not all_finite(t)
    assert all_finite(torch.arange(5))


@pytest.mark.parametrize("layer, bn", [
    (nn.Conv2d(5, 7, 3), nn.BatchNorm2d(7)),
    (nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6, affine=False)),
    (nn.ConvTranspose2d(4, 6, 3), nn.BatchNorm2d(6)),
    (nn.Linear(9, 8), nn.BatchNorm1d(8)),
    (nn.Conv1d(3, 5, 2, bias=False), nn.BatchNorm1d(5)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bn_eps", ["exact", "authors"])
def test_folded_weights_as_is_the_float64_fold_cast_bit_for_bit(layer, bn, dtype, bn_eps):
    from intrafusion_viz.merge._surgery import folded_weights_as

    torch.manual_seed(0)
    layer, bn = layer.to(dtype), bn.to(dtype)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.3, 2)
        if bn.affine:
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    w64, b64 = folded_weights(layer, bn, bn_eps)
    w, b = folded_weights_as(layer, bn, bn_eps)
    assert w.dtype == dtype and w.shape == layer.weight.shape
    assert torch.equal(w, w64.to(dtype)) and torch.equal(b, b64)


@pytest.mark.parametrize("shape, factor_shape", [((300, 500), (300, 1)), ((64, 70, 3, 3), (64, 1, 1, 1)),
                                                 ((6, 300, 7, 7), (1, 300, 1, 1)), ((5,), (5,))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_scale_is_the_float64_product_cast_bit_for_bit(shape, factor_shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    f = torch.rand(factor_shape, generator=g, dtype=torch.float64) * 3 + 1e-3
    assert torch.equal(exact_scale(x, f), (x.double() * f).to(dtype))
    y = x.clone()
    exact_scale(y, f, divide=True, out=y)
    assert torch.equal(y, (x.double() / f).to(dtype))


@pytest.mark.parametrize("build", [
    lambda: randomize_bn(TinyResNet()), lambda: randomize_bn(conv_bn_net(c=6)),
    lambda: randomize_bn(ifv.models.vgg11_bn(num_classes=10, width_mult=0.25)),
    lambda: randomize_bn(ifv.models.resnet18(num_classes=10, width=8)),
])
@pytest.mark.parametrize("p", [1, 2])
def test_folded_magnitude_scores_equal_scoring_a_folded_copy_bit_for_bit(build, p):
    import torch_pruning as tp
    from intrafusion_viz.merge._surgery import folded_copy_of_groups
    from intrafusion_viz.groups._trace import _trace, bind_groups
    from intrafusion_viz.plan._importance import group_importance

    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(1, 1, 8, 8) if isinstance(model, nn.Sequential) else torch.randn(1, 3, 32, 32)
    groups = ifv.find_groups(model, x)
    trace = _trace(model, x)
    estimator = tp.importance.GroupMagnitudeImportance(p=p)
    folded = bind_groups(trace.specs, folded_copy_of_groups(model, groups), trace.fold_pairs)
    fast = folded_magnitude_importances(model, groups, estimator)
    assert fast is not None
    for g in groups:
        assert torch.equal(fast[g.index], group_importance(folded[g.index], estimator)), g.name
    assert folded_magnitude_importances(model, groups, tp.importance.LAMPImportance(p=2)) is None
    assert folded_magnitude_importances(model, groups, tp.importance.GroupMagnitudeImportance(bias=True)) is None
