"""Engine invariants: groups, BatchNorm folding, function preservation, the caller's model untouched."""
import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz import models

from helpers import (TinyResNet, assert_state_equal, conv_bn_net, duplicate_group, keep_first_half, mlp,
                     randomize_bn, rel_err, state_copy)

torch.manual_seed(0)


# ---------------------------------------------------------------- groups

def test_vgg11_groups_and_paper_numbering():
    model = models.vgg11_bn(width_mult=0.125)
    groups = ifv.find_groups(model, torch.randn(1, 3, 32, 32))
    names = [g.name for g in groups]
    assert names == ["features.0", "features.4", "features.8", "features.11",
                     "features.15", "features.18", "features.22", "features.25"]
    assert [g.index for g in groups] == list(range(8))
    assert groups[6].paper_index == 1  # the paper's G1 is features.22
    g = groups[0]
    roles = {name: role for name, role, _ in g.layers}
    assert roles == {"features.0": "out", "features.1": "norm", "features.4": "in"}
    assert g.size == model.features[0].out_channels
    # the classifier's outputs are not a group; with include_outputs they are
    all_groups = ifv.find_groups(model, torch.randn(1, 3, 32, 32), include_outputs=True)
    assert len(all_groups) == 9 and all_groups[-1].name == "classifier"


def test_resnet_stream_is_one_group():
    model = TinyResNet()
    groups = ifv.find_groups(model, torch.randn(1, 3, 16, 16))
    stream = groups[0]
    assert stream.name == "conv1"
    out_layers = {m.name for m in stream.members if m.role == "out"}
    assert out_layers == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    in_layers = {m.name for m in stream.members if m.role == "in"}
    assert in_layers == {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"}
    stream2 = [g for g in groups if "layer2.0.shortcut.0" in {m.name for m in g.members if m.role == "out"}]
    assert len(stream2) == 1 and "linear" in {m.name for m in stream2[0].members if m.role == "in"}


def test_find_groups_does_not_touch_model_and_is_cached():
    model = randomize_bn(TinyResNet()).train()
    state = state_copy(model)
    x = torch.randn(2, 3, 16, 16)
    g1 = ifv.find_groups(model, x)
    g2 = ifv.find_groups(model, x)
    assert model.training
    assert_state_equal(model, state)
    assert [g.members for g in g1] == [g.members for g in g2]
    from intrafusion_viz.groups._trace import _TRACE_CACHE
    assert model in _TRACE_CACHE


def test_torch_pruning_importance_accepts_group():
    import torch_pruning as tp
    model = models.vgg11_bn(width_mult=0.125)
    g = ifv.find_groups(model, torch.randn(1, 3, 32, 32))[2]
    scores = tp.importance.GroupMagnitudeImportance(p=1)(g)
    assert scores.shape == (g.size,)


# ---------------------------------------------------------------- BatchNorm folding

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("make", [conv_bn_net, TinyResNet, lambda: models.vgg11_bn(width_mult=0.125)])
def test_fold_batchnorm_keeps_outputs(make, dtype, tol):
    model = randomize_bn(make()).to(dtype).eval()
    shape = (3, 1, 8, 8) if isinstance(model, nn.Sequential) else (3, 3, 32, 32) if isinstance(model, models.VGG) else (3, 3, 16, 16)
    x = torch.randn(*shape, dtype=dtype)
    state = state_copy(model)
    folded = ifv.fold_batchnorm(model, x[:1])
    assert_state_equal(model, state)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= tol
    bns = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.running_mean == 0) for b in bns)
    folded.train()(x).sum().backward()  # still trains


# ---------------------------------------------------------------- function preservation

CASES = {
    "mlp": (lambda: mlp(), (4, 5)),
    "conv_bn": (lambda: randomize_bn(conv_bn_net()), (4, 1, 8, 8)),
    "resnet": (lambda: randomize_bn(TinyResNet()), (4, 3, 16, 16)),
}


@pytest.mark.parametrize("method", ["default", "intra-fusion"])
@pytest.mark.parametrize("case", list(CASES))
def test_sparsity_zero_keeps_outputs(case, method):
    make, shape = CASES[case]
    model = make().eval()
    x = torch.randn(*shape)
    res = ifv.prune(model, x[:1], 0.0, method=method)
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) <= 1e-5
    assert all(g.k == g.n for g in res.groups)


def _duplicated(case):
    make, shape = CASES[case]
    model = make().eval()
    x = torch.randn(*shape)
    group = ifv.find_groups(model, x[:1])[0]
    duplicate_group(model, group)
    return model, x


@pytest.mark.parametrize("solver_target", [("emd", "most_important"), ("emd", "centroid")])
@pytest.mark.parametrize("case", list(CASES))
def test_merging_exact_duplicates_keeps_outputs(case, solver_target):
    model, x = _duplicated(case)
    solver, target = solver_target
    cfg = ifv.OTConfig(solver=solver, target=target)
    res = ifv.prune(model, x[:1], 0.5, groups=[0], importance=keep_first_half, config=cfg)
    g = res.groups[0]
    assert g.k == g.n // 2 and torch.equal(g.kept, torch.arange(g.n // 2))
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) <= 1e-5
    # every copy went to its twin
    assert torch.equal(g.assignment, torch.arange(g.n) % (g.n // 2))


@pytest.mark.parametrize("case,consumer", [("mlp", 3), ("conv_bn", 4)])
def test_paper_fusion_doubles_the_next_layer_input_of_duplicates(case, consumer):
    """The paper's map sums both the producer rows and the consumer columns of two copies, so the
    merged group feeds the next layer twice what it did: z' = 2 (z - bias) + bias (ReLU is 1-homogeneous)."""
    model, x = _duplicated(case)
    res = ifv.prune(model, x[:1], 0.5, groups=[0], importance=keep_first_half,
                    config=ifv.OTConfig(fusion="paper"))
    bias = model[consumer - 1].bias
    bias = 0.0 if bias is None else bias.view(1, -1, *[1] * (x.dim() - 2))
    with torch.no_grad():
        z, z_paper = model[:consumer](x), res.model[:consumer](x)
        assert rel_err(z_paper, 2 * (z - bias) + bias) <= 1e-5
        assert rel_err(res.model(x), model(x)) > 1e-2  # so the network's output changes


def test_default_pruning_is_plain_selection():
    model = randomize_bn(conv_bn_net()).eval()
    x = torch.randn(2, 1, 8, 8)
    res = ifv.prune(model, x[:1], 0.5, method="default", groups=[0])
    kept = res.groups[0].kept
    assert torch.equal(res.model[0].weight, model[0].weight[kept])
    assert torch.equal(res.model[1].running_var, model[1].running_var[kept])
    assert torch.equal(res.model[3].weight, model[3].weight[:, kept])
    assert res.groups[0].cost is None


# ---------------------------------------------------------------- the result and the caller's model

@pytest.mark.parametrize("method", ["default", "intra-fusion"])
def test_pruned_model_shapes_and_caller_untouched(method):
    model = randomize_bn(TinyResNet(w=8)).train()
    state = state_copy(model)
    x = torch.randn(4, 3, 16, 16)
    res = ifv.prune(model, x[:2], 0.5, method=method)
    assert model.training and res.model.training
    assert_state_equal(model, state)
    pruned = res.model
    assert pruned.conv1.out_channels == 4 and pruned.layer2[0].conv1.out_channels == 8
    assert pruned.linear.in_features == 8
    pruned(x).sum().backward()
    pruned.eval()(x)
    assert res.params_after < res.params_before


def test_records_are_consistent():
    model = models.vgg11_bn(width_mult=0.125).eval()
    x = torch.randn(1, 3, 32, 32)
    # the balanced plan (OTConfig()); the default call folds capped clusters instead (tests/test_defaults.py)
    res = ifv.prune(model, x, {2: 0.5, "features.22": 0.3}, config=ifv.OTConfig())
    assert [g.index for g in res.groups] == [2, 6]
    for g in res.groups:
        assert g.k == ifv.num_kept(g.n, g.sparsity)
        assert g.cost.shape == g.plan.shape == g.out_map.shape == g.in_map.shape == (g.n, g.k)
        assert g.importance.shape == (g.n,)
        assert torch.allclose(g.plan.sum(1), torch.full((g.n,), 1 / g.n, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(g.plan.sum(0), torch.full((g.k,), 1 / g.k, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(g.out_map.sum(0), torch.ones(g.k, dtype=torch.float64))
        assert torch.allclose(g.in_map.sum(1), torch.ones(g.n, dtype=torch.float64))
        # the kept channels are the most important ones
        assert set(g.kept.tolist()) == set(torch.topk(g.importance, g.k).indices.tolist())
    assert res.model.features[8].out_channels == model.features[8].out_channels // 2


def test_works_under_no_grad_and_with_taylor():
    model = randomize_bn(conv_bn_net()).train()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    state = state_copy(model)
    with torch.no_grad():
        res = ifv.prune(model, x[:1], 0.5, importance="taylor", batch=(x, y))
        res_l1 = ifv.prune(model, x[:1], 0.5, importance="l2")
    assert_state_equal(model, state)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in res.model.parameters())
    assert res.model[0].out_channels == 3 and res_l1.model[0].out_channels == 3
    res.model(x).sum().backward()


@pytest.mark.parametrize("imp", ["l1", "l2", "lamp", "random"])
def test_named_importances(imp):
    model = models.SmallCNN()
    res = ifv.prune(model, torch.randn(1, 1, 8, 8), 0.5, importance=imp)
    assert [g.k for g in res.groups] == [g.n // 2 for g in res.groups]


def test_random_importance_is_seeded():
    model = models.SmallCNN()
    x = torch.randn(1, 1, 8, 8)
    rng = torch.get_rng_state()
    a = [g.kept for g in ifv.prune(model, x, 0.5, importance="random", seed=1).groups]
    b = [g.kept for g in ifv.prune(model, x, 0.5, importance="random", seed=1).groups]
    c = [g.kept for g in ifv.prune(model, x, 0.5, importance="random", seed=2).groups]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert any(not torch.equal(u, w) for u, w in zip(a, c))  # another seed, other channels
    assert torch.equal(torch.get_rng_state(), rng)  # and the global RNG is not used


def test_torch_pruning_taylor_object_and_frozen_parameters():
    import torch_pruning as tp
    model = randomize_bn(conv_bn_net()).eval()
    model[0].weight.requires_grad_(False)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    res = ifv.prune(model, x[:1], 0.5, importance=tp.importance.GroupTaylorImportance(), batch=(x, y))
    assert not res.model[0].weight.requires_grad and res.model[3].weight.requires_grad
    assert not model[0].weight.requires_grad


def test_inplace_refuses_before_changing_anything():
    model = WithLSTM()
    state = state_copy(model)
    with pytest.raises(ifv.UnsupportedLayerError):
        ifv.prune(model, torch.randn(1, 4), 0.5, inplace=True, on_unmergeable="raise")
    assert_state_equal(model, state)


def test_inplace_prunes_callers_model():
    model = models.SmallCNN()
    res = ifv.prune(model, torch.randn(1, 1, 8, 8), 0.5, inplace=True)
    assert res.model is model and model.features[0].out_channels == res.groups[0].k


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_bad_sparsity(sparsity):
    model = models.SmallCNN()
    state = state_copy(model)
    with pytest.raises((ValueError, TypeError), match="sparsity"):
        ifv.prune(model, torch.randn(1, 1, 8, 8), sparsity)
    with pytest.raises((ValueError, TypeError), match="sparsity"):
        ifv.prune(model, torch.randn(1, 1, 8, 8), {0: sparsity})
    assert_state_equal(model, state)


def test_bad_importance_method_and_group():
    model = models.SmallCNN()
    state = state_copy(model)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown importance 'l7'"):
        ifv.prune(model, x, 0.5, importance="l7")
    with pytest.raises(ValueError, match="method"):
        ifv.prune(model, x, 0.5, method="fusion")
    with pytest.raises(IndexError, match="out of range"):
        ifv.prune(model, x, 0.5, groups=[7])
    with pytest.raises(KeyError, match="no group named"):
        ifv.prune(model, x, 0.5, groups=["nope"])
    with pytest.raises(ValueError, match="expected group.size"):
        ifv.prune(model, x, 0.5, importance=lambda g: torch.ones(3))
    with pytest.raises(ValueError, match="taylor"):
        ifv.prune(model, x, 0.5, importance="taylor")
    assert_state_equal(model, state)


def test_bad_example_inputs():
    model = models.SmallCNN()
    state = state_copy(model)
    with pytest.raises(ValueError, match="example_inputs of shape"):
        ifv.prune(model, torch.randn(1, 3, 8, 8), 0.5)
    with pytest.raises(ValueError, match="example_inputs of shape"):
        ifv.find_groups(model, torch.randn(1, 1, 8))
    assert_state_equal(model, state)


def test_data_on_another_device():
    model = models.SmallCNN()
    state = state_copy(model)
    meta = torch.randn(1, 1, 8, 8, device="meta")
    with pytest.raises(ValueError, match="move them"):
        ifv.prune(model, meta, 0.5)
    batch = (torch.randn(4, 1, 8, 8, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="move the batch"):
        ifv.prune(model, torch.randn(1, 1, 8, 8), 0.5, importance="taylor", batch=batch)
    assert_state_equal(model, state)


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)).relu())


class WithDepthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.dw(self.pw(x)).relu()).mean((2, 3))


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.lstm, self.fc2 = nn.Linear(4, 6), nn.LSTM(6, 5, batch_first=True), nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(self.lstm(self.fc1(x).relu().unsqueeze(1))[0][:, -1])


@pytest.mark.parametrize("make,shape", [(WithLayerNorm, (1, 4)), (WithDepthwise, (1, 3, 6, 6))])
def test_layernorm_and_depthwise_merge(make, shape):
    """Both used to be refused; their channels now merge (tests/test_layer_types.py has the exactness)."""
    model = make()
    state = state_copy(model)
    res = ifv.prune(model, torch.randn(*shape), 0.5)
    assert_state_equal(model, state)
    assert not res.skipped and all(g.k < g.n for g in res.groups)
    assert bool(torch.isfinite(res.model(torch.randn(2, *shape[1:]))).all())


@pytest.mark.parametrize("make,shape,layer", [(WithLSTM, (1, 4), "lstm")])
def test_unsupported_layer_is_refused_by_name(make, shape, layer):
    model = make()
    state = state_copy(model)
    x = torch.randn(*shape)
    with pytest.raises(ifv.UnsupportedLayerError, match=f"'{layer}'"):
        ifv.prune(model, x, 0.5)
    assert_state_equal(model, state)
    # plain pruning can still select channels through these layers
    res = ifv.prune(model, x, 0.5, method="default")
    res.model(torch.randn(2, *shape[1:]))


class WithBareParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.scale, self.fc2 = nn.Linear(4, 6), nn.Parameter(torch.ones(6)), nn.Linear(6, 2)

    def forward(self, x):  # a divisor: not a per-channel shift or scale that merges (tests/test_zoo_layers.py)
        return self.fc2((self.fc1(x) / self.scale).relu())


def test_bare_parameter_is_refused_by_name():
    model = WithBareParameter()
    state = state_copy(model)
    groups = ifv.find_groups(model, torch.randn(1, 4))
    assert ("scale", "other") in [(name, role) for name, role, _ in groups[0].layers]
    with pytest.raises(ifv.UnsupportedLayerError, match="'scale'"):
        ifv.prune(model, torch.randn(1, 4), 0.5)
    assert_state_equal(model, state)
    res = ifv.prune(model, torch.randn(1, 4), 0.5, method="default")  # selection prunes it, as Torch-Pruning does
    assert res.model.scale.shape == (3,) and res.model(torch.randn(2, 4)).shape == (2, 2)


def test_config_validation():
    for bad in [dict(p=0.5), dict(solver="lp"), dict(target="mean"), dict(fusion="avg"),
                dict(source_mass="x"), dict(reg=0.0), dict(max_iter=0)]:
        with pytest.raises(ValueError):
            ifv.OTConfig(**bad)
    assert ifv.OTConfig(target="cluster_centroid").target == "centroid"
    with pytest.raises(TypeError, match="OTConfig"):
        ifv.prune(models.SmallCNN(), torch.randn(1, 1, 8, 8), 0.5, config={"p": 1})


@pytest.mark.parametrize("cfg", [
    dict(solver="sinkhorn", reg=0.05), dict(p=1), dict(source_mass="importance", target_mass="importance"),
    dict(target="centroid"), dict(fusion="paper"), dict(fold_batchnorm=False),
])
def test_every_option_prunes(cfg):
    """Each option prunes, and changes what it controls compared with the default settings."""
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).eval()
    x = torch.randn(2, 3, 16, 16)
    base = ifv.prune(model, x[:1], 0.4, config=ifv.OTConfig())  # the balanced plan's settings
    res = ifv.prune(model, x[:1], 0.4, config=ifv.OTConfig(**cfg))
    out = res.model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert res.params_after < res.params_before and all(g.k < g.n for g in res.groups)
    for g, b in zip(res.groups, base.groups):
        expected = ifv.masses(cfg.get("source_mass", "uniform"), g.importance, g.n)
        assert torch.allclose(g.plan.sum(1), expected, atol=1e-6)
        assert torch.equal(g.kept, b.kept)  # options change the merge, not which channels are kept
    changed = [g for g, b in zip(res.groups, base.groups)
               if not (torch.equal(g.plan, b.plan) and torch.equal(g.cost, b.cost)
                       and torch.equal(g.out_map, b.out_map))]
    assert changed, "the option changed nothing"
    if cfg.get("solver") == "sinkhorn":  # soft: some channel splits its mass
        assert any(((g.plan > 1e-9).sum(1) > 1).any() for g in res.groups)
    if "p" in cfg or "target" in cfg or "fold_batchnorm" in cfg:
        assert all(not torch.allclose(g.cost, b.cost) for g, b in zip(res.groups, base.groups))
    if cfg.get("target") == "centroid":  # centroids are not the kept channels themselves
        assert any((g.cost[g.kept, torch.arange(g.k)] > 1e-6).any() for g in res.groups)
    if cfg.get("source_mass") == "importance":
        assert not torch.allclose(res.groups[0].plan.sum(1), base.groups[0].plan.sum(1))
    if cfg.get("fusion") == "paper":
        assert all(torch.equal(g.out_map, g.in_map) for g in res.groups)
    with torch.no_grad():
        assert rel_err(res.model(x), base.model(x)) > 1e-4


def test_num_kept_is_the_exact_floor_and_differs_from_torch_pruning_only_by_float_rounding():
    """num_kept = max(1, floor(n (1 - s))) of the exact product; Torch-Pruning's int(n * (1 - s)) in
    floating point keeps one fewer exactly where the product is whole and the float lands below."""
    from fractions import Fraction
    assert ifv.num_kept(512, 0.3) == 358 and ifv.num_kept(512, 0.7) == 153 and ifv.num_kept(10, 0.7) == 3
    assert ifv.num_kept(7, 0.0) == 7 and ifv.num_kept(3, 0.99) == 1 and ifv.num_kept(10, 0.8) == 2
    disagree = []
    for n in range(1, 257):
        for step in range(100):
            s = step / 100
            exact = Fraction(n) * (1 - Fraction(step, 100))
            assert ifv.num_kept(n, s) == max(1, exact.numerator // exact.denominator), (n, s)
            torch_pruning = max(1, int(n * (1 - s)))
            if torch_pruning != ifv.num_kept(n, s):
                disagree.append((n, step))
                assert exact.denominator == 1 and torch_pruning == ifv.num_kept(n, s) - 1
    assert (10, 80) in disagree


class WithConcat(nn.Module):
    """Two convs concatenated into one BatchNorm and one consumer: groups share layers."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.bn, self.c, self.fc = nn.BatchNorm2d(10), nn.Conv2d(10, 5, 3, padding=1), nn.Linear(5, 2)

    def forward(self, x):
        h = self.bn(torch.cat([self.a(x), self.b(x)], 1)).relu()
        return self.fc(self.c(h).mean((2, 3)))


@pytest.mark.parametrize("method", ["default", "intra-fusion"])
def test_concatenated_groups_share_layers(method):
    model = randomize_bn(WithConcat()).eval()
    x = torch.randn(3, 3, 8, 8)
    groups = ifv.find_groups(model, x[:1])
    assert [g.size for g in groups] == [4, 6, 5]
    with torch.no_grad():
        assert rel_err(ifv.prune(model, x[:1], 0.0, method=method).model(x), model(x)) <= 1e-6
    pruned = ifv.prune(model, x[:1], 0.5, method=method).model
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.bn.num_features) == (2, 3, 5)
    assert pruned.c.in_channels == 5 and pruned(x).shape == (3, 2)


def test_group_keys_one_meaning_everywhere():
    """Index, root-layer name and paper label name the same group; a bare string is one key."""
    from intrafusion_viz.groups._trace import resolve_group_keys
    model = ifv.models.vgg11_bn(width_mult=0.125)
    x = torch.randn(1, 3, 32, 32)
    groups = ifv.find_groups(model, x)
    g1 = next(g for g in groups if g.paper_index == 1)
    assert resolve_group_keys(groups, g1.name) == resolve_group_keys(groups, "G1") == [g1.index]
    assert resolve_group_keys(groups, None) == list(range(len(groups)))
    by_name = ifv.prune(model, x, 0.5, groups=g1.name)
    by_label = ifv.prune(model, x, {"G1": 0.5})
    assert [g.index for g in by_name.groups] == [g.index for g in by_label.groups] == [g1.index]
    with pytest.raises(KeyError, match="paper label"):
        resolve_group_keys(groups, "nope")
    with pytest.raises(IndexError, match="out of range"):
        resolve_group_keys(groups, [len(groups)])
    with pytest.raises(TypeError, match="int index or a str name"):
        resolve_group_keys(groups, [1.5])
