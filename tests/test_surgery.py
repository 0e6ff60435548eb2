"""The one surgery of ``prune`` on models of every kind of plain layer: behaviour, not a second path.

Plain layers (conv, linear, BatchNorm) get new tensors computed from their current ones, so the work
copy shares those with the caller's model until they are replaced; everything else is merged in
place.  Each case checks what that must never change: the caller's model (values and objects), a
result that shares no storage with it, the same model from a copy and from ``inplace=True`` (bit for
bit), the function at sparsity 0 and after merging exact duplicates; plus the pieces the surgery is
made of (the shared copy, selection without dense maps, tied tensors, channel vectors, folded scores).
"""
import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz.merge._copy import private_copy, unshare
from intrafusion_viz.merge._fold import folded_weights_as
from intrafusion_viz.merge._memo import fold_memo
from intrafusion_viz.merge._positions import _slots
from intrafusion_viz.merge._scores import folded_magnitude_scores, magnitude_scores_from_features
from intrafusion_viz.merge._surgery import shared_tensors
from intrafusion_viz.plan._lazy_cost import dropped_rows_cost

from helpers import TinyResNet, conv_bn_net, duplicate_group, keep_first_half, mlp, randomize_bn, rel_err


def _bn_mlp():
    return nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(),
                         nn.Linear(10, 3))


def _flatten_bn():  # a flatten before a linear layer that has a BatchNorm of its own
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _grouped():  # a grouped conv consumes the channels: merged in place, beside plain layers
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


CASES = {  # name: (model factory, example input shape)
    "tinyresnet": (lambda: TinyResNet(w=8), (2, 3, 8, 8)),
    "conv_bn_net": (lambda: conv_bn_net(c=8), (2, 1, 8, 8)),
    "mlp": (lambda: mlp(widths=(9, 7)), (4, 5)),
    "bn_mlp": (_bn_mlp, (4, 5)),
    "flatten_bn": (_flatten_bn, (4, 1, 4, 4)),
    "grouped": (_grouped, (2, 3, 8, 8)),
}
CONFIGS = {"paper": ifv.OTConfig.paper(), "default": ifv.OTConfig(), "paper_p2": ifv.OTConfig.paper(p=2.0)}


def _model(name, seed=0, train=False):
    factory, shape = CASES[name]
    torch.manual_seed(seed)
    model = randomize_bn(factory(), seed)
    model.train(train)
    return model, torch.randn(*shape)


def _assert_same_model(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and sa[key].shape == sb[key].shape, key
        assert sa[key].stride() == sb[key].stride(), key
        assert torch.equal(sa[key], sb[key]), f"{key} differs"
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert list(pa) == list(pb)
    for key in pa:
        assert type(pa[key]) is type(pb[key]) and pa[key].requires_grad == pb[key].requires_grad, key
    for (na, ma), (nb, mb) in zip(a.named_modules(), b.named_modules()):
        assert na == nb and type(ma) is type(mb) and ma.training == mb.training
        for attr in ("in_channels", "out_channels", "in_features", "out_features", "num_features"):
            assert getattr(ma, attr, None) == getattr(mb, attr, None), f"{na}.{attr}"


def _storages(model: nn.Module) -> set:
    return {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers()) if t.numel()}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("method", ["intra-fusion", "default", "fold"])
def test_a_copy_and_inplace_give_the_same_model_and_the_caller_keeps_its_own(case, config, method):
    model, x = _model(case)
    before = copy.deepcopy(model.state_dict())
    params = list(model.parameters())
    n_groups = len(ifv.find_groups(model, x))
    for sparsity in (0.5, {0: 0.3}, {n_groups - 1: 0.7}):
        res = ifv.prune(model, x, sparsity, method=method, config=CONFIGS[config])
        assert not _storages(res.model) & _storages(model)  # nothing shared with the caller's model
        for key, value in model.state_dict().items():  # the caller's model is untouched
            assert torch.equal(value, before[key]), key
        assert all(p is q for p, q in zip(params, model.parameters()))
        inplace = copy.deepcopy(model)
        res_inplace = ifv.prune(inplace, x, sparsity, method=method, config=CONFIGS[config], inplace=True)
        assert res_inplace.model is inplace
        _assert_same_model(res.model, res_inplace.model)
        for a, b in zip(res.groups, res_inplace.groups):
            assert torch.equal(a.kept, b.kept) and torch.equal(a.plan, b.plan)
        assert res.params_after == res_inplace.params_after == sum(p.numel() for p in res.model.parameters())
        with torch.no_grad():
            out = res.model.eval()(x)
        assert out.shape == model.eval()(x).shape and torch.isfinite(out).all()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["intra-fusion", "default", "fold"])
def test_sparsity_zero_is_the_same_function(case, method):
    model, x = _model(case)
    res = ifv.prune(model.eval(), x, 0.0, method=method)
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) <= 1e-6


@pytest.mark.parametrize("case", ["tinyresnet", "conv_bn_net", "mlp", "bn_mlp"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_merging_exact_duplicates_is_the_same_function(case, config):
    """Every plain layer kind, BatchNorm folded and restored: duplicates merged into their twins."""
    model, x = _model(case)
    if case == "mlp":  # an even width: every channel has a twin
        torch.manual_seed(0)
        model = mlp(widths=(8, 6))
    model.eval()
    group = ifv.find_groups(model, x)[0]
    duplicate_group(model, group)
    cfg = dataclasses.replace(CONFIGS[config], fusion="barycentric")  # the paper's fusion doubles the copies
    res = ifv.prune(model, x, {0: 0.5}, importance=keep_first_half, config=cfg)
    assert torch.equal(res.groups[0].assignment, torch.arange(group.size) % (group.size // 2))
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) <= 1e-5


def test_train_mode_frozen_layers_and_a_working_network():
    model, x = _model("tinyresnet", seed=3, train=True)
    model.layer1[0].bn1.eval()  # a frozen eval-mode BatchNorm inside a train-mode model
    model.conv1.weight.requires_grad_(False)
    stem = next(g for g in ifv.find_groups(model, x) if "conv1" in {m.name for m in g.members})
    res = ifv.prune(model, x, {stem.index: 0.5}, config=ifv.OTConfig.paper())
    assert res.model.conv1.out_channels == 4 and res.model.conv1.weight.shape[0] == 4
    assert not res.model.conv1.weight.requires_grad and res.model.layer1[0].bn1.training is False
    assert res.model.training
    res.model(x).sum().backward()  # trains


def test_vgg11_bn_paper_group_from_a_copy_and_in_place():
    torch.manual_seed(0)
    model = randomize_bn(ifv.models.vgg11_bn(num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    g = {g.paper_index: g for g in ifv.find_groups(model, x)}[1]
    res = ifv.prune(model, x, {g.index: 0.7}, config=ifv.OTConfig.paper())
    same = ifv.prune(copy.deepcopy(model), x, {g.index: 0.7}, config=ifv.OTConfig.paper(), inplace=True)
    _assert_same_model(res.model, same.model)
    assert not _storages(res.model) & _storages(model)
    assert torch.equal(res.model(x), same.model(x))


def test_the_shared_copy_shares_only_what_the_surgery_replaces():
    model, x = _model("tinyresnet")
    groups = ifv.find_groups(model, x)
    shared = shared_tensors(model, groups, range(len(groups)))
    assert shared and all(any(t is p for p in list(model.parameters()) + list(model.buffers()))
                          for t in shared.values())
    copied = private_copy(model, share=shared)
    ours, theirs = _storages(copied), _storages(model)
    assert len(ours & theirs) == len(shared)
    unshare(copied, model)  # what the surgery did not replace becomes the copy's own
    assert not _storages(copied) & theirs
    for (name, a), b in zip(copied.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_tied_tensors_are_never_shared():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(3, 5)
    groups = ifv.find_groups(model, x)
    assert id(model[2].weight) in shared_tensors(model, groups, [0])
    model.extra = nn.Linear(6, 6)  # holds the consumer's weight too (not called in forward)
    model.extra.weight = model[2].weight
    assert id(model[2].weight) not in shared_tensors(model, groups, [0])


@pytest.mark.parametrize("case", ["conv_bn_net", "tinyresnet", "grouped"])
def test_selection_without_maps_is_the_selection_with_its_maps(case):
    model, x = _model(case)
    model.eval()
    for g in ifv.find_groups(model, x):
        if g.size < 2:
            continue
        kept = torch.arange(0, g.size, 2)
        sel = ifv.selection_plan(g.size, kept)
        maps = ifv.merge_matrices(sel)
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        ifv.apply_merge(a, ifv.find_groups(a, x)[g.index], kept, *maps)
        ifv.apply_merge(b, ifv.find_groups(b, x)[g.index], kept, None, None)
        _assert_same_model(a, b)
    with pytest.raises(ValueError, match="both out_map and in_map"):
        ifv.apply_merge(copy.deepcopy(model), ifv.find_groups(model, x)[0], torch.arange(2), maps[0], None)


@pytest.mark.parametrize("case", ["tinyresnet", "conv_bn_net", "bn_mlp", "vgg11_bn"])
@pytest.mark.parametrize("importance", ["l1", "l2"])
@pytest.mark.parametrize("bias", [False, True])
def test_scores_read_from_the_channel_vectors_equal_the_folded_scores(case, importance, bias):
    if case == "vgg11_bn":
        torch.manual_seed(0)
        model, x = randomize_bn(ifv.models.vgg11_bn(num_classes=10)).eval(), torch.randn(1, 3, 32, 32)
    else:
        model, x = _model(case)
    estimator = ifv.resolve_importance(importance, 0)
    applied = 0
    for g in ifv.find_groups(model, x):
        with fold_memo():
            features = ifv.channel_features(model, g, bias=bias)
            expect = folded_magnitude_scores(model, g, estimator)
            got = magnitude_scores_from_features(model, g, estimator, features, bias)
        if got is None:  # a flatten before a linear layer: the general path
            continue
        applied += 1
        assert expect is not None and torch.equal(got, expect), g.name
    assert applied >= 1


@pytest.mark.parametrize("n, k, d", [(40, 13, 70), (512, 153, 300), (9, 8, 5)])
def test_dropped_rows_cost_in_place_equals_the_copying_one(n, k, d):
    g = torch.Generator().manual_seed(n)
    features = torch.randn(n, d, generator=g)
    kept = torch.sort(torch.randperm(n, generator=g)[:k]).values
    cfg = ifv.OTConfig.paper()
    expect = dropped_rows_cost(features, kept, cfg)
    work = features.clone()
    got = dropped_rows_cost(work, kept, cfg, inplace=True)
    assert torch.equal(got.partial, expect.partial) and torch.equal(got.full(), expect.full())
    assert torch.equal(got.full(), ifv.cost_matrix(features, kept, cfg))
    norms = features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    assert torch.equal(work, features / norms)  # unit rows, in place


def test_l1_distances_of_chosen_rows():
    from intrafusion_viz.plan._l1 import l1_distances

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(70, 130, generator=g), torch.randn(33, 130, generator=g)
    rows = torch.tensor([69, 0, 5, 5, 12, 40, 41, 42, 43, 44])
    assert torch.equal(l1_distances(a, b, rows=rows), torch.cdist(a[rows], b, p=1).double())
    assert l1_distances(a, b, rows=rows[:0]).shape == (0, 33)
    with pytest.raises(ValueError, match="rows must be indices"):
        l1_distances(a, b, rows=torch.tensor([70]))


class _Odd(nn.Module):
    """Attributes of every kind a module may hold: lists, dicts, an alias of a child, a shared child."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 2), "b": nn.Linear(4, 3)})
        self.blocks = nn.ModuleList([self.body[0], nn.Identity()])  # the same conv twice in the tree
        self.names = ["x", "y"]
        self.settings = {"scale": 2.0, "mode": "fast"}
        self.act = nn.GELU(approximate="tanh")
        self.register_buffer("steps", torch.tensor(3))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.calls = 0

    def forward(self, x):
        h = self.act(self.body(x)).mean((2, 3))
        return self.heads["a"](h) * self.settings["scale"], self.heads["b"](h)


def test_the_module_tree_copy_is_deepcopy():
    torch.manual_seed(0)
    model = _Odd().eval()
    seen = []
    model.heads["a"].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    torch.nn.utils.parametrizations.weight_norm(model.heads["b"])  # a class that refuses __getstate__
    copied, reference = private_copy(model), copy.deepcopy(model)
    pairs = list(zip(copied.named_modules(remove_duplicate=False), reference.named_modules(remove_duplicate=False)))
    assert len(pairs) == len(list(model.named_modules(remove_duplicate=False)))
    for (na, a), (nb, b) in pairs:
        assert na == nb and type(a) is type(b)
        assert set(vars(a)) == set(vars(b)), na
        for key, value in vars(a).items():
            if not isinstance(value, (torch.Tensor, dict, nn.Module)):
                assert value == vars(b)[key], (na, key)
    assert copied.blocks[0] is copied.body[0] and copied.body[0] is not model.body[0]
    assert copied.names == model.names and copied.names is not model.names
    assert copied.settings is not model.settings
    assert "scratch" in copied._non_persistent_buffers_set
    assert copied._non_persistent_buffers_set is not model._non_persistent_buffers_set
    x = torch.randn(2, 3, 6, 6)
    for got, want in zip(copied(x), model(x)):
        assert torch.equal(got, want)
    assert len(seen) == 2  # the hook came along (once for the original, once for the copy)
    assert {t.untyped_storage().data_ptr() for t in copied.state_dict().values()}.isdisjoint(
        t.untyped_storage().data_ptr() for t in model.state_dict().values())


def test_the_module_tree_copy_of_a_torchvision_model():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    copied = private_copy(model)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(copied(x), model(x))
    assert [type(m) for m in copied.modules()] == [type(m) for m in model.modules()]


@pytest.mark.parametrize("case", ["tinyresnet", "conv_bn_net", "bn_mlp", "flatten_bn", "vgg11_bn"])
@pytest.mark.parametrize("bias", [False, True])
def test_channel_vectors_equal_the_folded_weights_laid_side_by_side(case, bias):
    """Consumers' folded columns are written straight into the vectors: the same numbers as a folded copy."""

    if case == "vgg11_bn":
        torch.manual_seed(0)
        model, x = randomize_bn(ifv.models.vgg11_bn(num_classes=10)).eval(), torch.randn(1, 3, 32, 32)
    else:
        model, x = _model(case)
    modules = dict(model.named_modules())
    for g in ifv.find_groups(model, x):
        got = ifv.channel_features(model, g, bias=bias)
        parts = []
        for m in g.members:
            if m.role not in ("out", "in"):
                continue
            layer = modules[m.name]
            w, b = layer.weight.detach(), layer.bias
            if m.name in g.fold_pairs:
                w, b = folded_weights_as(layer, modules[g.fold_pairs[m.name]])
            moved = w.movedim(m.dim, 0).index_select(0, _slots(m, g.size).flatten())
            parts.append(moved.reshape(g.size, -1))
            if m.role == "out" and bias and b is not None:
                parts.append(b.detach().to(w.dtype).reshape(g.size, 1))
        assert torch.equal(got, torch.cat(parts, 1)), g.name
