"""Property tests: random small MLPs and CNNs, random sparsities, both methods."""
import copy

import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import intrafusion_viz as ifv

from helpers import assert_state_equal, duplicate_group, keep_first_half, randomize_bn, rel_err, state_copy


def build_mlp(widths, bn):
    layers, prev = [], 5
    for w in widths:
        layers += [nn.Linear(prev, w)] + ([nn.BatchNorm1d(w)] if bn else []) + [nn.ReLU()]
        prev = w
    return nn.Sequential(*layers, nn.Linear(prev, 3))


def build_cnn(widths, bn, flatten):
    layers, prev = [], 2
    for w in widths:
        layers += [nn.Conv2d(prev, w, 3, padding=1)] + ([nn.BatchNorm2d(w)] if bn else []) + [nn.ReLU()]
        prev = w
    head = [nn.Flatten(), nn.Linear(prev * 16, 3)] if flatten else [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, 3)]
    return nn.Sequential(*layers, *head)


architectures = st.one_of(
    st.builds(lambda w, bn: ("mlp", build_mlp(w, bn)), st.lists(st.integers(1, 9), min_size=1, max_size=3), st.booleans()),
    st.builds(lambda w, bn, f: ("cnn", build_cnn(w, bn, f)), st.lists(st.integers(1, 7), min_size=1, max_size=3),
              st.booleans(), st.booleans()),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures, sparsity=st.floats(0.0, 0.95), method=st.sampled_from(["default", "intra-fusion"]),
       solver=st.sampled_from(["emd", "sinkhorn"]), training=st.booleans(), seed=st.integers(0, 3))
def test_random_architectures_prune_to_expected_shapes(arch, sparsity, method, solver, training, seed):
    kind, model = arch
    torch.manual_seed(seed)
    randomize_bn(model, seed)
    model.train(training)
    x = torch.randn(4, 5) if kind == "mlp" else torch.randn(4, 2, 4, 4)
    state = state_copy(model)
    cfg = ifv.OTConfig(solver=solver, reg=0.1)
    res = ifv.prune(model, x, sparsity, method=method, config=cfg, importance="l2")
    assert_state_equal(model, state)
    assert res.model.training == training
    layers = [m for m in res.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    originals = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for g in res.groups:
        assert g.k == ifv.num_kept(g.n, sparsity)
    # every hidden layer shrank to num_kept, the output layer kept its classes
    for before, after in zip(originals[:-1], layers[:-1]):
        n = before.weight.shape[0]
        assert after.weight.shape[0] == ifv.num_kept(n, sparsity)
    assert layers[-1].weight.shape[0] == 3
    out = res.model(x)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in res.model.parameters())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures, method=st.sampled_from(["default", "intra-fusion"]), seed=st.integers(0, 3))
def test_random_architectures_sparsity_zero_is_the_same_function(arch, method, seed):
    kind, model = arch
    torch.manual_seed(seed)
    randomize_bn(model, seed)
    x = torch.randn(6, 5) if kind == "mlp" else torch.randn(6, 2, 4, 4)
    res = ifv.prune(model.eval(), x[:1], 0.0, method=method)
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) <= 1e-6
        # train mode too (batch statistics), on copies so running statistics stay put
        assert rel_err(copy.deepcopy(res.model).train()(x), copy.deepcopy(model).train()(x)) <= 1e-5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures, solver=st.sampled_from(["emd", "sinkhorn"]), seed=st.integers(0, 3))
def test_random_architectures_merging_duplicates_is_exact(arch, solver, seed):
    """Merging exact copies (channel i + n/2 duplicates channel i) onto one of each pair keeps the function."""
    kind, model = arch
    torch.manual_seed(seed)
    randomize_bn(model, seed)
    x = torch.randn(6, 5) if kind == "mlp" else torch.randn(6, 2, 4, 4)
    model.eval()
    groups = ifv.find_groups(model, x[:1])
    index = next((g.index for g in groups if g.size % 2 == 0), None)
    if index is None:
        return  # every hidden layer has an odd width: no pairs to merge
    duplicate_group(model, groups[index])
    # exact for the exact solver; Sinkhorn with a small reg is within its marginal tolerance
    cfg = ifv.OTConfig(solver=solver, reg=0.01)
    res = ifv.prune(model, x[:1], {index: 0.5}, importance=keep_first_half, config=cfg)
    with torch.no_grad():
        assert rel_err(res.model(x), model(x)) <= (1e-5 if solver == "emd" else 1e-2)
