"""Transport plans: marginals, optimality against POT, merge maps."""
import ot
import pytest
import torch

import intrafusion_viz as ifv


def _problem(n, k, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g, dtype=torch.float64)
    importance = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    kept = torch.sort(torch.topk(importance, k).indices).values
    return features, importance, kept


@pytest.mark.parametrize("n,k", [(12, 6), (12, 4), (13, 5), (40, 29), (64, 16), (9, 9), (10, 1)])
@pytest.mark.parametrize("masses", [("uniform", "uniform"), ("importance", "importance"), ("uniform", "importance")])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_exact_plan_meets_marginals_and_is_optimal(n, k, masses, p):
    features, importance, kept = _problem(n, k)
    cfg = ifv.OTConfig(p=p, source_mass=masses[0], target_mass=masses[1])
    cost = ifv.cost_matrix(features, kept, cfg)
    a = ifv.masses(cfg.source_mass, importance, n)
    b = ifv.masses(cfg.target_mass, importance[kept], k)
    plan = ifv.transport_plan(cost, a, b, cfg, kept=kept)
    assert plan.shape == (n, k) and (plan >= 0).all()
    assert torch.allclose(plan.sum(1), a, atol=1e-12)
    assert torch.allclose(plan.sum(0), b, atol=1e-12)
    # the reduced solver (kept channels stay in place) reaches POT's optimum on the full problem
    reference = ot.emd2(a.numpy(), b.numpy(), cost.numpy(), numItermax=10**7)
    assert float((plan * cost).sum()) == pytest.approx(reference, rel=1e-9, abs=1e-12)


def test_uniform_half_sparsity_is_a_hard_assignment():
    features, importance, kept = _problem(64, 32)
    cost = ifv.cost_matrix(features, kept)
    plan = ifv.transport_plan(cost, ifv.masses("uniform", None, 64), ifv.masses("uniform", None, 32), kept=kept)
    assert ((plan > 0).sum(1) == 1).all()  # every channel goes to exactly one kept channel
    assert torch.equal(plan.argmax(1)[kept], torch.arange(32))  # kept channels stay


def test_sinkhorn_marginals_and_softness():
    features, importance, kept = _problem(30, 10)
    a, b = ifv.masses("uniform", None, 30), ifv.masses("uniform", None, 10)
    cost = ifv.cost_matrix(features, kept)
    soft = ifv.transport_plan(cost, a, b, ifv.OTConfig(solver="sinkhorn", reg=0.5))
    sharp = ifv.transport_plan(cost, a, b, ifv.OTConfig(solver="sinkhorn", reg=0.01))
    for plan in (soft, sharp):
        assert torch.allclose(plan.sum(1), a, atol=1e-6) and torch.allclose(plan.sum(0), b, atol=1e-6)
    exact = ifv.transport_plan(cost, a, b, kept=kept)
    entropy = lambda P: float(-(P[P > 0] * P[P > 0].log()).sum())
    assert entropy(soft) > entropy(sharp) > entropy(exact) - 1e-9
    # a small reg approaches the exact optimum from above (measured gap: 0.29 %)
    ratio = float((sharp * cost).sum()) / float((exact * cost).sum())
    assert 1.0 - 1e-6 <= ratio <= 1.005


def test_sinkhorn_failure_is_reported():
    features, importance, kept = _problem(600, 300)  # too large for the epsilon-scaling fallback
    cost = ifv.cost_matrix(features, kept)
    with pytest.raises(RuntimeError, match="Sinkhorn did not converge"):
        ifv.transport_plan(cost, ifv.masses("uniform", None, 600), ifv.masses("uniform", None, 300),
                           ifv.OTConfig(solver="sinkhorn", reg=1e-4, max_iter=3))


def test_sinkhorn_small_reg_falls_back():
    features, importance, kept = _problem(40, 20)
    cost = ifv.cost_matrix(features, kept)
    a, b = ifv.masses("uniform", None, 40), ifv.masses("uniform", None, 20)
    plan = ifv.transport_plan(cost, a, b, ifv.OTConfig(solver="sinkhorn", reg=1e-3))
    # accepted Sinkhorn plans meet the marginals to 1e-3 in L1 (documented in transport_plan)
    assert float((plan.sum(1) - a).abs().sum() + (plan.sum(0) - b).abs().sum()) <= 1e-3
    exact = ifv.transport_plan(cost, a, b, kept=kept)
    assert float((plan * cost).sum()) == pytest.approx(float((exact * cost).sum()), rel=0.02)


def test_emd_that_stops_short_raises():
    features, importance, kept = _problem(60, 20)
    cost = ifv.cost_matrix(features, kept)
    a, b = ifv.masses("importance", importance, 60), ifv.masses("importance", importance[kept], 20)
    with pytest.raises(RuntimeError, match="did not reach the optimum"):
        ifv.transport_plan(cost, a, b, ifv.OTConfig(max_iter=2))


def test_bad_cost_and_masses():
    cost = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="do not fit"):
        ifv.transport_plan(cost, torch.full((3,), 1 / 3), torch.full((2,), 0.5))
    cost[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ifv.transport_plan(cost, torch.full((4,), 0.25), torch.full((2,), 0.5))


def test_merge_matrices():
    plan = torch.tensor([[0.25, 0.0], [0.0, 0.25], [0.125, 0.125], [0.0, 0.25]], dtype=torch.float64)
    out_map, in_map = ifv.merge_matrices(plan)
    assert torch.allclose(out_map.sum(0), torch.ones(2, dtype=torch.float64))  # averages
    assert torch.allclose(in_map.sum(1), torch.ones(4, dtype=torch.float64))  # each source fully passed on
    assert torch.allclose(out_map[:, 1], torch.tensor([0, 0.25 / 0.625, 0.125 / 0.625, 0.25 / 0.625], dtype=torch.float64))
    paper_out, paper_in = ifv.merge_matrices(plan, "paper")
    assert torch.equal(paper_out, in_map) and torch.equal(paper_in, in_map)
    sel = ifv.selection_plan(4, torch.tensor([1, 3]))
    o, i = ifv.merge_matrices(sel)
    assert torch.equal(o, i) and o[1, 0] == 1 and o[3, 1] == 1 and o.sum() == 2


def test_centroid_targets_are_kmeans_centroids_labelled_by_kept_channels():
    from scipy.optimize import linear_sum_assignment

    from intrafusion_viz.plan._centroids import _centroids, _unit_rows
    features, importance, kept = _problem(20, 5)
    cost = ifv.cost_matrix(features, kept, ifv.OTConfig(target="centroid"))
    assert cost.shape == (20, 5) and (cost >= 0).all()
    x = _unit_rows(features)
    centers = _centroids(x, kept)
    # a k-means fixed point: every centroid is the mean of the unit vectors nearest to it
    labels = torch.cdist(x, centers).argmin(1)
    for j in range(5):
        assert torch.allclose(centers[j], x[labels == j].mean(0), atol=1e-10)
    # centroid j is the one matched to kept[j] (a minimum-cost matching) ...
    d = torch.cdist(x[kept], centers).numpy()
    rows, cols = linear_sum_assignment(d)
    assert d[range(5), range(5)].sum() == pytest.approx(d[rows, cols].sum(), abs=1e-12)
    # ... and the cost is the distance to the unit-normalised centroids
    assert torch.allclose(cost, torch.cdist(x, _unit_rows(centers)), atol=1e-10)
