"""Bugs found by hostile use (issue 8), one test each: modes, BatchNorm in train mode, all-zero groups,
Group without pruning methods."""
import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

import intrafusion_viz as ifv
from intrafusion_viz.pruning import _steps as _prune

from helpers import (TinyResNet, assert_state_equal, conv_bn_net, duplicate_group, keep_first_half, mlp,
                     randomize_bn, rel_err, state_copy)


def _modes(model):
    return [(name, m.training) for name, m in model.named_modules()]


# ---------------------------------------------------------------- per-module modes

@pytest.mark.parametrize("importance", ["l1", "taylor"])
@pytest.mark.parametrize("inplace", [False, True])
def test_each_module_keeps_its_mode(importance, inplace):
    model = randomize_bn(TinyResNet()).train()
    model.layer1[0].bn1.eval()  # a frozen BatchNorm inside a model that trains
    model.linear.eval()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    before = _modes(model)
    res = ifv.prune(model, x[:1], 0.5, importance=importance, batch=(x, y), inplace=inplace)
    assert _modes(res.model) == before
    assert _modes(model) == before


# ---------------------------------------------------------------- folded BatchNorm in train mode

def _duplicated_conv_bn(dtype=torch.float32):
    x = torch.randn(16, 1, 8, 8, dtype=dtype)
    model = randomize_bn(conv_bn_net(c=6)).to(dtype).eval()
    with torch.no_grad():
        model[1].weight[1] = -model[1].weight[1]  # a negative gamma: its sign lives in the folded conv
    duplicate_group(model, ifv.find_groups(model, x[:1])[0])
    return model, x


def _train_forward(model, x):
    """One train-mode forward (batch statistics) on a copy, so running statistics stay as they are."""
    return copy.deepcopy(model).train()(x)


@pytest.mark.parametrize("fusion", ["barycentric", "paper"])
def test_merged_duplicates_train_like_the_original(fusion):
    """Before the fix the folded BatchNorm re-normalised in train mode, losing gamma and beta (rel. error ~1)."""
    model, x = _duplicated_conv_bn()
    res = ifv.prune(model, x[:1], 0.5, groups=[0], importance=keep_first_half,
                    config=ifv.OTConfig(fusion=fusion))
    if fusion == "barycentric":  # an exact merge: the same function in both modes
        assert rel_err(res.model.eval()(x), model(x)) <= 1e-5
        assert rel_err(_train_forward(res.model, x), _train_forward(model, x)) <= 1e-5
    # the merged BatchNorm carries the kept channels' |gamma|, beta and statistics, and the conv its rows
    bn, source = res.model[1], model[1]
    assert torch.allclose(bn.weight, source.weight[:3].abs(), atol=1e-6)
    assert torch.allclose(bn.bias, source.bias[:3], atol=1e-6)
    assert torch.allclose(bn.running_var, source.running_var[:3], atol=1e-6)
    sign = torch.sign(source.weight[:3]).view(-1, 1, 1, 1)
    scale = 2.0 if fusion == "paper" else 1.0  # the paper's map sums the two copies' rows
    assert torch.allclose(res.model[0].weight, scale * sign * model[0].weight[:3], atol=1e-5)


def test_sparsity_zero_trains_like_the_original():
    model = randomize_bn(TinyResNet()).train()
    x = torch.randn(8, 3, 16, 16)
    res = ifv.prune(model, x[:1], 0.0)
    assert rel_err(_train_forward(res.model, x), _train_forward(model, x)) <= 1e-6


def test_restoring_batchnorms_keeps_the_merged_eval_function_exactly(monkeypatch):
    """Eval mode after the restore equals the folded, merged model (float64: to 1e-12)."""
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).double().eval()
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    restored = ifv.prune(model, x[:1], 0.5, method="intra-fusion").model
    monkeypatch.setattr(_prune, "restore_folded_batchnorms", lambda *args, **kwargs: None)
    folded_only = ifv.prune(model, x[:1], 0.5, method="intra-fusion").model
    with torch.no_grad():
        assert rel_err(restored(x), folded_only(x)) <= 1e-12
    # the folded-only BatchNorms are identities; the restored ones are not (their gamma is back)
    assert torch.allclose(folded_only.bn1.weight, torch.ones_like(folded_only.bn1.weight))
    assert not torch.allclose(restored.bn1.weight, torch.ones_like(restored.bn1.weight))
    # and the pruned model trains: a few SGD steps lower the loss
    y = torch.randint(0, 5, (6,))
    restored.train()
    opt = torch.optim.SGD(restored.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(restored(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------- all-zero groups, dead ReLUs

def _zero_group_mlp():
    model = mlp((6, 8))
    with torch.no_grad():  # group 0 is dead: its rows, bias and the consumer's columns are zero
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[2].weight.zero_()
    return model


@pytest.mark.parametrize("importance", ["l1", "l2", "lamp", tp.importance.GroupMagnitudeImportance(p=2)])
def test_all_zero_group_is_pruned_not_nan(importance):
    """Before the fix: 0/0 in Torch-Pruning's normaliser, NaN scores, the whole prune aborted."""
    model = _zero_group_mlp()
    x = torch.randn(4, 5)
    res = ifv.prune(model, x, 0.5, importance=importance, method="intra-fusion")
    zero = res.group(0)
    assert torch.equal(zero.importance, torch.zeros(6, dtype=torch.float64))
    assert torch.equal(zero.kept, torch.arange(3))  # ties keep the lowest indices
    assert torch.isfinite(res.group(1).importance).all()
    again = ifv.prune(model, x, 0.5, importance=importance, method="intra-fusion")
    assert torch.equal(again.group(0).kept, zero.kept)
    with torch.no_grad():
        assert torch.isfinite(res.model(x)).all()
        assert torch.isfinite(ifv.prune(model, x, 0.5, importance=importance).model(x)).all()  # the default call


def test_dead_relus_under_taylor():
    model = mlp((6, 8))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every unit of group 0 is dead on the data: zero gradients
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    res = ifv.prune(model, x[:1], 0.5, importance="taylor", batch=(x, y))
    assert torch.equal(res.group(0).importance, torch.zeros(6, dtype=torch.float64))
    assert [g.k for g in res.groups] == [3, 4]


def test_only_groups_that_lose_channels_are_scored():
    model = _zero_group_mlp()
    scored = []

    def importance(group):
        scored.append(group.index)
        return torch.rand(group.size)
    res = ifv.prune(model, torch.randn(4, 5), {0: 0.0, 1: 0.5}, importance=importance)
    assert scored == [1]
    g0 = res.group(0)
    assert g0.k == g0.n and torch.isnan(g0.importance).all() and torch.equal(g0.kept, torch.arange(6))
    res = ifv.prune(model, torch.randn(4, 5), 0.0, importance="taylor")  # no batch needed: nothing is scored
    assert all(g.k == g.n for g in res.groups)


# ---------------------------------------------------------------- Group holds the caller's modules

def test_group_has_no_pruning_methods():
    model = conv_bn_net()
    x = torch.randn(1, 1, 8, 8)
    state = state_copy(model)
    g = ifv.find_groups(model, x)[0]
    for name in ("prune", "add_dep", "add_and_merge", "__setitem__"):
        assert not hasattr(g, name), name
    assert all(not callable(item.dep) for item in g)
    with pytest.raises(TypeError):
        g[0].dep([0, 1])
    assert_state_equal(model, state)
    assert model[0].out_channels == 6


@pytest.mark.parametrize("estimator", [
    tp.importance.GroupMagnitudeImportance(p=1), tp.importance.LAMPImportance(), tp.importance.FPGMImportance(),
    tp.importance.BNScaleImportance(), tp.importance.RandomImportance(), tp.importance.GroupTaylorImportance(),
])
def test_torch_pruning_importances_accept_our_group(estimator):
    model = randomize_bn(conv_bn_net()).eval()
    x = torch.randn(4, 1, 8, 8)
    if isinstance(estimator, tp.importance.GroupTaylorImportance):
        nn.functional.cross_entropy(model(x), torch.randint(0, 4, (4,))).backward()
    g = ifv.find_groups(model, x[:1])[0]
    scores = estimator(g)
    assert scores.shape == (g.size,) and torch.isfinite(scores).all()
