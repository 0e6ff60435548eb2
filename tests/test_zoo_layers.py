"""Tiny hand-made nets with the layers that torchvision's models bring (issue 12), one per case.

The torchvision zoo itself is a benchmark (benchmarks/zoo.py), not a test.  Each case here checks what
the zoo needs of that layer: sparsity 0 keeps the function, merging exact duplicate channels keeps it
(barycentric Intra-Fusion, float64), pruning 50 % gives a model that runs, or a clear refusal.
"""
import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv

from helpers import keep_first_half, rel_err, state_copy, assert_state_equal


class TokenNet(nn.Module):
    """A ViT-like front: linear patch embedding, a class token concatenated and a position embedding added."""

    def __init__(self, d=8, length=4, d_in=5, num_classes=3):
        super().__init__()
        self.proj = nn.Linear(d_in, d)
        self.class_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos_embedding = nn.Parameter(torch.randn(1, length + 1, d))
        self.fc = nn.Linear(d, num_classes)

    def forward(self, x):  # (B, length, d_in)
        h = self.proj(x)
        h = torch.cat([self.class_token.expand(x.shape[0], -1, -1), h], dim=1) + self.pos_embedding
        return self.fc(torch.relu(h))[:, 0]


class LayerScaleNet(nn.Module):
    """A conv block whose output is scaled per channel by a bare (C, 1, 1) Parameter, as in ConvNeXt."""

    def __init__(self, c=8, num_classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.conv2 = nn.Conv2d(c, num_classes, 3)

    def forward(self, x):
        return self.conv2(torch.relu(self.layer_scale * self.conv1(x))).mean((2, 3))


PARAM_CASES = {
    "class-token+pos-embedding": (TokenNet, (6, 4, 5), ["class_token", "pos_embedding"]),
    "layer-scale": (LayerScaleNet, (6, 3, 8, 8), ["layer_scale"]),
}


@torch.no_grad()
def duplicate_channels(model, group):
    """Make channel i + n/2 of ``group`` an exact copy of channel i in every member (Parameters included)."""
    half = group.size // 2
    for name, role, module in group.layers:
        m = next(x for x in group.members if x.name == name)
        local, root = torch.as_tensor(m.local_idxs), torch.as_tensor(m.root_idxs)
        src = torch.stack([local[root == r] for r in range(half)]).flatten()
        dst = torch.stack([local[root == r + half] for r in range(half)]).flatten()
        if isinstance(module, nn.Parameter):
            tensors = [(module, m.dim)]
        else:
            attrs = {"norm": ["weight", "bias", "running_mean", "running_var"], "out": ["weight", "bias"],
                     "depthwise": ["weight", "bias"], "affine": ["weight", "bias"]}
            tensors = [(getattr(module, a), m.dim if a == "weight" else 0)
                       for a in attrs.get(role, ["weight"]) if getattr(module, a, None) is not None]
        for t, dim in tensors:
            moved = t.data.movedim(dim, 0)
            moved[dst] = moved[src]
    return model


def tiny_convnext(dim=8, num_classes=3):
    """A stem and one torchvision ConvNeXt block (depthwise conv, LayerNorm, MLP, bare layer_scale)."""
    from torchvision.models.convnext import CNBlock

    torch.manual_seed(3)
    block = CNBlock(dim, layer_scale=0.5, stochastic_depth_prob=0.0)
    with torch.no_grad():
        block.layer_scale.uniform_(0.5, 1.5)
    return nn.Sequential(nn.Conv2d(3, dim, 2, stride=2), block, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(dim, num_classes))


PARAM_CASES["convnext-block"] = (tiny_convnext, (6, 3, 8, 8), ["1.layer_scale"])


def _group_of(groups, member):
    return next(g for g in groups if any(m.name == member for m in g.members))


@pytest.mark.parametrize("case", list(PARAM_CASES))
def test_bare_parameters_are_group_members_that_merge(case):
    make, shape, names = PARAM_CASES[case]
    model = make()
    group = _group_of(ifv.find_groups(model, torch.randn(*shape)[:1]), names[0])
    roles = {m.name: m.role for m in group.members}
    assert {n: roles[n] for n in names} == {n: ("scale" if n.endswith("layer_scale") else "shift") for n in names}


@pytest.mark.parametrize("method", ["default", "intra-fusion"])
@pytest.mark.parametrize("case", list(PARAM_CASES))
def test_bare_parameters_sparsity_zero_and_half(case, method):
    make, shape, names = PARAM_CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*shape)
    before = state_copy(model)
    res0 = ifv.prune(model, x[:1], 0.0, method=method)
    res = ifv.prune(model, x[:1], 0.5, method=method)
    assert_state_equal(model, before)  # the caller's model is untouched
    with torch.no_grad():
        assert rel_err(res0.model(x), model(x)) <= 1e-6
        y = res.model(x)
    assert y.shape == model(x).shape and bool(torch.isfinite(y).all())
    for name in names:  # every bare Parameter lost half of its channels along its channel dimension
        old, new = model.get_parameter(name), res.model.get_parameter(name)
        assert isinstance(new, nn.Parameter) and new.requires_grad
        (dim,) = [d for d in range(old.dim()) if old.shape[d] != new.shape[d]]
        assert new.shape[dim] == old.shape[dim] // 2


@pytest.mark.parametrize("case", list(PARAM_CASES))
def test_bare_parameters_merge_duplicates_exactly(case):
    make, shape, names = PARAM_CASES[case]
    torch.manual_seed(1)
    model = make().double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    group = _group_of(ifv.find_groups(model, x[:1]), names[0])
    duplicate_channels(model, group)
    res = ifv.prune(model, x[:1], 0.5, groups=[group.index], importance=keep_first_half, method="intra-fusion")
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) <= 1e-10
    assert torch.equal(res.groups[0].assignment, torch.arange(group.size) % (group.size // 2))
    # the merge is the plan-weighted average, not the selection: perturbing a dropped copy moves the result
    with torch.no_grad():
        for name in names:
            p = model.get_parameter(name)
            dim = next(m.dim for m in group.members if m.name == name)
            p.data.movedim(dim, 0)[-1] += 1.0
    res2 = ifv.prune(model, x[:1], 0.5, groups=[group.index], importance=keep_first_half)
    for name in names:
        assert not torch.equal(res2.model.get_parameter(name), res.model.get_parameter(name))


# ---------------------------------------------------------------- errors of Torch-Pruning's tracer

class ChannelShuffleNet(nn.Module):
    """ShuffleNet v2's channel shuffle (view, transpose, view) between two convs."""

    def __init__(self, c=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 1)
        self.conv2 = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        h = self.conv1(x)
        b, c, hh, ww = h.shape
        h = h.view(b, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(b, c, hh, ww)
        return self.conv2(h).mean((2, 3))


@pytest.mark.parametrize("method", ["default", "intra-fusion"])
def test_channel_shuffle_is_refused_by_name(method):
    """Torch-Pruning traces this net without error but maps conv2's columns as if nothing were shuffled,
    so pruning it would silently change the function: refused, naming the op, the layers and the tracer."""
    model = ChannelShuffleNet()
    before = state_copy(model)
    with pytest.raises(ifv.TracerError) as info:
        ifv.prune(model, torch.randn(1, 3, 4, 4), 0.5, method=method)
    text = str(info.value)
    assert "ChannelShuffleNet" in text and "channel shuffle" in text and "transpose" in text
    assert "after layer 'conv1' and before layer 'conv2'" in text and "limitation of the tracer" in text
    assert isinstance(info.value, RuntimeError)  # not a ValueError about the inputs
    assert_state_equal(model, before)


def test_a_reshape_that_keeps_channel_order_is_not_a_shuffle():
    """Splitting channels into (groups, c/groups) and moving them together (as attention heads do) is fine."""

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            h = self.conv1(x)
            b, c, hh, ww = h.shape
            h = h.view(b, 2, c // 2, hh, ww).permute(0, 1, 2, 4, 3).reshape(b, c, ww, hh)
            return self.conv2(h).mean((2, 3))

    model = Heads().eval()
    x = torch.randn(2, 3, 4, 4)
    res = ifv.prune(model, x[:1], 0.0, method="default")
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) <= 1e-6


# ---------------------------------------------------------------- tied weights

class TiedBranches(nn.Module):
    """Two layers given one weight (same role, same channels), summed: one tensor, two users."""

    def __init__(self, d=6, h=8, num_classes=3):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, num_classes)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.c(torch.relu(self.a(x)) + torch.relu(self.b(x)))


class TiedEmbeddingHead(nn.Module):
    """A language-model-like net whose output head shares the embedding matrix (Torch-Pruning prunes the
    embedding by selection only, so Intra-Fusion refuses this group)."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.embed, self.mid, self.head = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        e = self.embed(tokens)
        return self.head(e + torch.relu(self.mid(e)))  # a residual stream, as in a transformer


class TiedAcrossRoles(nn.Module):
    """One square weight used as two consecutive layers: its rows and columns belong to different groups."""

    def __init__(self, d=5, h=8, num_classes=3):
        super().__init__()
        self.enc, self.a, self.b, self.dec = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, num_classes)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.dec(torch.relu(self.b(torch.relu(self.a(torch.relu(self.enc(x)))))))


def _untied(model):
    import copy

    copy_ = copy.deepcopy(model)
    for module in copy_.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(p.detach().clone()))
    return copy_


TIED_CASES = {
    "same-role": (TiedBranches, lambda: torch.randn(5, 6), ("a", "b"), ["default", "intra-fusion"]),
    "embedding-head": (TiedEmbeddingHead, lambda: torch.randint(0, 11, (4, 3)), ("embed", "head"), ["default"]),
}


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
@pytest.mark.parametrize("case", list(TIED_CASES))
def test_tied_weights_merge_once_like_an_untied_copy(case, sparsity):
    make, inputs, (first, second), methods = TIED_CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    x = inputs()
    untied = _untied(model)
    for method in methods:
        tied_res = ifv.prune(model, x[:1], sparsity, method=method)
        free_res = ifv.prune(untied, x[:1], sparsity, method=method)
        with torch.no_grad():
            assert rel_err(tied_res.model(x), free_res.model(x)) <= 1e-6, method
        pruned = tied_res.model
        assert getattr(pruned, first).weight is getattr(pruned, second).weight, method  # still one tensor
        assert tied_res.params_after < free_res.params_after


def test_tied_weights_in_different_roles_are_refused_by_name():
    model = TiedAcrossRoles()
    before = state_copy(model)
    for method in ("default", "intra-fusion"):
        with pytest.raises(ifv.UnsupportedLayerError, match=r"tied between layers \(a\.weight, b\.weight\)"):
            ifv.prune(model, torch.randn(1, 5), 0.5, method=method)
    assert_state_equal(model, before)
    assert model.a.weight is model.b.weight
    # a group that holds none of the tied tensor's channels still prunes
    groups = ifv.find_groups(model, torch.randn(1, 5))
    assert len(groups) == 3


# ---------------------------------------------------------------- branches that run only in training mode

class AuxHeadNet(nn.Module):
    """A main path and an auxiliary classifier that runs only in training mode, as in GoogLeNet."""

    def __init__(self, c=8, num_classes=4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.fc = nn.Linear(2 * c, num_classes)
        self.aux_conv, self.aux_fc = nn.Conv2d(c, c, 1), nn.Linear(c, num_classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        out = self.fc(torch.relu(self.conv2(h)).mean((2, 3)))
        if self.training:
            return out, self.aux_fc(torch.relu(self.aux_conv(h)).mean((2, 3)))
        return out


def test_branches_active_only_in_training_are_traced():
    model = AuxHeadNet()
    groups = ifv.find_groups(model, torch.randn(1, 3, 6, 6))
    assert model.training  # the caller's mode is kept
    conv1 = next(g for g in groups if g.name == "conv1")
    assert {m.name: m.role for m in conv1.members}["aux_conv"] == "in"
    assert any(g.name == "aux_conv" for g in groups)


@pytest.mark.parametrize("method", ["default", "intra-fusion"])
def test_pruned_model_with_aux_head_runs_in_both_modes(method):
    torch.manual_seed(0)
    model = AuxHeadNet().eval()
    x = torch.randn(4, 3, 6, 6)
    res0 = ifv.prune(model, x[:1], 0.0, method=method)
    res = ifv.prune(model, x[:1], 0.5, method=method)
    assert res.model.aux_conv.in_channels == res.model.conv1.out_channels == 4
    with torch.no_grad():
        main, aux = res.model.train()(x)
        assert main.shape == aux.shape == (4, 4) and bool(torch.isfinite(aux).all())
        assert res.model.eval()(x).shape == (4, 4)
        ref_main, ref_aux = model.train()(x)
        main0, aux0 = res0.model.train()(x)
        assert rel_err(main0, ref_main) <= 1e-6 and rel_err(aux0, ref_aux) <= 1e-6


def test_aux_head_duplicates_merge_exactly_in_training_mode():
    torch.manual_seed(2)
    model = AuxHeadNet().double().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    group = next(g for g in ifv.find_groups(model, x[:1]) if g.name == "conv1")
    duplicate_channels(model, group)
    res = ifv.prune(model, x[:1], 0.5, groups=[group.index], importance=keep_first_half, method="intra-fusion")
    with torch.no_grad():
        for a, b in zip(res.model.train()(x), model.train()(x)):
            assert rel_err(a, b) <= 1e-10


# ---------------------------------------------------------------- tracing cost (Swin, MaxViT)

def test_index_lists_that_blow_up_stop_the_trace_with_a_tracer_error(monkeypatch):
    """On Swin and MaxViT, Torch-Pruning's index mappings grow without bound (minutes, > 14 GB); the trace
    stops once a list is longer than any layer dimension allows.  Here the budget is shrunk so that a
    legitimate flatten (8 channels x 16 positions into a Linear) trips it and the report can be checked."""
    from intrafusion_viz.groups import _checks as _groups

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 2))
    x = torch.randn(1, 3, 4, 4)
    assert len(ifv.find_groups(model, x)) == 1  # the real budget lets the flatten through
    monkeypatch.setattr(_groups, "_INDEX_BUDGET", 0.5)
    with pytest.raises(ifv.TracerError, match=r"Sequential through its reshapes .*_FlattenIndexMapping turned "
                                              r"8 indices into 128.* limitation of Torch-Pruning's tracer"):
        ifv.find_groups(nn.Sequential(*model), x)  # a new model: not cached
    from torch_pruning.dependency import index_mapping as im
    assert im._FlattenIndexMapping.__call__.__name__ == "__call__"  # Torch-Pruning is left as it was


def test_vit_default_pruning_keeps_whole_heads_and_its_hidden_dim():
    """Default pruning of a torchvision ViT's residual stream keeps a multiple of the attention heads
    (Torch-Pruning's round_to=num_heads, rounded so no more than asked is removed) and updates the
    ``hidden_dim`` its forward reshapes with; the caller's model is untouched."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision initialises the head to zero
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        res = ifv.prune(model, x, 0.3, method="default")
        stream = res.group("conv_proj")
        assert stream.k % 4 == 0 and stream.k >= ifv.num_kept(32, 0.3), stream.k
        assert res.model.hidden_dim == stream.k
        for mode in (res.model.eval(), res.model.train()):
            out = mode(x)
            assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert model.hidden_dim == 32
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
