"""OTConfig.data_free(): standardised channel vectors, k-means++ centroid targets, free target mass (issue 14)."""
import copy

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz.plan._centroids import _centroids, _unit_rows


def _clustered(k=4, per=5, d=12, noise=0.05, seed=0):
    """k well-separated directions, ``per`` noisy copies each at different lengths; labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64)
    rows, labels = [], []
    for c in range(k):
        for i in range(per):
            scale = 0.5 + i / per
            rows.append(scale * (centres[c] + noise * torch.randn(d, generator=g, dtype=torch.float64)))
            labels.append(c)
    order = torch.randperm(k * per, generator=g)
    return torch.stack(rows)[order], torch.tensor(labels)[order]


def _same_partition(plan: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether a hard plan groups the rows exactly as ``labels`` does (up to renaming the groups)."""
    assigned = plan.argmax(1)
    return all(len(set(assigned[labels == c].tolist())) == 1 for c in labels.unique()) and \
        len(set(assigned.tolist())) == len(labels.unique())


def test_preset_fields_overrides_and_validation():
    cfg = ifv.OTConfig.data_free()
    assert (cfg.target, cfg.centroid_init, cfg.target_mass, cfg.standardize, cfg.normalize) == \
        ("centroid", "k-means++", "free", True, True)
    assert ifv.OTConfig.data_free(normalize=False).normalize is False
    assert ifv.OTConfig().standardize is False and ifv.OTConfig().normalize is True  # defaults unchanged
    with pytest.raises(ValueError, match="centroid_init"):
        ifv.OTConfig(centroid_init="random")
    with pytest.raises(TypeError, match="standardize"):
        ifv.OTConfig(standardize="yes")
    with pytest.raises(TypeError, match="normalize"):
        ifv.OTConfig(normalize=1)


def test_standardize_is_robust_scaling_of_every_coordinate():
    from sklearn.preprocessing import RobustScaler

    features, _ = _clustered()
    kept = torch.arange(0, 20, 5)
    cost = ifv.cost_matrix(features, kept, ifv.OTConfig(standardize=True))
    scaled = torch.from_numpy(RobustScaler().fit_transform(features.numpy()))
    x = _unit_rows(scaled)
    assert torch.allclose(cost, torch.cdist(x, x[kept]), atol=1e-10)
    # so the cost no longer depends on each coordinate's offset and scale (it does without standardize)
    moved = features * torch.linspace(0.1, 10, features.shape[1], dtype=torch.float64) + 3.0
    assert torch.allclose(ifv.cost_matrix(moved, kept, ifv.OTConfig(standardize=True)), cost, atol=1e-9)
    assert not torch.allclose(ifv.cost_matrix(moved, kept), ifv.cost_matrix(features, kept), atol=1e-3)


def test_normalize_false_compares_vectors_as_they_are():
    features, _ = _clustered()
    kept = torch.tensor([1, 7, 12])
    cost = ifv.cost_matrix(features, kept, ifv.OTConfig(normalize=False))
    assert torch.allclose(cost, torch.cdist(features, features[kept]), atol=1e-10)
    assert torch.all(cost[kept, torch.arange(3)] == 0)


@pytest.mark.parametrize("normalize", [True, False])
def test_kmeanspp_centroids_with_free_mass_recover_planted_clusters(normalize):
    """Channels that are noisy copies of 4 directions (at different lengths) merge exactly by direction
    with spherical k-means; and every centroid is a k-means fixed point of the rows nearest to it."""
    features, labels = _clustered()
    kept = torch.tensor([0, 5, 10, 15])
    cfg = ifv.OTConfig.data_free(normalize=normalize, standardize=False)
    cost = ifv.cost_matrix(features, kept, cfg)
    n = len(features)
    plan = ifv.transport_plan(cost, torch.full((n,), 1 / n, dtype=torch.float64),
                              torch.full((4,), 0.25, dtype=torch.float64), cfg, kept=kept)
    assert torch.allclose(plan.sum(1), torch.full((n,), 1 / n, dtype=torch.float64))
    assert ((plan > 0).sum(1) == 1).all(), "free target mass: every channel merges whole"
    assert ((plan > 0).sum(0) >= 1).all(), "no centroid is left without channels"
    x = _unit_rows(features) if normalize else features
    centres = _centroids(x, kept, "k-means++", spherical=normalize)
    assigned = plan.argmax(1)
    for j in range(4):
        mean = x[assigned == j].mean(0)
        assert torch.allclose(centres[j], _unit_rows(mean[None])[0] if normalize else mean, atol=1e-10)
    if normalize:  # lengths do not matter to cosine clusters
        assert _same_partition(plan, labels)


def _cnn(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).double()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("repair", ["none", "data-free"])
def test_preset_without_normalize_merges_lloyd_kmeans_clusters(repair):
    """With ``OTConfig.data_free(normalize=False)``, Intra-Fusion's plan is Lloyd's k-means (k-means++ seeding)
    of the RobustScaler-standardised channel vectors: ``plan._kmeans.cluster_plan``'s partition.  (``method="fold"``
    is Model Folding's Hartigan k-means since issue 20: tests/test_model_folding_golden.py.)"""
    from intrafusion_viz.plan._kmeans import cluster_plan

    model = _cnn()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(32, 3, 8, 8, dtype=torch.float64)
    ours = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig.data_free(normalize=False), repair=repair)
    groups = ifv.find_groups(model, x[:1])
    for a in ours.groups:
        vec = ifv.channel_features(model, groups[a.index], fold=True, bias=True)
        _, plan = cluster_plan(vec, torch.zeros(a.n, dtype=torch.float64), a.k, seed=0)
        assert (a.plan > 0).sum(1).eq(1).all()
        # the same partition of the channels
        pa, pb = a.plan.argmax(1), plan.argmax(1)
        assert all(len(set(pb[pa == c].tolist())) == 1 for c in pa.unique())
        assert len(pa.unique()) == len(pb.unique()) == a.k
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the caller's model changed"


def test_preset_plan_is_a_spherical_kmeans_clustering_of_the_standardised_channels():
    """The default preset: every channel merges whole into one cluster, every cluster is non-empty, and
    each merged channel's producer row is its cluster's mean (BatchNorm folded)."""
    from intrafusion_viz.merge._surgery import channel_features, folded_weights
    from intrafusion_viz.plan._centroids import _standardized

    model = _cnn(1)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    res = ifv.prune(model, x[:1], 0.5, config=ifv.OTConfig.data_free(), repair="none")
    g = res.groups[0]
    assert ((g.plan > 0).sum(1) == 1).all() and ((g.plan > 0).sum(0) >= 1).all()
    labels = g.plan.argmax(1)
    groups = ifv.find_groups(model, x[:1])
    vec = _unit_rows(_standardized(channel_features(model, groups[g.index])))
    centres = _unit_rows(torch.stack([vec[labels == j].mean(0) for j in range(g.k)]))
    # a fixed point of spherical k-means: each channel's most similar centre is its own cluster's
    assert torch.equal((vec @ centres.T).argmax(1), labels)
    # merged rows are the cluster means of the BatchNorm-folded rows (merged channel j is column j)
    w, _ = folded_weights(model[0], model[1])
    merged = torch.stack([w[labels == j].mean(0) for j in range(g.k)])
    got, _ = folded_weights(res.model[0], res.model[1])
    assert torch.allclose(got, merged, atol=1e-10)


def _partition(plan: torch.Tensor) -> frozenset:
    assigned = plan.argmax(1)
    return frozenset(frozenset(torch.nonzero(assigned == c).flatten().tolist()) for c in assigned.unique())


@pytest.mark.parametrize("method, config", [("intra-fusion", ifv.OTConfig.data_free()), ("fold", None)])
def test_prune_seed_draws_the_kmeans_clustering(method, config):
    """``prune(seed=...)`` seeds the k-means++ clusterings (OTConfig.data_free() and method="fold"):
    seed 0 is the default, a seed reproduces its clusters exactly, and other seeds can find others."""
    model = _cnn(2)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    kw = dict(method=method, repair="none", **({"config": config} if config is not None else {}))
    default = ifv.prune(model, x[:1], 0.75, **kw)
    by_seed = {s: ifv.prune(model, x[:1], 0.75, seed=s, **kw) for s in range(6)}
    for a, b in zip(default.groups, by_seed[0].groups):
        assert torch.equal(a.plan, b.plan)
    again = ifv.prune(model, x[:1], 0.75, seed=3, **kw)
    for a, b in zip(again.groups, by_seed[3].groups):
        assert torch.equal(a.plan, b.plan)
    with torch.no_grad():
        assert torch.equal(again.model(x), by_seed[3].model(x))
    partitions = {tuple(_partition(g.plan) for g in r.groups) for r in by_seed.values()}
    assert len(partitions) > 1, "six seeds found one clustering: the seed is not used"
    for r in by_seed.values():  # every draw is still a hard clustering with no empty cluster
        for g in r.groups:
            assert ((g.plan > 0).sum(1) == 1).all() and ((g.plan > 0).sum(0) >= 1).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the caller's model changed"


def test_cost_matrix_seed_is_the_centroids_seed():
    features, _ = _clustered(k=6, per=4, noise=0.8)
    kept = torch.arange(0, 24, 4)
    cfg = ifv.OTConfig.data_free(standardize=False)
    assert torch.equal(ifv.cost_matrix(features, kept, cfg), ifv.cost_matrix(features, kept, cfg, seed=0))
    x = _unit_rows(features)
    for seed in (0, 5):
        centres = _unit_rows(_centroids(x, kept, "k-means++", spherical=True, seed=seed))
        assert torch.allclose(ifv.cost_matrix(features, kept, cfg, seed=seed), torch.cdist(x, centres), atol=1e-7)
