"""OTFusion (``ifv.fuse``): permuted copies are un-permuted exactly, self-fusion is the identity, alignment beats averaging."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv

from helpers import TinyResNet, assert_state_equal, conv_bn_net, mlp, randomize_bn, rel_err, state_copy

TOL = 1e-5  # relative, float32 outputs: a permutation matrix times weights is exact, the BN arithmetic is not


def cases():
    torch.manual_seed(0)
    return [
        ("mlp", mlp(), torch.randn(32, 5)),
        ("conv-bn-flatten", randomize_bn(conv_bn_net()), torch.randn(32, 1, 8, 8)),
        ("resnet-bn", randomize_bn(TinyResNet()), torch.randn(32, 3, 8, 8)),
        ("vgg11-bn", randomize_bn(ifv.models.vgg11_bn(width_mult=0.0625)), torch.randn(8, 3, 32, 32)),
    ]


CASES = cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,model,x", CASES, ids=IDS)
def test_permute_neurons_keeps_function_and_changes_weights(name, model, x):
    model.eval()
    permuted = ifv.permute_neurons(model, x[:1], seed=3)
    assert rel_err(permuted(x), model(x)) < TOL
    first = next(iter(model.state_dict()))
    assert not torch.equal(permuted.state_dict()[first], model.state_dict()[first])


@pytest.mark.parametrize("cost", ["weight", "activation"])
@pytest.mark.parametrize("name,model,x", CASES, ids=IDS)
def test_fusing_a_permuted_copy_gives_back_the_model(name, model, x, cost):
    model.eval()
    permuted = ifv.permute_neurons(model, x[:1], seed=1)
    before_a, before_b = state_copy(model), state_copy(permuted)
    res = ifv.fuse([model, permuted], x[:1], cost=cost, batch=x if cost == "activation" else None)
    assert rel_err(res.model(x), model(x)) < TOL
    assert all(g.is_permutation for g in res.groups)
    # a residual stream is one group: aligned once for every layer in it
    assert len(res.groups) == len(ifv.find_groups(model, x[:1]))
    assert_state_equal(model, before_a)
    assert_state_equal(permuted, before_b)


@pytest.mark.parametrize("name,model,x", CASES, ids=IDS)
def test_fusing_a_model_with_itself_is_the_identity(name, model, x):
    model.eval()
    res = ifv.fuse([model, model], x[:1])
    for key, value in model.state_dict().items():
        assert torch.allclose(res.model.state_dict()[key].float(), value.float(), rtol=0, atol=1e-6), key
    assert all(torch.equal(g.assignment, torch.arange(g.n)) for g in res.groups)


def test_sinkhorn_plan_on_a_permuted_copy_is_nearly_exact():
    _, model, x = CASES[2]
    model.eval()
    permuted = ifv.permute_neurons(model, x[:1], seed=2)
    res = ifv.fuse([model, permuted], x[:1], config=ifv.OTConfig(solver="sinkhorn", reg=0.01))
    assert rel_err(res.model(x), model(x)) < 1e-3
    plan = res.groups[0].plan
    assert torch.allclose(plan.sum(1), torch.full((plan.shape[0],), 1 / plan.shape[0], dtype=plan.dtype), atol=1e-3)


def test_vanilla_averaging_of_a_permuted_copy_breaks_the_function():
    _, model, x = CASES[2]
    model.eval()
    permuted = ifv.permute_neurons(model, x[:1], seed=1)
    res = ifv.fuse([model, permuted], x[:1], method="vanilla")
    assert rel_err(res.model(x), model(x)) > 0.05
    assert all(g.cost is None for g in res.groups)


@torch.no_grad()
def widen_by_duplicating(narrow: nn.Sequential) -> nn.Sequential:
    """An MLP twice as wide that computes the same function: every hidden neuron twice, outgoing weights halved."""
    linears = [m for m in narrow if isinstance(m, nn.Linear)]
    layers, prev_dup = [], False
    for i, lin in enumerate(linears):
        last = i == len(linears) - 1
        w, b = lin.weight.clone(), lin.bias.clone()
        if prev_dup:
            w = torch.cat([w, w], 1) / 2
        if not last:
            w, b = torch.cat([w, w], 0), torch.cat([b, b])
        new = nn.Linear(w.shape[1], w.shape[0])
        new.weight.copy_(w)
        new.bias.copy_(b)
        layers += [new] + ([] if last else [nn.ReLU()])
        prev_dup = not last
    return nn.Sequential(*layers)


@pytest.mark.parametrize("cost", ["weight", "activation"])
def test_fusing_a_wider_duplicate_onto_the_narrow_model_is_exact(cost):
    torch.manual_seed(0)
    narrow, x = mlp((6, 8)), torch.randn(32, 5)
    wide = widen_by_duplicating(narrow)
    assert rel_err(wide(x), narrow(x)) < TOL
    res = ifv.fuse([narrow, wide], x[:1], cost=cost, batch=x if cost == "activation" else None)
    assert [(g.n, g.k) for g in res.groups] == [(12, 6), (16, 8)]
    assert rel_err(res.model(x), narrow(x)) < TOL


def test_fusing_a_pruned_model_into_a_wider_one():
    _, model, x = CASES[3]
    model.eval()
    small = ifv.prune(model, x[:1], 0.5).model
    res = ifv.fuse([model, small], x[:1], batch=x, reset_bn=True)
    assert [(g.n, g.k) for g in res.groups] == [(g.size // 2, g.size) for g in ifv.find_groups(model, x[:1])]
    assert [p.shape for p in res.model.parameters()] == [p.shape for p in model.parameters()]
    assert torch.isfinite(res.model(x)).all()


def test_three_models_and_weights():
    _, model, x = CASES[1]
    model.eval()
    p1, p2 = ifv.permute_neurons(model, x[:1], seed=1), ifv.permute_neurons(model, x[:1], seed=2)
    res = ifv.fuse([model, p1, p2], x[:1], weights=[2, 1, 1])
    assert len(res.aligned) == 2 and res.aligned[0] is res.groups
    assert res.weights == [0.5, 0.25, 0.25]
    assert rel_err(res.model(x), model(x)) < TOL
    assert {r["model"] for r in res.summary()} == {1, 2}


def test_aligned_fusion_beats_vanilla_averaging_on_independently_trained_nets():
    """Two MLPs trained on digits from different seeds: OT-aligned fusion keeps far more accuracy than averaging."""
    d = ifv.data.load_digits_tensors(seed=0, flatten=True)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = ifv.models.MLP(hidden=(64, 64, 64))
        ifv.train(m, (d.x_train, d.y_train), epochs=15, lr=0.05, seed=seed, progress=False)
        models.append(m)
    test = (d.x_test, d.y_test)
    accs = [ifv.accuracy(m, test) for m in models]
    assert min(accs) > 90, accs
    x = d.x_train[:200]
    vanilla = ifv.accuracy(ifv.fuse(models, x[:1], method="vanilla").model, test)
    by_weight = ifv.accuracy(ifv.fuse(models, x[:1], cost="weight").model, test)
    by_activation = ifv.accuracy(ifv.fuse(models, x[:1], batch=x).model, test)
    assert by_weight > vanilla + 10 and by_activation > vanilla + 10, (accs, vanilla, by_weight, by_activation)


def test_records_work_with_the_figures():
    _, model, x = CASES[2]
    model.eval()
    res = ifv.fuse([model, ifv.permute_neurons(model, x[:1])], x[:1], batch=x)
    g = res.groups[0]
    heat = ifv.figures.plan_heatmap(g, title="model B onto model A")
    assert heat.data[0].z.shape == (g.n, g.k)
    emb = ifv.figures.fusion_embedding(g)
    assert len(emb.data) == 3 and len(emb.data[1].x) == g.n + g.k
    assert "model B" in emb.layout.title.text
    _, vgg, xv = CASES[3]
    small = ifv.fuse([vgg.eval(), ifv.prune(vgg, xv[:1], 0.5).model], xv[:1], batch=xv).groups[0]
    assert ifv.figures.plan_heatmap(small).data[0].z.shape == (small.n, small.k)  # k > n


def test_bad_input_is_refused_clearly():
    _, model, x = CASES[1]
    other = mlp()
    with pytest.raises(ValueError, match="at least two"):
        ifv.fuse([model], x[:1])
    with pytest.raises(ValueError, match="method"):
        ifv.fuse([model, model], x[:1], method="average")
    with pytest.raises(ValueError, match="cost"):
        ifv.fuse([model, model], x[:1], cost="gradient")
    with pytest.raises(ValueError, match="batch"):
        ifv.fuse([model, model], x[:1], cost="activation")
    with pytest.raises(ValueError, match="weights"):
        ifv.fuse([model, model], x[:1], weights=[1, -1])
    with pytest.raises((ValueError, RuntimeError)):
        ifv.fuse([model, other], x[:1])
    with pytest.raises(ValueError, match="fold_batchnorm"):  # pruning folded BN: the bias-free conv got a bias
        ifv.fuse([model, ifv.prune(model, x[:1], 0.5, method="intra-fusion").model], x[:1])
    small = ifv.prune(model, x[:1], 0.5, method="intra-fusion").model
    folded = ifv.fold_batchnorm(model, x[:1])
    with pytest.raises(ValueError, match="vanilla"):
        ifv.fuse([folded, small], x[:1], method="vanilla")
    assert ifv.fuse([folded, small], x[:1]).groups[0].n == small[0].out_channels
    wide = conv_bn_net(c=8)
    with pytest.raises(ValueError, match="architecture|tensors"):
        ifv.fuse([model, nn.Sequential(*list(wide)[:3])], x[:1])


# --- OTFusion's own code, recorded (benchmarks/otfusion_side_by_side.py --record) -------------------------------
RECORDED = Path(__file__).resolve().parent / "data" / "otfusion_acts.torch"


def _glue_models(arch):
    """The bias-free architectures of benchmarks/otfusion_side_by_side.py (OTFusion's activation code needs no bias)."""
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 32, bias=False),
                             nn.ReLU(), nn.Linear(32, 10, bias=False))
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 10, bias=False))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_activation_cost_gives_otfusions_assignments(arch):
    """Whole feature maps (the default, pool=None): every neuron goes where OTFusion's own code sends it."""
    record = torch.load(RECORDED, weights_only=True)
    x, case = record["inputs"], record["archs"][arch]
    models = []
    for key in ("state_0", "state_1"):
        model = _glue_models(arch)
        model.load_state_dict(case[key])
        models.append(model.eval())
    # OTFusion aligns its model 0 onto its model 1; ifv.fuse aligns models[1:] onto models[0].
    res = ifv.fuse([models[1], models[0]], x[:1], cost="activation", batch=x)
    assert len(res.groups) == len(case["assignments"])
    for group, theirs in zip(res.groups, case["assignments"]):
        assert group.is_permutation
        assert torch.equal(group.plan.argmax(1), theirs), f"group {group.name}: not OTFusion's assignment"
    if arch == "cnn":  # pooling the 8x8 maps to 2x2 loses where a channel fires: other assignments
        pooled = ifv.fuse([models[1], models[0]], x[:1], cost="activation", batch=x, pool=2)
        same = [float((g.plan.argmax(1) == t).double().mean()) for g, t in zip(pooled.groups, case["assignments"])]
        assert min(same) < 0.9


def test_pool_must_be_a_positive_int():
    x = torch.randn(8, 1, 8, 8)
    model = _glue_models("cnn")
    with pytest.raises(ValueError, match="pool must be None"):
        ifv.fuse([model, model], x[:1], cost="activation", batch=x, pool=0)
