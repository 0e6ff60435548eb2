"""``GroupResult.plan`` / ``.out_map`` / ``.in_map`` are held compactly by ``prune`` and made dense on first read.

A record of a prune keeps a selection as its kept indices and an exact plan as its nonzeros (no
``(n, k)`` tensor) until a field is read; the read gives what the dense code gave (``selection_plan``,
``merge_matrices`` of the plan) and is kept.  The surgery builds one group's dense maps at a time.
The pruned models are compared with the same prune whose plans are stored densely (bit for bit).
"""
import copy
import gc
import pickle
import weakref

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz.plan import _compact
from intrafusion_viz.plan._lazy_cost import LazyCost, dropped_rows_cost

from helpers import TinyResNet, mlp, randomize_bn


def _net(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(TinyResNet(w=8), seed).eval(), torch.randn(2, 3, 8, 8)


def _grouped(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return randomize_bn(model, seed).eval(), torch.randn(2, 3, 8, 8)


def _dense_tensors(record):
    """The (n, k) plan and map tensors a record holds right now (without reading its properties)."""
    return [name for name, value in vars(record).items()
            if name != "_cost" and torch.is_tensor(value) and value.dim() == 2 and tuple(value.shape) == (record.n, record.k)]


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_default_record_holds_no_dense_plan_until_read(sparsity):
    model, x = _net()
    res = ifv.prune(model, x, sparsity, method="default")
    assert res.groups
    for rec in res.groups:
        assert _dense_tensors(rec) == []  # kept indices only
        stored = vars(rec)["_plan"]
        assert isinstance(stored, _compact.CompactPlan) and stored.is_selection
        assert stored.nbytes == 8 * rec.k  # one int64 per kept channel, instead of 24 n k bytes
        plan = rec.plan
        assert plan.dtype == torch.float64 and torch.equal(plan, ifv.selection_plan(rec.n, rec.kept))
        out_map, in_map = ifv.merge_matrices(plan)
        assert torch.equal(rec.out_map, out_map) and torch.equal(rec.in_map, in_map)
        assert rec.plan is plan  # a read is kept (as cost is)
        assert sorted(_dense_tensors(rec)) == ["_in_map", "_out_map", "_plan"]


@pytest.mark.parametrize("config", [ifv.OTConfig(), ifv.OTConfig.paper(), ifv.OTConfig(fusion="paper")],
                         ids=["barycentric", "paper", "paper-fusion"])
def test_exact_plans_are_stored_as_their_nonzeros_and_read_back_exactly(config):
    model, x = _net()
    res = ifv.prune(model, x, 0.5, config=config)
    for rec in res.groups:
        stored = vars(rec)["_plan"]
        assert isinstance(stored, _compact.CompactPlan) and not stored.is_selection
        assert len(stored.values) <= rec.n + rec.k - 1  # a vertex of the transport polytope
        plan = rec.plan
        assert plan.shape == (rec.n, rec.k) and plan.dtype == torch.float64
        assert int((plan != 0).sum()) == len(stored.values)
        torch.testing.assert_close(plan.sum(1), torch.full((rec.n,), 1.0 / rec.n, dtype=torch.float64),
                                   rtol=0, atol=1e-15)
        out_map, in_map = ifv.merge_matrices(plan, config.fusion)
        assert torch.equal(rec.out_map, out_map) and torch.equal(rec.in_map, in_map)


def test_dense_and_compact_storage_give_the_same_prune_bit_for_bit(monkeypatch):
    """The same prunes with every plan kept dense (the old storage): models, plans, maps and costs equal."""
    cases = [(_net, dict(method="intra-fusion")), (_net, dict(method="default")),
             (_net, dict(method="fold")), (_net, dict(config=ifv.OTConfig.paper())),
             (_net, dict(sequential=True)), (_net, dict(inplace=True)),
             (_grouped, dict(method="intra-fusion")), (_grouped, dict(method="default")),
             (_net, dict(config=ifv.OTConfig(solver="sinkhorn", reg=0.05)))]
    for make, kw in cases:
        model, x = make()
        compact = ifv.prune(copy.deepcopy(model), x, 0.5, **kw)
        with monkeypatch.context() as m:
            m.setattr("intrafusion_viz.pruning._steps.compact_plan", lambda plan: _compact.densify(plan))
            m.setattr(_compact.CompactPlan, "selection",
                      classmethod(lambda cls, n, kept: ifv.selection_plan(n, kept)))
            dense = ifv.prune(copy.deepcopy(model), x, 0.5, **kw)
        assert all(torch.is_tensor(vars(r)["_plan"]) for r in dense.groups)
        _same_model(compact.model, dense.model)
        for a, b in zip(compact.groups, dense.groups):
            for field in ("kept", "plan", "out_map", "in_map", "assignment"):
                assert torch.equal(getattr(a, field), getattr(b, field)), (kw, a.index, field)
            assert (a.cost is None) == (b.cost is None) and (a.cost is None or torch.equal(a.cost, b.cost))


def test_sinkhorn_plan_stays_dense_and_block_diagonal_plans_are_compact():
    model, x = _net()
    res = ifv.prune(model, x, 0.5, config=ifv.OTConfig(solver="sinkhorn", reg=0.05))
    rec = res.groups[0]
    assert torch.is_tensor(vars(rec)["_plan"])  # every entry is nonzero: the nonzeros would be larger
    assert isinstance(vars(rec)["_out_map"], _compact.DerivedMap)
    assert torch.equal(rec.out_map, ifv.merge_matrices(rec.plan)[0])

    model, x = _grouped()
    res = ifv.prune(model, x, 0.5, method="intra-fusion")
    rec = next(r for r in res.groups if r.n == 16)
    assert isinstance(vars(rec)["_plan"], _compact.CompactPlan)
    plan = rec.plan
    for b in range(4):  # channels of conv group b go only to kept channels of conv group b
        block = plan[4 * b:4 * (b + 1)]
        assert float(block.sum()) == pytest.approx(0.25, abs=1e-15)
        assert float(block[:, 2 * b:2 * (b + 1)].sum()) == pytest.approx(0.25, abs=1e-15)


def test_hand_made_records_keep_what_they_are_given():
    plan = torch.rand(6, 3, dtype=torch.float64)
    out_map, in_map = ifv.merge_matrices(plan)
    rec = ifv.GroupResult(0, 1, "g", 6, 3, 0.5, torch.tensor([0, 2, 4]), torch.rand(6, dtype=torch.float64),
                          None, plan, out_map, in_map)
    assert rec.plan is plan and rec.out_map is out_map and rec.in_map is in_map
    rec.plan = plan * 2
    assert torch.equal(rec.plan, plan * 2) and rec.out_map is out_map
    assert torch.equal(copy.deepcopy(rec).plan, plan * 2)


def test_records_pickle_and_copy_compact():
    model, x = _net()
    for method in ("default", "intra-fusion"):
        res = ifv.prune(model, x, 0.5, method=method)
        rec = res.groups[1]
        for clone in (pickle.loads(pickle.dumps(rec)), copy.deepcopy(rec)):
            assert _dense_tensors(clone) == []
            assert torch.equal(clone.plan, rec.plan) and torch.equal(clone.out_map, rec.out_map)
            assert torch.equal(clone.in_map, rec.in_map) and torch.equal(clone.assignment, rec.assignment)


def test_fold_with_data_free_repair_leaves_the_records_compact():
    model, x = _net()
    res = ifv.prune(model, x, 0.5, method="fold")  # repair="auto": the data-free repair reads every plan
    assert all(_dense_tensors(r) == [] for r in res.groups)


@pytest.mark.parametrize("shared_layers", [False, True])
@pytest.mark.parametrize("method", ["intra-fusion", "default"])
def test_the_surgery_holds_one_groups_dense_maps_at_a_time(shared_layers, method, monkeypatch):
    """Each group's maps are freed before the next group's are built (groups that share layers or not);
    a selection (default pruning) is cut by its kept indices without a dense map."""
    alive, most, builds = [], [0], [0]
    real = _compact.MergeMaps.build

    def spy(self):
        maps = real(self)
        gc.collect()
        live = [r for r in alive if r() is not None]
        most[0] = max(most[0], len(live))
        alive[:] = live + [weakref.ref(t) for t in maps]
        builds[0] += 1
        return maps

    monkeypatch.setattr(_compact.MergeMaps, "build", spy)
    if not shared_layers:  # groups 0 and 2 of an MLP share no layer
        torch.manual_seed(0)
        model, x, groups = mlp(widths=(8, 8, 8, 8)), torch.randn(4, 5), [0, 2]
    else:
        (model, x), groups = _net(), None
    res = ifv.prune(model, x, 0.5, method=method, groups=groups)
    assert len(res.groups) > 1
    assert most[0] == 0  # no earlier group's map was still alive when the next was built
    assert builds[0] == (0 if method == "default" else len(res.groups))  # selections: index ops


@pytest.mark.parametrize("n, k, d", [(40, 13, 70), (9, 8, 5)])
def test_compacted_lazy_cost_completes_to_cost_matrix_bit_for_bit(n, k, d):
    g = torch.Generator().manual_seed(n)
    features = torch.randn(n, d, generator=g)
    kept = torch.sort(torch.randperm(n, generator=g)[:k]).values
    cfg = ifv.OTConfig.paper()
    expect = ifv.cost_matrix(features, kept, cfg)
    lazy = dropped_rows_cost(features, kept, cfg).compact()
    assert lazy.partial.shape == (n - k, k)  # the dropped rows only
    clone = pickle.loads(pickle.dumps(lazy))
    assert torch.equal(lazy.full(), expect) and torch.equal(clone.full(), expect)
    assert torch.equal(lazy.compact().full(), expect)  # completed: compact() changes nothing


def test_intra_fusion_records_hold_the_dropped_cost_rows_only():
    model, x = _net()
    res = ifv.prune(model, x, 0.5, config=ifv.OTConfig.paper())
    for rec in res.groups:
        stored = vars(rec)["_cost"]
        assert isinstance(stored, LazyCost) and stored.partial.shape == (rec.n - rec.k, rec.k)
        assert rec.cost.shape == (rec.n, rec.k) and bool((rec.cost[rec.kept, torch.arange(rec.k)] == 0).all())


def test_merge_maps_of_a_selection_are_merge_matrices_of_the_selection_plan():
    kept = torch.tensor([1, 4, 5, 8])
    maps = _compact.MergeMaps(_compact.CompactPlan.selection(10, kept), kept)
    assert maps.selection
    out_map, in_map = ifv.merge_matrices(ifv.selection_plan(10, kept))
    built = maps.build()
    assert torch.equal(built[0], out_map) and torch.equal(built[1], in_map) and torch.equal(built[2], out_map)
    assert torch.equal(maps.norm_map(), out_map)
    paper = _compact.MergeMaps(_compact.CompactPlan.selection(10, kept), kept, "paper")
    assert not paper.selection and torch.equal(paper.build()[1], in_map)


@pytest.mark.parametrize("cfg", [ifv.OTConfig(), ifv.OTConfig(p=1.0), ifv.OTConfig(p=3.0),
                                 ifv.OTConfig(standardize=True), ifv.OTConfig(target="centroid")])
def test_cost_matrix_inplace_gives_the_same_cost_bit_for_bit(cfg):
    """inplace=True normalises the caller's vectors in place (one copy less) and changes no number."""
    torch.manual_seed(0)
    x = torch.randn(24, 40)
    kept = torch.tensor([1, 4, 5, 9, 11, 20])
    expected = ifv.cost_matrix(x, kept, cfg)
    mine = x.clone()
    assert torch.equal(ifv.cost_matrix(mine, kept, cfg, inplace=True), expected)
    assert torch.equal(ifv.cost_matrix(x, kept, cfg), expected)  # without inplace the input is untouched


def test_prune_with_its_own_vectors_normalised_in_place_matches_caller_features():
    """prune normalises the vectors it built in place; the same vectors passed in (not written) agree."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 12, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(12 * 4 * 4, 5)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    own = ifv.prune(model, x, 0.5, method="intra-fusion")
    given = ifv.prune(model, x, 0.5, method="intra-fusion",
                      features=lambda m, g: ifv.channel_features(m, g, fold=True, bias=True))
    assert all(torch.equal(a.cost, b.cost) and torch.equal(a.plan, b.plan) for a, b in zip(own.groups, given.groups))
    for name, t in own.model.state_dict().items():
        assert torch.equal(t, given.model.state_dict()[name]), name
