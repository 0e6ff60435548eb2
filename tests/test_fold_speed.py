"""Model Folding's fast paths give the same clusters as the direct computations they replace.

``plan._hartigan.hartigan_kmeans`` (runs vectorised, distances from the Gram matrix) against a direct
transcription of ``hartigan-kmeans``' optimizer (explicit centroids, one run after the other), and against
the package itself where it is installed.

``robust_scale`` (all columns' percentiles at once) against scikit-learn's ``RobustScaler``, bit for bit;
``kmeans`` (distances from the Gram matrix) against the direct k-means it replaced (kept here as the
reference); and ``prune(method="fold")`` on a small grouped-conv net with both, state dicts equal.
"""
import numpy as np
import pytest
import torch

import intrafusion_viz as ifv
from intrafusion_viz.plan import _kmeans as _fold
from helpers import assert_state_equal
from test_layer_types import GroupedBlock


def kmeans_reference(x, k, n_init=10, max_iter=20, seed=0, spherical=False):
    """The direct k-means (k-means++ seeding, Lloyd on explicit centres) that ``_fold.kmeans`` replaced."""
    gen = torch.Generator().manual_seed(seed)
    x = x.double()
    n = x.shape[0]
    sq = (x * x).sum(1)
    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        first = int(torch.randint(n, (1,), generator=gen))
        centers = [x[first]]
        d2 = ((x - x[first]) ** 2).sum(1)
        for _ in range(1, k):
            total = float(d2.sum())
            idx = (int(torch.randint(n, (1,), generator=gen)) if total <= 0
                   else int(torch.multinomial(d2 / total, 1, generator=gen)))
            centers.append(x[idx])
            d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
        c = torch.stack(centers)
        labels = None
        for _ in range(max_iter):
            dist = sq[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
            new = dist.argmin(1)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            counts = torch.bincount(labels, minlength=k).double()
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            filled = counts > 0
            c[filled] = sums[filled] / counts[filled, None]
            if spherical:
                c[filled] = c[filled] / c[filled].norm(dim=1, keepdim=True).clamp_min(1e-12)
        inertia = float(dist.gather(1, labels[:, None]).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _sklearn_scale(x):
    from sklearn.preprocessing import RobustScaler

    return RobustScaler().fit_transform(x)


def test_robust_scale_is_sklearns_bit_for_bit():
    rng = np.random.default_rng(0)
    for t in range(30):
        n, d = int(rng.integers(1, 40)), int(rng.integers(1, 60))
        x = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-8, 3)
        if t % 3 == 0:
            x = np.round(x, 1)  # ties
        if t % 5 == 0:
            x[:, : d // 2] = 1.5  # constant columns: scale 1
        np.testing.assert_array_equal(_fold.robust_scale(x), _sklearn_scale(x))
    x = rng.standard_normal((5, 4))
    x[1, 2] = np.nan  # scikit-learn's NaN handling is kept
    np.testing.assert_array_equal(_fold.robust_scale(x), _sklearn_scale(x))


def _objective(x, labels):
    """k-means objective: squared distances to the cluster means, in float64."""
    return sum(float(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum()) for c in labels.unique())


def _same_partition(a, b):
    """Whether two labelings are the same partition up to a relabelling."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("gram", [True, False])
def test_kmeans_gives_the_reference_clusters(gram, monkeypatch):
    """The Gram-matrix k-means finds the direct one's clusters: the same objective (1e-9 relative; the two sum
    in different orders, so no test of labels bit for bit) and, where no two points tie (no exact duplicates),
    the same partition up to relabelling.  With duplicates equally good partitions may differ (both 0 cost)."""
    if not gram:
        monkeypatch.setattr(_fold, "GRAM_MAX_POINTS", 0)
    g = torch.Generator().manual_seed(1)
    for t in range(20):
        n = int(torch.randint(3, 40, (1,), generator=g))
        d = int(torch.randint(1, 30, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        duplicates = t % 4 == 0
        if duplicates:
            x = torch.cat([x[: n // 2], x[: n - n // 2]])  # exact duplicates
        spherical = t % 5 == 0
        if spherical:
            x = x / x.norm(dim=1, keepdim=True)
        ours, ref = _fold.kmeans(x, k, spherical=spherical), kmeans_reference(x, k, spherical=spherical)
        assert _objective(x, ours) == pytest.approx(_objective(x, ref), rel=1e-9, abs=1e-9), (t, n, d, k)
        if not duplicates:
            assert _same_partition(ours, ref), (t, n, d, k)


def test_kmeans_never_separates_exact_duplicates():
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.cat([x, x, x])  # every point three times: 6 clusters of 3 duplicates each
    labels = _fold.kmeans(x, 6)
    assert torch.equal(labels[:6], labels[6:12]) and torch.equal(labels[:6], labels[12:])
    assert len(torch.unique(labels)) == 6


def test_fold_on_a_grouped_conv_net_is_unchanged(monkeypatch):
    torch.manual_seed(0)
    model = GroupedBlock(c=8, width=16, groups=4).double().eval()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    new = ifv.prune(model, x, 0.5, method="fold")
    monkeypatch.setattr(_fold, "robust_scale", _sklearn_scale)  # method="fold" scales with it (plan/_hartigan.py)
    old = ifv.prune(model, x, 0.5, method="fold")
    assert new.params_after < new.params_before
    assert any(r.k < r.n and len(torch.unique(r.plan.argmax(1))) == r.k for r in new.groups)  # clusters merged
    assert [r.index for r in new.groups] == [r.index for r in old.groups]
    for a, b in zip(new.groups, old.groups):
        assert torch.equal(a.kept, b.kept) and torch.equal(a.plan, b.plan)
    assert_state_equal(new.model, old.model.state_dict())


def hartigan_reference(x, k, seeds, max_iter=20, tol=0.02):
    """hkmeans 0.0.6's ``HKMeans`` (Python optimizer, dense), transcribed: best run's labels after its final pass."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    best = None
    for seed in seeds:
        rs = np.random.RandomState(int(seed))
        labels = rs.permutation(np.linspace(0, k, n, endpoint=False).astype(np.int32))
        size = np.bincount(labels, minlength=k).astype(float)
        csum = np.zeros((k, x.shape[1]))
        np.add.at(csum, labels, x)
        for it in range(max_iter):
            changes = 0
            for i in rs.permutation(n):
                a = labels[i]
                if size[a] == 1:
                    continue
                csum[a] -= x[i]
                size[a] -= 1
                cost = size / (size + 1) * (((csum / size[:, None]) - x[i]) ** 2).sum(1)
                t = int(np.argmin(cost))
                csum[t] += x[i]
                size[t] += 1
                changes += t != a
                labels[i] = t
            if changes / n <= tol:
                break
        inertia = sum(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum() for c in range(k))
        if best is None or inertia < best[0]:
            best = (inertia, labels.copy(), csum.copy(), size.copy())
    _, labels, csum, size = best
    cost = size / (size + 1) * ((x[:, None, :] - (csum / size[:, None])[None]) ** 2).sum(2)
    final = cost.argmin(1)
    return final if len(np.unique(final)) == k else labels


def test_hartigan_is_hkmeans_transcribed():
    """Same run seeds, same random partitions and visiting orders: the same objective (1e-9 relative) and, on
    random points (no ties), the same partition up to relabelling."""
    from intrafusion_viz.plan import _hartigan

    rng = np.random.default_rng(3)
    for t in range(12):
        n = int(rng.integers(4, 60))
        k = int(rng.integers(2, n))
        x = rng.standard_normal((n, int(rng.integers(2, 30))))
        seeds = _hartigan.FoldSeeds(t).next()
        gram = (x - x.mean(0)) @ (x - x.mean(0)).T
        ours, obj = _hartigan.hartigan_kmeans(gram, k, seeds)
        ref = hartigan_reference(x, k, seeds)
        assert len(np.unique(ours)) == k
        assert obj == pytest.approx(_hartigan.kmeans_objective(gram, ref, k), rel=1e-9), t
        assert _same_partition(torch.as_tensor(ours), torch.as_tensor(ref)), t


def test_hartigan_is_no_worse_than_the_hartigan_kmeans_package():
    """Where PyPI ``hartigan-kmeans`` is installed (not a dependency): our objective within 1e-9 of its own."""
    hkmeans = pytest.importorskip("hkmeans", reason="hartigan-kmeans not installed (optional; only compared)")
    from intrafusion_viz.plan import _hartigan

    rng = np.random.default_rng(4)
    x = rng.standard_normal((80, 12))
    gram = (x - x.mean(0)) @ (x - x.mean(0)).T
    for seed in range(3):
        km = hkmeans.HKMeans(n_clusters=24, random_state=seed, n_init=10, max_iter=20, n_jobs=1).fit(x)
        labels, obj = _hartigan.hartigan_kmeans(gram, 24, _hartigan.FoldSeeds(seed).next())
        assert obj <= _hartigan.kmeans_objective(gram, km.labels_, 24) * (1 + 1e-9)


def test_hartigan_c_kernel_and_numpy_path_agree():
    """The compiled iteration and the numpy path (no compiler) find the same clusters (same objective to 1e-9,
    same partition on random points)."""
    from intrafusion_viz.plan import _hartigan

    if _hartigan.hartigan_backend() != "c":
        pytest.skip("no C compiler here: only the numpy path runs")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((70, 20))
    gram = (x - x.mean(0)) @ (x - x.mean(0)).T
    for k in (5, 30, 60):
        seeds = _hartigan.FoldSeeds(k).next()
        a, obj_a = _hartigan.hartigan_kmeans(gram, k, seeds, backend="c")
        b, obj_b = _hartigan.hartigan_kmeans(gram, k, seeds, backend="numpy")
        assert obj_a == pytest.approx(obj_b, rel=1e-9)
        assert _same_partition(torch.as_tensor(a), torch.as_tensor(b))
