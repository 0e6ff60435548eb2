"""Merging through depthwise and grouped convs, LayerNorm, GroupNorm, RMSNorm, and partial models.

One tiny hand-made net per layer type; for each: sparsity 0 keeps the function, merging exact
duplicate channels keeps it (float64), 50 % pruning runs in train and eval mode, the caller's model
is untouched.
"""
import warnings

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from helpers import assert_state_equal, rel_err, state_copy


class DepthwiseSeparable(nn.Module):
    """pointwise -> BN -> ReLU -> depthwise -> BN -> ReLU -> pointwise (MobileNet's block)."""

    def __init__(self, c=8, multiplier=1):
        super().__init__()
        self.pw1, self.bn1 = nn.Conv2d(3, c, 1), nn.BatchNorm2d(c)
        self.dw, self.bn2 = nn.Conv2d(c, c * multiplier, 3, padding=1, groups=c), nn.BatchNorm2d(c * multiplier)
        self.pw2 = nn.Conv2d(c * multiplier, 4, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.pw1(x)))
        return self.pw2(torch.relu(self.bn2(self.dw(x)))).mean((2, 3))


class GroupedBlock(nn.Module):
    """ResNeXt's bottleneck: 1x1 -> grouped 3x3 (groups=2) -> 1x1, with BatchNorms and a residual."""

    def __init__(self, c=8, width=8, groups=2):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        x = torch.relu(x + self.bn3(self.conv3(y)))
        return self.head(x.mean((2, 3)))


class NormMLP(nn.Module):
    """Linear -> norm -> ReLU -> Linear."""

    def __init__(self, norm, d=6, h=8):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(d, h), norm, nn.Linear(h, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class GroupNormNet(nn.Module):
    def __init__(self, c=8, num_groups=2):
        super().__init__()
        self.conv1, self.gn = nn.Conv2d(3, c, 3, padding=1), nn.GroupNorm(num_groups, c)
        self.conv2 = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.gn(self.conv1(x)))).mean((2, 3))


class ConvNeXtLike(nn.Module):
    """stem -> LayerNorm2d -> [depthwise 7x7 -> LayerNorm -> Linear -> GELU -> Linear] + residual -> head
    (torchvision's CNBlock without layer scale)."""

    def __init__(self, c=8):
        super().__init__()
        from torchvision.models.convnext import LayerNorm2d

        self.stem, self.ln0 = nn.Conv2d(3, c, 2, 2), LayerNorm2d(c)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.ln0(self.stem(x))
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.ln(y)))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


def _rms():
    if not hasattr(nn, "RMSNorm"):
        pytest.skip("torch.nn.RMSNorm needs torch >= 2.4")
    return NormMLP(nn.RMSNorm(8))


CASES = {  # name: (model factory, input shape)
    "depthwise": (DepthwiseSeparable, (4, 3, 6, 6)),
    "grouped": (GroupedBlock, (4, 3, 6, 6)),
    "layernorm": (lambda: NormMLP(nn.LayerNorm(8)), (4, 6)),
    "groupnorm": (GroupNormNet, (4, 3, 6, 6)),
    "rmsnorm": (_rms, (4, 6)),
    "convnext": (ConvNeXtLike, (4, 3, 8, 8)),
}


@torch.no_grad()
def _randomize(model, seed=0):
    """Non-trivial BatchNorm statistics and norm affines, so nothing is accidentally the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        for attr in ("weight", "bias"):
            t = getattr(m, attr, None) if not isinstance(m, (nn.Conv2d, nn.Linear)) else None
            if isinstance(t, nn.Parameter):
                t.copy_(torch.rand(t.shape, generator=g) + (0.5 if attr == "weight" else -0.5))
    return model


def _blocks(group, model):
    """The blocks a group's channels may not leave: conv groups of a grouped conv, GroupNorm groups."""
    from intrafusion_viz.groups._layer_rules import conv_blocks, norm_blocks

    modules = dict(model.named_modules())
    conv, norm = conv_blocks(group.members, modules, group.size), norm_blocks(group.members, modules)
    return conv * norm // __import__("math").gcd(conv, norm)


@torch.no_grad()
def _duplicate(model, group, blocks):
    """Make the second half of every block an exact copy of its first half, in every member's tensors."""
    n = group.size
    size = n // blocks
    pairs = [(b * size + t, b * size + size // 2 + t) for b in range(blocks) for t in range(size // 2)]
    modules = dict(model.named_modules())
    for m in group.members:
        module = modules[m.name]
        local, root = torch.as_tensor(m.local_idxs), torch.as_tensor(m.root_idxs)
        if m.role == "grouped":  # weight (out, in/g, ...): input c is column c % (in/g) of its conv group
            g = module.groups
            w = module.weight.data.view(g, -1, n // g, *module.weight.shape[2:])
            for src, dst in pairs:
                w[src // (n // g), :, dst % (n // g)] = w[src // (n // g), :, src % (n // g)]
            continue
        names = {"out": ["weight", "bias"], "depthwise": ["weight", "bias"], "in": ["weight"]}.get(
            m.role, ["weight", "bias", "running_mean", "running_var"])
        for attr in names:
            t = getattr(module, attr, None)
            if not torch.is_tensor(t):
                continue
            moved = t.data.movedim(m.dim if attr == "weight" else 0, 0)
            for src, dst in pairs:
                moved[local[root == dst]] = moved[local[root == src]]
    return model


def _keep_first_halves(blocks_of):
    def importance(group):
        size = group.size // blocks_of[group.index]
        first = (torch.arange(group.size) % size) < size // 2
        return first.double() + 1.0
    return importance


def _model(case, dtype=torch.float32):
    make, shape = CASES[case]
    torch.manual_seed(0)
    model = _randomize(make()).to(dtype).eval()
    return model, torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize("case", list(CASES))
def test_every_group_is_mergeable(case):
    model, x = _model(case)
    groups = ifv.find_groups(model, x[:1])
    assert groups and all(g.mergeable and g.unmergeable_reason is None for g in groups), groups
    assert "mergeable=True" in repr(groups[0])


@pytest.mark.parametrize("method", ["default", "intra-fusion", "fold"])
@pytest.mark.parametrize("case", list(CASES))
def test_sparsity_zero_keeps_outputs(case, method):
    model, x = _model(case)
    res = ifv.prune(model, x[:1], 0.0, method=method)
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) <= 1e-5
    assert not res.skipped and all(g.k == g.n for g in res.groups)


@pytest.mark.parametrize("case", list(CASES))
def test_merging_exact_duplicates_keeps_outputs(case):
    """Every block's second half copies its first half; keeping the first halves at 50 % is exact
    (also for LayerNorm / GroupNorm / RMSNorm: each kept channel absorbs one copy of itself, so the
    mean and variance over the channels are unchanged)."""
    model, x = _model(case, torch.float64)
    groups = ifv.find_groups(model, x[:1])
    blocks = {g.index: _blocks(g, model) for g in groups}
    for g in groups:
        _duplicate(model, g, blocks[g.index])
    with torch.no_grad():
        expect = model(x)
    res = ifv.prune(model, x[:1], 0.5, importance=_keep_first_halves(blocks), method="intra-fusion")
    for g in res.groups:
        size = g.n // blocks[g.index]
        assert g.k == g.n // 2
        assert torch.equal(g.assignment, (torch.arange(g.n) // size) * (size // 2) + torch.arange(g.n) % (size // 2))
    with torch.no_grad():
        assert rel_err(res.model(x), expect) <= 1e-10
    assert res.model.training is False


@pytest.mark.parametrize("method", ["default", "intra-fusion", "paper", "fold"])
@pytest.mark.parametrize("case", list(CASES))
def test_half_pruning_runs_in_train_and_eval_mode(case, method):
    model, x = _model(case)
    state = state_copy(model)
    config = ifv.OTConfig.paper() if method == "paper" else None
    res = ifv.prune(model, x[:1], 0.5, method="intra-fusion" if method == "paper" else method, config=config)
    assert_state_equal(model, state)
    assert res.params_after < res.params_before and all(g.k < g.n for g in res.groups)
    for train in (False, True):
        res.model.train(train)
        out = res.model(x)
        assert out.shape == model(x).shape and bool(torch.isfinite(out).all())
    if method == "intra-fusion":  # the repairs handle these layers too (data-free: method="fold" above)
        res.model.eval()
        for mode in ("bn", "repair"):
            fixed = ifv.repair(res, model, (x, torch.zeros(len(x), dtype=torch.long)), mode=mode)
            assert bool(torch.isfinite(fixed(x)).all())
        assert_state_equal(model, state)


def test_grouped_conv_keeps_every_conv_group_balanced():
    model, x = _model("grouped")
    res = ifv.prune(model, x[:1], 0.3, method="intra-fusion")
    grouped = [g for g in res.groups if g.name in ("conv1", "conv2")]  # the two groups through conv2
    assert len(grouped) == 2
    for g in grouped:
        assert g.k == 2 * 3  # 30 % of 8 removes 3: each of the 2 conv groups loses floor(3 / 2) = 1 of 4
        half = g.n // 2
        assert int((g.kept < half).sum()) == g.k // 2
        assert float(g.plan[:half, g.k // 2:].abs().sum() + g.plan[half:, :g.k // 2].abs().sum()) == 0.0
        assert torch.allclose(g.plan.sum(1), torch.full((g.n,), 1.0 / g.n, dtype=torch.float64))
    assert res.model.conv2.groups == 2 and res.model.conv2.in_channels == 6


def test_depthwise_with_channel_multiplier_is_skipped_by_name():
    model = DepthwiseSeparable(multiplier=2).eval()
    x = torch.randn(2, 3, 6, 6)
    groups = ifv.find_groups(model, x[:1])
    assert not groups[0].mergeable and "channel multiplier 2" in groups[0].unmergeable_reason
    assert groups[1].mergeable  # its outputs prune in pairs of the multiplier
    with pytest.warns(UserWarning, match="1 of 2 selected groups"):
        res = ifv.prune(model, x[:1], 0.5)
    assert [s[0] for s in res.skipped] == [0] and [g.index for g in res.groups] == [1]
    assert res.model.dw.out_channels == 8 and res.model.dw.groups == 8
    assert bool(torch.isfinite(res.model(x)).all())
    with pytest.raises(ifv.UnsupportedLayerError, match="'dw'"):
        ifv.prune(model, x[:1], 0.5, groups=[0])


class PartlyUnmergeable(nn.Module):
    """A mergeable MLP hidden layer and a group holding an LSTM (which we cannot merge)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 6)
        self.lstm = nn.LSTM(6, 5, batch_first=True)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        h = self.fc2(torch.relu(self.fc1(x)))
        y, _ = self.lstm(h.unsqueeze(1))
        return self.out(y[:, -1])


def test_partial_model_prunes_what_it_can_and_records_the_rest():
    model = PartlyUnmergeable().eval()
    x = torch.randn(3, 4)
    groups = ifv.find_groups(model, x[:1])
    bad = [g for g in groups if not g.mergeable]
    good = [g for g in groups if g.mergeable]
    assert bad and good and "LSTM" in bad[0].unmergeable_reason
    state = state_copy(model)
    with pytest.warns(UserWarning, match=f"{len(bad)} of {len(groups)} selected groups.*LSTM"):
        res = ifv.prune(model, x[:1], 0.5)
    assert_state_equal(model, state)
    assert [s[0] for s in res.skipped] == [g.index for g in bad]
    assert all(reason == g.unmergeable_reason for (_, _, reason), g in zip(res.skipped, bad))
    assert [g.index for g in res.groups] == [g.index for g in good]
    assert res.model.fc1.out_features == 4 and bool(torch.isfinite(res.model(x)).all())
    # explicitly named: refused before anything changes, also in place
    with pytest.raises(ifv.UnsupportedLayerError, match="LSTM"):
        ifv.prune(model, x[:1], 0.5, groups=[bad[0].index], inplace=True)
    with pytest.raises(ifv.UnsupportedLayerError, match="LSTM"):
        ifv.prune(model, x[:1], 0.5, on_unmergeable="raise", inplace=True)
    assert_state_equal(model, state)
    # "default": the unmergeable group is pruned by selection, the others merged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = ifv.prune(model, x[:1], 0.5, on_unmergeable="default", method="intra-fusion")
    methods = {g.index: g.method for g in res.groups}
    assert methods[bad[0].index] == "default" and methods[good[0].index] == "intra-fusion"
    assert not res.skipped and bool(torch.isfinite(res.model(x)).all())
    with pytest.raises(ValueError, match="on_unmergeable"):
        ifv.prune(model, x[:1], 0.5, on_unmergeable="ignore")


@pytest.mark.parametrize("method", ["default", "intra-fusion"])
def test_groupnorm_count_is_refused_before_anything_changes(method):
    model = GroupNormNet(c=8, num_groups=4).eval()
    state = state_copy(model)
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"'gn' \(num_groups=4\).*multiple of 4 channels: 4 \(sparsity 0.5\)"):
        ifv.prune(model, x[:1], 0.3, method=method, inplace=True)  # would keep 5 of 8
    assert_state_equal(model, state)
    res = ifv.prune(model, x[:1], 0.5, method=method)
    assert res.model.gn.num_channels == 4 and bool(torch.isfinite(res.model(x)).all())


@pytest.mark.parametrize("method", ["default", "intra-fusion"])
def test_norms_without_parameters(method):
    """A LayerNorm / GroupNorm without affine still has its channel count updated; an RMSNorm without
    weight is invisible to the tracer, so the groups it may normalise are refused by name."""
    x = torch.randn(3, 6)
    res = ifv.prune(NormMLP(nn.LayerNorm(8, elementwise_affine=False)), x[:1], 0.5, method=method)
    assert res.model.norm.normalized_shape == (4,) and bool(torch.isfinite(res.model(x)).all())
    model = GroupNormNet()
    model.gn = nn.GroupNorm(2, 8, affine=False)
    res = ifv.prune(model, torch.randn(1, 3, 6, 6), 0.5, method=method)
    assert res.model.gn.num_channels == 4
    if hasattr(nn, "RMSNorm"):
        model = NormMLP(nn.RMSNorm(8, elementwise_affine=False))
        assert not ifv.find_groups(model, x[:1])[0].mergeable
        with pytest.raises(ifv.UnsupportedLayerError, match="'norm' \\(RMSNorm without parameters\\)"):
            ifv.prune(model, x[:1], 0.5, method=method)
