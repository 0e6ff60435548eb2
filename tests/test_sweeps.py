"""The sweep cache never returns a result computed from other inputs; sweeps resolve group keys and
methods the way the rest of the package does."""
import gc

import pytest
import torch

import intrafusion_viz as ifv
from helpers import conv_bn_net


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = conv_bn_net(c=6).eval()
    x = torch.randn(40, 1, 8, 8)
    return model, x


def direct(model, x, data, group, sparsity, method="intra-fusion", **kw):
    return ifv.accuracy(ifv.prune(model, x[:2], {group: sparsity}, method=method, **kw).model, data)


def row(table, group=0, method="intra-fusion"):
    return table[(table.group == group) & (table.method == method)].accuracy.iloc[0]


@pytest.mark.parametrize("cache", [None, "dict"])
def test_fresh_data_gives_fresh_numbers(setup, cache):
    """id(data) is reused after garbage collection: a cache keyed on it returned stale accuracies."""
    model, x = setup
    store = {} if cache == "dict" else None
    g = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(8):
        data = (x, torch.randint(0, 4, (40,), generator=g))  # fresh labels each time, old ones collected
        table = ifv.sweeps.layer_sweep(model, data, x[:2], groups=[0], sparsities=(0.5,), cache=store,
                                       progress=False)
        assert row(table) == direct(model, x, data, 0, 0.5)
        assert table.accuracy.iloc[0] == ifv.accuracy(model, data)
        seen.add(table.accuracy.iloc[0])
        del data, table
        gc.collect()
    assert len(seen) > 3  # the labels really changed the numbers


def test_two_lambdas_do_not_share_results(setup):
    model, x = setup
    data = (x, torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(2)))
    first = lambda g: torch.arange(g.size, dtype=torch.float64)  # noqa: E731
    last = lambda g: -torch.arange(g.size, dtype=torch.float64)  # noqa: E731
    assert first.__name__ == last.__name__
    store = {}
    a = ifv.sweeps.layer_sweep(model, data, x[:2], groups=[0], sparsities=(0.5,), methods=("default",),
                               importance=first, cache=store, progress=False)
    b = ifv.sweeps.layer_sweep(model, data, x[:2], groups=[0], sparsities=(0.5,), methods=("default",),
                               importance=last, cache=store, progress=False)
    assert row(a, method="default") == direct(model, x, data, 0, 0.5, "default", importance=first)
    assert row(b, method="default") == direct(model, x, data, 0, 0.5, "default", importance=last)
    kept_first = ifv.prune(model, x[:2], {0: 0.5}, method="default", importance=first).groups[0].kept
    kept_last = ifv.prune(model, x[:2], {0: 0.5}, method="default", importance=last).groups[0].kept
    assert set(kept_first.tolist()).isdisjoint(kept_last.tolist())  # the two really prune differently


def test_taylor_batch_is_part_of_the_key(setup):
    model, x = setup
    data = (x, torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(3)))
    store = {}
    for seed in (4, 5, 6):
        g = torch.Generator().manual_seed(seed)
        batch = (torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g))
        table = ifv.sweeps.layer_sweep(model, data, x[:2], groups=[0, 1], sparsities=(0.5,), importance="taylor",
                                       batch=batch, cache=store, progress=False)
        for group in (0, 1):
            assert row(table, group) == direct(model, x, data, group, 0.5, importance="taylor", batch=batch)


def test_cache_hit_returns_the_same_values_and_in_place_changes_miss(setup, monkeypatch):
    model, x = setup
    data = (x, torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(7)))
    store = {}
    kw = dict(groups=[0, 1], sparsities=(0.3, 0.6), cache=store, progress=False)
    first = ifv.sweeps.layer_sweep(model, data, x[:2], **kw)
    n = len(store)
    assert n == 1 + 2 * 2 * 2

    def no_prune(*a, **k):
        raise AssertionError("a cache hit must not prune")

    with monkeypatch.context() as m:
        m.setattr(ifv.sweeps, "prune", no_prune)
        again = ifv.sweeps.layer_sweep(model, (x.clone(), data[1].clone()), x[:2].clone(), **kw)  # equal content
    assert again.equals(first) and len(store) == n
    with torch.no_grad():
        model[0].weight.mul_(-1.0)  # in place: the old entries no longer apply
    changed = ifv.sweeps.layer_sweep(model, data, x[:2], **kw)
    assert len(store) == 2 * n
    for r in changed[changed.method != "original"].itertuples():
        assert r.accuracy == direct(model, x, data, r.group, r.sparsity, r.method)


def test_one_dict_for_two_models_keeps_them_apart(setup):
    model, x = setup
    other = conv_bn_net(c=6).eval()
    other.load_state_dict(model.state_dict())
    other[2] = torch.nn.Tanh().eval()  # same weights, another function: the weights' hash alone cannot tell
    assert ifv.sweeps._model_digest(other) == ifv.sweeps._model_digest(model)
    data = (x, torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(8)))
    store = {}
    for m in (model, other, model):
        table = ifv.sweeps.layer_sweep(m, data, x[:2], groups=[0], sparsities=(0.5,), cache=store, progress=False)
        assert table.accuracy.iloc[0] == ifv.accuracy(m, data)
        assert row(table) == direct(m, x, data, 0, 0.5)


def test_group_keys_mean_what_they_mean_in_prune(setup):
    model, x = setup
    data = (x, torch.randint(0, 4, (40,)))
    groups = ifv.find_groups(model, x[:2])
    g = groups[-1]
    kw = dict(sparsities=(0.5,), methods=("default",), progress=False, cache=False)
    for key in (g.index, g.name, f"G{g.paper_index}", [g.name]):
        table = ifv.sweeps.layer_sweep(model, data, x[:2], groups=key, **kw)
        assert list(table.group) == [-1, g.index]
    with pytest.raises(IndexError, match="out of range"):
        ifv.sweeps.layer_sweep(model, data, x[:2], groups=[len(groups)], **kw)
    with pytest.raises(KeyError, match="no group named 'nope'"):
        ifv.sweeps.layer_sweep(model, data, x[:2], groups="nope", **kw)


def test_methods_come_from_the_engine():
    assert ifv.sweeps.sweep_methods()[:len(ifv.METHODS)] == tuple(ifv.METHODS)
    assert ifv.sweeps.SWEEP_METHODS[-1] == "intra-fusion (paper)"
    with pytest.raises(ValueError, match="method must be one of"):
        ifv.sweeps.layer_sweep(conv_bn_net(), (torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)),
                               torch.randn(2, 1, 8, 8), methods=("fused",), progress=False)
