"""Data-aware Intra-Fusion: activation features for the cost and statistics repair after merging."""
import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz.repair._data_aware import activation_features, repair

from helpers import (TinyResNet, assert_state_equal, conv_bn_net, duplicate_group, keep_first_half, mlp,
                     randomize_bn, rel_err, state_copy)

torch.manual_seed(0)


@torch.no_grad()
def bn_stats_from(model, x):
    """Set every BatchNorm's running statistics to exactly those of ``x`` (as repair(mode='bn') does)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    model(x)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def no_hooks_left(model):
    return all(not m._forward_hooks for m in model.modules())


def test_activation_features_shape_values_and_model_untouched():
    model = randomize_bn(conv_bn_net(c=6)).eval()
    x = torch.randn(20, 1, 8, 8)
    groups = ifv.find_groups(model, x[:1])
    before = state_copy(model)
    features = activation_features(x, max_samples=16)
    f0 = features(model, groups[0])
    assert f0.shape == (6, 16)
    with torch.no_grad():
        expected = model[1](model[0](x[:16])).mean((2, 3))  # BN output, spatial mean: (16, 6)
    assert torch.allclose(f0, expected.T, atol=1e-6)
    assert_state_equal(model, before)
    assert not model.training and no_hooks_left(model)


def test_activation_features_residual_stream_concatenates_producers():
    model = randomize_bn(TinyResNet(w=4)).train()
    x = torch.randn(10, 3, 16, 16)
    stream = ifv.find_groups(model, x[:1])[0]
    producers = [m for m in stream.members if m.role == "out"]
    f = activation_features(x)(model, stream)
    assert f.shape == (4, 10 * len(producers))
    assert model.training and no_hooks_left(model)  # mode restored after the eval-mode pass


def test_activation_features_hooks_removed_when_forward_fails():
    model = conv_bn_net(c=6).eval()
    group = ifv.find_groups(model, torch.randn(1, 1, 8, 8))[0]
    with pytest.raises(RuntimeError):
        activation_features(torch.randn(4, 3, 8, 8))(model, group)  # wrong channel count
    assert no_hooks_left(model)


def test_prune_with_activation_features_merges_duplicates_exactly():
    # Duplicated channels have identical activations (cost 0), so each is merged into its twin and
    # the pruned model computes what the original did.
    model = randomize_bn(conv_bn_net(c=6)).eval()
    x = torch.randn(32, 1, 8, 8)
    group = ifv.find_groups(model, x[:1])[1]
    duplicate_group(model, group)
    before = state_copy(model)
    res = ifv.prune(model, x[:1], sparsity=0.5, groups=[1], importance=keep_first_half,
                    features=activation_features(x), method="intra-fusion")
    assert res.group(1).k == 3
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) < 1e-5
    assert_state_equal(model, before)


def test_bn_reestimation_on_unpruned_model_keeps_outputs():
    x = torch.randn(64, 3, 16, 16)
    model = bn_stats_from(randomize_bn(TinyResNet(w=4)), x)
    res = ifv.prune(model, x[:1], sparsity=0.0)
    for pruned in (res, res.model):  # a PruneResult or a bare model
        fixed = repair(pruned, model, x, mode="bn")
        assert fixed is not res.model and not fixed.training
        assert rel_err(fixed(x), model(x)) < 1e-5


def test_bn_mode_restores_scale_of_folded_batchnorms():
    # Intra-Fusion folds BatchNorm into the conv; re-estimation must not standardise the folded output.
    x = torch.randn(64, 1, 8, 8)
    model = conv_bn_net(c=6)
    randomize_bn(model)
    with torch.no_grad():
        model[1].weight[0] = -model[1].weight[0]  # a negative gamma is folded into the conv's sign
    model = bn_stats_from(model, x)
    group = ifv.find_groups(model, x[:1])[0]
    duplicate_group(model, group)
    model = bn_stats_from(model, x)
    res = ifv.prune(model, x[:1], sparsity=0.5, groups=[0], importance=keep_first_half, method="intra-fusion")
    assert rel_err(res.model(x), model(x)) < 1e-5
    fixed = repair(res, model, x, mode="bn")
    assert rel_err(fixed(x), model(x)) < 1e-3


@pytest.mark.parametrize("make", [lambda: mlp((8, 10), d_in=5), lambda: randomize_bn(conv_bn_net(c=6))])
def test_repair_at_zero_sparsity_keeps_outputs(make):
    model = make().eval()
    x = torch.randn(40, 5) if isinstance(model[0], nn.Linear) else torch.randn(40, 1, 8, 8)
    res = ifv.prune(model, x[:1], sparsity=0.0)
    assert rel_err(repair(res, model, x, mode="repair")(x), model(x)) < 1e-4


@pytest.mark.parametrize("fusion", ["barycentric", "paper"])
def test_repair_gives_merged_channels_their_sources_statistics(fusion):
    # BN-free: the producer's weights and bias carry the correction.
    model = mlp((12, 10), d_in=5).eval()
    x = torch.randn(200, 5)
    res = ifv.prune(model, x[:1], sparsity=0.5, config=ifv.OTConfig(fusion=fusion))
    before_pruned, before_model = state_copy(res.model), state_copy(model)
    fixed = repair(res, model, x, mode="repair")
    assert_state_equal(res.model, before_pruned)
    assert_state_equal(model, before_model)
    with torch.no_grad():
        for g, producer in zip(res.groups, [model[0], model[2]]):
            idx = 0 if producer is model[0] else 2
            source = model[: idx + 1](x).double()
            merged = fixed[: idx + 1](x).double()
            weights = g.plan / g.plan.sum(0, keepdim=True)
            assert torch.allclose(merged.mean(0), weights.T @ source.mean(0), atol=1e-4)
            assert torch.allclose(merged.std(0, unbiased=False), weights.T @ source.std(0, unbiased=False),
                                  rtol=1e-3, atol=1e-4)


def test_repair_on_resnet_matches_every_producer_statistics():
    # Residual streams: every producer (post-BN) of every pruned group gets its sources' mean and std.
    x = torch.randn(128, 3, 16, 16)
    model = bn_stats_from(randomize_bn(TinyResNet(w=8)), x)
    res = ifv.prune(model, x[:1], sparsity=0.5)
    fixed = repair(res, model, x, mode="repair")
    assert no_hooks_left(fixed) and no_hooks_left(model)
    checked = 0
    for g in res.groups:
        weights = g.plan / g.plan.sum(0, keepdim=True)
        for m in g.members:
            if m.role != "norm" or m.fold_from is None:
                continue
            source, merged = _output_of(model, m.name, x), _output_of(fixed, m.name, x)
            src = source.movedim(1, 0).flatten(1)
            new = merged.movedim(1, 0).flatten(1)
            order = torch.as_tensor(m.local_idxs)[torch.argsort(torch.as_tensor(m.root_idxs))]
            assert torch.allclose(new.mean(1), weights.T @ src[order].mean(1), atol=1e-3)
            assert torch.allclose(new.std(1, unbiased=False), weights.T @ src[order].std(1, unbiased=False),
                                  rtol=1e-3, atol=1e-3)
            checked += 1
    assert checked >= 6


def _output_of(model, name, x):
    seen = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda mod, a, out: seen.setdefault("out", out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen["out"].double()


def test_repair_rejects_bad_arguments():
    model = mlp()
    x = torch.randn(8, 5)
    res = ifv.prune(model, x[:1], sparsity=0.5)
    with pytest.raises(ValueError, match="mode"):
        repair(res, model, x, mode="bogus")
    with pytest.raises(ValueError, match="PruneResult"):
        repair(res.model, model, x, mode="repair")
    with pytest.raises(ValueError, match="max_samples"):
        activation_features(x, max_samples=0)


def test_repair_also_restores_layers_after_the_pruned_group():
    # Pruning group 0 shifts the next layer's outputs; REPAIR gives them back their own statistics.
    x = torch.randn(200, 1, 8, 8)
    model = bn_stats_from(randomize_bn(conv_bn_net(c=6)), x)
    res = ifv.prune(model, x[:1], sparsity=0.5, groups=[0], method="default")
    source = _output_of(model, "4", x).movedim(1, 0).flatten(1)
    shifted = _output_of(res.model, "4", x).movedim(1, 0).flatten(1)
    fixed = _output_of(repair(res, model, x, mode="repair"), "4", x).movedim(1, 0).flatten(1)
    assert not torch.allclose(shifted.mean(1), source.mean(1), atol=1e-2)
    assert torch.allclose(fixed.mean(1), source.mean(1), atol=1e-4)
    assert torch.allclose(fixed.std(1), source.std(1), rtol=1e-3)


def test_bn_mode_after_fold_keeps_the_sign_of_negative_gammas():
    # Model Folding keeps its BatchNorms (it does not fold them into the conv); re-estimating statistics
    # after it must give a merged BatchNorm its sources' gamma, sign included.  Exact duplicates: exact.
    x = torch.randn(64, 1, 8, 8)
    model = conv_bn_net(c=6)
    randomize_bn(model)
    with torch.no_grad():
        model[1].weight[0] = -model[1].weight[0].abs()
    group = ifv.find_groups(model, x[:1])[0]
    duplicate_group(model, group)
    model = bn_stats_from(model, x)
    res = ifv.prune(model, x[:1], sparsity=0.5, groups=[0], method="fold")
    assert res.group(0).assignment.tolist() == [0, 1, 2, 0, 1, 2]
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) < 1e-5
        assert rel_err(repair(res, model, x, mode="bn")(x), model(x)) < 1e-4
