"""The paper preset (``OTConfig.paper()``) against the Intra-Fusion authors' own code.

Unit tests check each setting that made our results differ from the authors' code (importance scored
on folded weights, a weight-only cost, the paper's group numbering, the BatchNorm eps quirk) without
any data.  The golden tests compare with what the authors' code computed on fixed weights
(``shared/golden/paper``, beside a clone of this repository); they skip when that folder is absent.
"""
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz import models

from helpers import TinyResNet, assert_state_equal, conv_bn_net, randomize_bn, rel_err, state_copy


# ---------------------------------------------------------------- the preset itself

def test_paper_preset_has_every_setting_of_the_authors_code():
    cfg = ifv.OTConfig.paper()
    assert (cfg.p, cfg.target, cfg.source_mass, cfg.target_mass, cfg.solver, cfg.fusion) == (
        1.0, "most_important", "uniform", "uniform", "emd", "paper")
    assert cfg.fold_batchnorm and not cfg.cost_bias and cfg.score_folded and cfg.bn_eps == "exact"
    assert ifv.OTConfig.paper(bn_eps="authors").bn_eps == "authors"
    assert ifv.OTConfig.paper(target="centroid").target == "centroid"  # overrides
    # the library default is unchanged
    assert ifv.OTConfig().cost_bias and ifv.OTConfig().bn_eps == "exact"


@pytest.mark.parametrize("bad, error", [
    (dict(cost_bias=1), TypeError), (dict(score_folded="yes"), TypeError),
    (dict(bn_eps="none"), ValueError), (dict(bn_eps="authors", fold_batchnorm=False), ValueError),
])
def test_new_fields_are_validated(bad, error):
    with pytest.raises(error):
        ifv.OTConfig(**bad)


# ---------------------------------------------------------------- cause 1: importance on folded weights

def _folded_l1(model, group, x):
    """The authors' l1: per layer, |folded weight| summed over each channel's rows (producers) or
    columns (consumers); mean over layers."""
    folded = ifv.fold_batchnorm(model, x)
    modules = dict(folded.named_modules())
    parts = []
    for m in group.members:
        if m.role not in ("out", "in"):
            continue
        w = modules[m.name].weight.detach().double().movedim(m.dim, 0)
        per_slot = w.abs().reshape(w.shape[0], -1).sum(1)
        parts.append(torch.zeros(group.size, dtype=torch.float64).index_add_(
            0, torch.as_tensor(m.root_idxs), per_slot[list(m.local_idxs)]))
    return torch.stack(parts).mean(0)


@torch.no_grad()
def _bn_flips_ranking(model):
    """Make the first conv's weight rows grow with the channel index and its BatchNorm shrink them
    more, so that the unfolded and the folded l1 rankings are opposite."""
    conv, bn = model[0], model[1]
    c = conv.out_channels
    size = 10.0 * (1.0 + torch.arange(c, dtype=torch.float32))  # unfolded rows grow with the index
    folded = torch.where(torch.arange(c) < c // 2, 10.0, 5.0)  # folded: the low half is larger
    conv.weight.copy_(conv.weight.sign() * size[:, None, None, None])
    bn.weight.fill_(1.0)
    bn.running_var.copy_((size / folded) ** 2 - bn.eps)
    return model


def test_preset_scores_importance_on_folded_weights():
    torch.manual_seed(0)
    model = _bn_flips_ranking(randomize_bn(conv_bn_net(c=8)).eval())
    x = torch.randn(2, 1, 8, 8)
    group = ifv.find_groups(model, x)[0]
    expect = _folded_l1(model, group, x)
    k = 4
    want = torch.sort(torch.topk(expect, k).indices).values
    for method in ("intra-fusion", "default"):
        res = ifv.prune(model, x, {0: 0.5}, method=method, config=ifv.OTConfig.paper())
        assert torch.equal(res.groups[0].kept, want), method
        # without it, Torch-Pruning's l1 of the unfolded weights keeps the other half
        plain = ifv.prune(model, x, {0: 0.5}, method=method, config=ifv.OTConfig(p=1, fusion="paper"))
        assert set(plain.groups[0].kept.tolist()).isdisjoint(want.tolist()), method


def test_score_folded_works_with_taylor_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = randomize_bn(conv_bn_net()).eval()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    before = state_copy(model)
    res = ifv.prune(model, x[:1], 0.5, importance="taylor", batch=(x, y),
                    config=ifv.OTConfig(score_folded=True))
    assert all(torch.isfinite(g.importance).all() for g in res.groups)
    assert_state_equal(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_score_folded_gives_callables_a_folded_model_that_runs():
    torch.manual_seed(0)
    model = randomize_bn(conv_bn_net()).eval()
    x = torch.randn(4, 1, 8, 8)
    seen = []

    def output_change(group):  # a user importance that runs the model it is given
        with torch.no_grad():
            seen.append(rel_err(group.model(x), model(x)))
        return torch.arange(group.size, dtype=torch.float64)

    res = ifv.prune(model, x[:1], {0: 0.5}, importance=output_change, config=ifv.OTConfig(score_folded=True))
    assert seen and seen[0] < 1e-5  # the folded model computes the same function
    assert res.groups[0].kept.tolist() == [3, 4, 5]


# ---------------------------------------------------------------- cause 2: weight-only cost

@pytest.mark.parametrize("cost_bias", [False, True])
def test_cost_compares_weight_vectors_only(cost_bias):
    torch.manual_seed(0)
    model = randomize_bn(conv_bn_net()).eval()
    x = torch.randn(1, 1, 8, 8)
    res = ifv.prune(model, x, {0: 0.5}, config=ifv.OTConfig.paper(cost_bias=cost_bias))
    g = res.groups[0]
    folded = ifv.fold_batchnorm(model, x)
    w_out = folded[0].weight.detach().double().flatten(1)
    w_in = folded[3].weight.detach().double().transpose(0, 1).flatten(1)
    parts = [w_out, w_in] + ([folded[0].bias.detach().double()[:, None]] if cost_bias else [])
    v = torch.cat(parts, 1)
    v = v / v.norm(dim=1, keepdim=True)
    expect = torch.cdist(v, v[g.kept], p=1)
    assert rel_err(g.cost, expect) < 1e-5


def test_channel_features_bias_switch():
    model = randomize_bn(conv_bn_net()).eval()
    x = torch.randn(1, 1, 8, 8)
    group = ifv.find_groups(model, x)[0]
    with_bias = ifv.channel_features(model, group)
    without = ifv.channel_features(model, group, bias=False)
    assert with_bias.shape[1] == without.shape[1] + 1
    assert torch.equal(with_bias[:, : model[0].weight[0].numel()], without[:, : model[0].weight[0].numel()])


# ---------------------------------------------------------------- cause 3: the paper's numbering

# From the authors' get_all_groups_in_order (walks named_modules() backwards), run on these models.
PAPER_NUMBERING = {
    "vgg11_bn": ["features.25", "features.22", "features.18", "features.15", "features.11",
                 "features.8", "features.4", "features.0"],
    "resnet18": [
        {"layer4.0.conv2", "layer4.0.shortcut.0", "layer4.1.conv2"}, {"layer4.1.conv1"}, {"layer4.0.conv1"},
        {"layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv2"}, {"layer3.1.conv1"}, {"layer3.0.conv1"},
        {"layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"}, {"layer2.1.conv1"}, {"layer2.0.conv1"},
        {"conv1", "layer1.0.conv2", "layer1.1.conv2"}, {"layer1.1.conv1"}, {"layer1.0.conv1"}],
}


@pytest.mark.parametrize("arch, kw", [("vgg11_bn", dict(width_mult=0.125)), ("resnet18", dict(width=8))])
def test_paper_numbering_of_every_group(arch, kw):
    model = getattr(models, arch)(num_classes=10, **kw)
    groups = ifv.find_groups(model, torch.randn(1, 3, 32, 32))
    assert sorted(g.paper_index for g in groups) == list(range(len(groups)))
    by_paper = {g.paper_index: {m.name for m in g.members if m.role == "out"} for g in groups}
    expect = [e if isinstance(e, set) else {e} for e in PAPER_NUMBERING[arch]]
    assert [by_paper[i] for i in range(len(groups))] == expect
    with_outputs = ifv.find_groups(model, torch.randn(1, 3, 32, 32), include_outputs=True)
    assert [g.paper_index for g in with_outputs if g.name in ("classifier", "linear")] == [-1]


def test_paper_numbering_of_a_small_resnet():
    model = TinyResNet()
    groups = ifv.find_groups(model, torch.randn(1, 3, 16, 16))
    g1 = next(g for g in groups if g.paper_index == 1)
    assert g1.name == "layer2.0.conv1"  # G0 is the last stream, then the last block's conv1


# ---------------------------------------------------------------- cause 5: the BatchNorm eps quirk

@torch.no_grad()
def test_authors_bn_eps_fold_is_their_formula():
    torch.manual_seed(0)
    model = randomize_bn(conv_bn_net()).eval()
    x = torch.randn(4, 1, 8, 8)
    conv, bn = model[0], model[1]
    folded = ifv.fold_batchnorm(model, x, bn_eps="authors")
    scale = bn.weight / bn.running_var.sqrt()
    assert rel_err(folded[0].weight, conv.weight * scale[:, None, None, None]) < 1e-6
    assert rel_err(folded[0].bias, (conv.bias - bn.running_mean) * scale + bn.bias) < 1e-6
    assert torch.equal(folded[1].running_var, torch.ones_like(bn.running_var))
    # its BatchNorm still divides by sqrt(1 + eps): the function changes by about eps / 2 per layer
    err = rel_err(folded(x), model(x))
    assert 1e-6 < err < 1e-4
    # with eps = 0 the quirk vanishes
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    assert rel_err(ifv.fold_batchnorm(model, x, bn_eps="authors")(x), model(x)) < 1e-5


@pytest.mark.parametrize("method", ["intra-fusion", "default"])
def test_authors_bn_eps_leaves_the_callers_model_alone(method):
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).eval()
    x = torch.randn(2, 3, 16, 16)
    before = state_copy(model)
    res = ifv.prune(model, x[:1], 0.5, method=method, config=ifv.OTConfig.paper(bn_eps="authors"))
    assert_state_equal(model, before)
    exact = ifv.prune(model, x[:1], 0.5, method=method, config=ifv.OTConfig.paper())
    assert [g.k for g in res.groups] == [g.k for g in exact.groups]
    assert torch.isfinite(res.model.eval()(x)).all()


# ---------------------------------------------------------------- golden cells of the authors' code

def _golden_dir():
    from intrafusion_viz.data import shared_dir

    candidates = [os.environ.get("IFV_SHARED"), shared_dir()]
    for c in candidates:
        if c and (Path(c) / "golden" / "paper" / "authors_cells.pt").is_file():
            return Path(c) / "golden" / "paper"
    return None


GOLDEN = _golden_dir()
needs_golden = pytest.mark.skipif(GOLDEN is None, reason="golden cells of the authors' code not found "
                                  "(set INTRAFUSION_VIZ_SHARED to the folder holding golden/paper)")
CELLS = torch.load(GOLDEN / "authors_cells.pt") if GOLDEN else []


def _golden_cells(keep):
    """The golden cells that ``keep`` selects, or one visibly skipped placeholder when the folder is absent."""
    if GOLDEN is None:
        return [pytest.param(None, id="golden-cells-absent",
                             marks=pytest.mark.skip(reason="golden cells of the authors' code not found "
                                                    "(set INTRAFUSION_VIZ_SHARED to the folder holding golden/paper)"))]
    return [pytest.param(c, id=_cell_id(c)) for c in CELLS if keep(c)]


@pytest.fixture(scope="module")
def golden_models():
    out = {}
    for arch in ("vgg11_bn", "resnet18"):
        state = torch.load(GOLDEN / f"{arch}.pt")
        for variant in ("eps", "eps0"):
            model = getattr(models, arch)(num_classes=10)
            model.load_state_dict(state)
            if variant == "eps0":
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eps = 0.0
            out[arch, variant] = model.eval()
    return out, torch.load(GOLDEN / "inputs.pt")


def _cell_id(c):
    return f"{c['model']}-{c['variant']}-G{c['paper_group']}-{c['sparsity']}-{c['method']}"


def _run_cell(golden_models, cell, config):
    models_, inputs = golden_models
    model = models_[cell["model"], cell["variant"]]
    x = inputs["example"]
    group = next(g for g in ifv.find_groups(model, x) if g.paper_index == cell["paper_group"])
    assert {m.name for m in group.members if m.role == "out"} == set(cell["out_layers"])
    res = ifv.prune(model, x, {group.index: cell["sparsity"]}, method=cell["method"], importance="l1",
                    config=config)
    with torch.no_grad():
        logits = res.model.eval()(inputs["eval"])
    return res.groups[0].kept, rel_err(logits, cell["logits"])


@needs_golden
@pytest.mark.parametrize("cell", _golden_cells(lambda c: c["variant"] == "eps0"))
def test_preset_reproduces_the_authors_code(golden_models, cell):
    kept, err = _run_cell(golden_models, cell, ifv.OTConfig.paper())
    assert torch.equal(kept, torch.as_tensor(cell["kept"]))
    assert err < 1e-5


@needs_golden
@pytest.mark.slow
@pytest.mark.parametrize("cell", _golden_cells(lambda c: c["variant"] == "eps"))
def test_preset_with_the_authors_eps_quirk_reproduces_their_eps_cells(golden_models, cell):
    kept, err = _run_cell(golden_models, cell, ifv.OTConfig.paper(bn_eps="authors"))
    assert torch.equal(kept, torch.as_tensor(cell["kept"]))
    assert err < 1e-5


@needs_golden
@pytest.mark.parametrize("cell", _golden_cells(lambda c: c["variant"] == "eps" and c["paper_group"] == 1))
def test_exact_folding_on_eps_cells_differs_by_the_eps_quirk_only(golden_models, cell):
    """The deliberate difference: folding exactly, the kept set is the authors' and the outputs differ
    by the size of their eps quirk (about 3e-4), or more where a near-tied plan flips."""
    kept, err = _run_cell(golden_models, cell, ifv.OTConfig.paper())
    assert torch.equal(kept, torch.as_tensor(cell["kept"]))
    assert err < 2e-2
