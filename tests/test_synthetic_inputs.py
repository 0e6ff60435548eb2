"""ifv.synthetic_inputs: inputs matched to a model's BatchNorm statistics (ZeroQ's distilled data)."""
import copy

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz.repair._synthetic import bn_statistics_gap


def _cnn_with_statistics(seed=0):
    """A small CNN whose BatchNorms hold the exact statistics of 256 inputs of mean 0.5, std 2."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8), nn.BatchNorm1d(8, momentum=None),
                          nn.ReLU(), nn.Linear(8, 4))
    data = 0.5 + 2.0 * torch.randn(256, 3, 8, 8)
    model.train()
    with torch.no_grad():
        model(data)  # momentum=None: running statistics are the cumulative average over this batch
    return model.eval(), data


def test_synthetic_inputs_match_the_stored_statistics():
    model, data = _cnn_with_statistics()
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    x = ifv.synthetic_inputs(model, data[:1], n=64, steps=150)
    assert x.shape == (64, 3, 8, 8) and not x.requires_grad
    noise = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gap, start = bn_statistics_gap(model, x), bn_statistics_gap(model, noise)
    assert gap < start / 20, (gap, start)
    # every BatchNorm (2d and 1d) sees means and stds close to the ones it stored
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, mod_id=id(m): seen.__setitem__(mod_id, i[0]))
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            a = seen[id(m)]
            dims = [d for d in range(a.dim()) if d != 1]
            sd = torch.sqrt(m.running_var + m.eps)
            assert torch.allclose(a.mean(dims), m.running_mean, atol=0.15 * float(sd.max()))
            assert torch.allclose(a.std(dims, unbiased=False), sd, rtol=0.15)
    # the caller's model is untouched: weights, statistics, mode, requires_grad flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.training and [p.requires_grad for p in model.parameters()] == flags


def test_synthetic_inputs_are_seeded_and_keep_train_mode():
    model, data = _cnn_with_statistics(1)
    model.train()
    a = ifv.synthetic_inputs(model, data[:1], n=8, steps=5, seed=3)
    b = ifv.synthetic_inputs(model, data[:1], n=8, steps=5, seed=3)
    c = ifv.synthetic_inputs(model, data[:1], n=8, steps=5, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training


def test_synthetic_inputs_keep_each_submodules_own_mode():
    model, data = _cnn_with_statistics(1)
    model.train()
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0].eval()  # a frozen BatchNorm
    modes = [m.training for m in model.modules()]
    ifv.synthetic_inputs(model, data[:1], n=4, steps=2)
    assert [m.training for m in model.modules()] == modes and not frozen.training


def test_synthetic_inputs_refuse_bad_input():
    model, data = _cnn_with_statistics()
    with pytest.raises(ValueError, match="n must be"):
        ifv.synthetic_inputs(model, data[:1], n=1)
    with pytest.raises(ValueError, match="steps"):
        ifv.synthetic_inputs(model, data[:1], steps=-1)
    with pytest.raises(TypeError, match="example"):
        ifv.synthetic_inputs(model, [1.0, 2.0])
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="no BatchNorm"):
        ifv.synthetic_inputs(plain, data[:1])


def test_bn_repair_on_synthetic_inputs_restores_a_merged_network():
    """Merge half of every group without data; BatchNorm statistics re-estimated on synthetic inputs bring
    the merged network's logits closer to the original's than the data-free repair's prediction does."""
    model, data = _cnn_with_statistics(2)
    res = ifv.prune(model, data[:1], 0.5, config=ifv.OTConfig.data_free(), repair="none")
    x = ifv.synthetic_inputs(model, data[:1], n=64, steps=150)
    with torch.no_grad():
        want = model(data)

        def error(net):
            return float((net.eval()(data) - want).norm() / want.norm())

        e_none = error(res.model)
        e_syn = error(ifv.repair(res, model, x, mode="bn"))
    assert e_syn < e_none, (e_syn, e_none)
