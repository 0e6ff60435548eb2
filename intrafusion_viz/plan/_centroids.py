"""Centroid targets of a plan: k-means centroids of the channel vectors (kept channels, k-means++ or
Hartigan as the start), and clusters bounded in size (transport with capacities, ``target_mass="capped"``).

Tensors in, tensors out; :func:`._transport.cost_matrix` calls these for ``target="centroid"``.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import torch

__all__ = ["capped_cluster_labels", "capped_fold_plan", "capped_size"]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _standardized(x: torch.Tensor) -> torch.Tensor:
    """Every column centred on its median and divided by its interquartile range (``RobustScaler``)."""
    from ._kmeans import robust_scale  # RobustScaler's result, all columns at once

    return torch.from_numpy(robust_scale(x.double().numpy())).to(x.dtype)


def _centroids(x: torch.Tensor, kept: torch.Tensor, init: str = "kept", spherical: bool = True,
               seed: int = 0, capacity: Optional[float] = None) -> torch.Tensor:
    """k-means centroids of the rows ``x``; centroid j is the one matched to kept[j].

    ``init="kept"``: Lloyd's k-means started from the kept channels.  ``"k-means++"``: k-means with
    k-means++ seeding, best of 10 starts, ``seed``; ``spherical`` (for unit rows): centres normalised
    after every update, so a channel's nearest centre by the cost is its cluster's.  ``capacity``:
    then refit the centres to clusters of at most ``ceil(capacity * n / k)`` channels (capacitated
    k-means: capped assignment, centre update, until the assignment repeats; 20 rounds at most).
    """
    centers = _centroids_uncapped(x, kept, init, spherical, seed)
    if capacity is None:
        return centers
    unit = _unit_rows if spherical else (lambda v: v)
    xd = x.double()
    k = len(kept)
    labels = None
    for _ in range(20):
        cost = torch.cdist(xd, unit(centers.double()))
        new = _capped_labels(cost, capacity)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        sums = torch.zeros(k, xd.shape[1], dtype=torch.float64).index_add_(0, labels, xd)
        counts = torch.bincount(labels, minlength=k).double().clamp_min(1)
        centers = (_unit_rows(sums) if spherical else sums / counts[:, None]).to(x.dtype)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(torch.cdist(xd[kept], centers.double()).numpy())
    out = torch.empty_like(centers)
    out[torch.as_tensor(rows)] = centers[torch.as_tensor(cols)]
    return out


def capped_cluster_labels(gram: torch.Tensor, labels: torch.Tensor, k: int, capacity: float,
                          max_rounds: int = 20) -> torch.Tensor:
    """Clusters of at most ``capped_size(n, k, capacity)`` points, refitted from ``labels`` (capacitated k-means).

    ``gram`` (n, n): dot products of the points (e.g. :func:`._hartigan.scaled_gram`).  Each round gives
    every point a cluster by an exact capped assignment (:func:`_capped_labels`) on the squared distances
    to the current cluster means (read off the Gram matrix), then moves the means; it stops when the
    assignment repeats.  Clusters that already fit the cap are kept as they are.
    """
    g = torch.as_tensor(gram, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long).clone()
    n = len(labels)
    m = capped_size(n, k, capacity)
    if int(torch.bincount(labels, minlength=k).max()) <= m:
        return labels
    diag = torch.diagonal(g)
    for _ in range(max_rounds):
        onehot = torch.zeros(n, k, dtype=torch.float64)
        onehot[torch.arange(n), labels] = 1.0
        counts = onehot.sum(0).clamp_min(1.0)
        cross = g @ onehot / counts  # x_i . c_j
        own = (onehot.T @ g @ onehot).diagonal() / counts ** 2  # |c_j|^2
        dist = (diag[:, None] - 2.0 * cross + own[None, :]).clamp_min(0)
        new = _capped_labels(dist, capacity)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def capped_fold_plan(vectors: torch.Tensor, importance: torch.Tensor, k: int, seeds, capacity: float):
    """Model Folding's clusters (:func:`._hartigan.fold_plan`) with transport capacities: no cluster larger
    than ``capped_size(n, k, capacity)`` (:func:`capped_cluster_labels` from Hartigan's clusters, on the same
    standardised vectors).  Returns ``(kept, plan)`` like ``fold_plan``."""
    from ._hartigan import fold_labels, labels_plan, scaled_gram

    n = vectors.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if k == n:
        return torch.arange(n), torch.eye(n, dtype=torch.float64) / n
    labels = fold_labels(vectors, k, seeds)
    labels = capped_cluster_labels(torch.from_numpy(scaled_gram(vectors)), labels, k, capacity)
    return labels_plan(labels, importance, k)


def capped_size(n: int, k: int, capacity: float) -> int:
    """The most channels one target may take under ``target_mass="capped"``: ``ceil(capacity * n / k)``."""
    return max(1, min(n - k + 1, math.ceil(capacity * n / k - 1e-9)))


def _capped_labels(cost: torch.Tensor, capacity: float, pinned: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each of the n rows to one of the k columns, every column 1 to ``capped_size`` rows, least total cost.

    An exact min-cost flow (network simplex, ``ot.emd``): every column is split into its first slot
    (which a real row must fill: the dummy source's cost to it is prohibitive) and its further slots;
    a dummy source absorbs the spare room.  Masses are whole numbers of rows, so the optimal vertex is a
    hard assignment.  ``pinned`` (k,): row ``pinned[j]`` goes to column j (a kept channel stays itself).
    """
    import ot

    cost = torch.as_tensor(cost, dtype=torch.float64).cpu()
    n, k = cost.shape
    m = capped_size(n, k, capacity)
    labels = torch.full((n,), -1, dtype=torch.long)
    free_rows = torch.arange(n)
    first_room = torch.ones(k, dtype=torch.float64)
    if pinned is not None:
        pinned = torch.as_tensor(pinned, dtype=torch.long)
        labels[pinned] = torch.arange(k)
        keep = torch.ones(n, dtype=torch.bool)
        keep[pinned] = False
        free_rows = torch.nonzero(keep).flatten()
        first_room = torch.zeros(k, dtype=torch.float64)  # every column already has its one row
    nf = len(free_rows)
    if nf == 0:
        return labels
    extra_room = torch.full((k,), float(m - 1), dtype=torch.float64)
    sub = cost[free_rows]
    spare = float(first_room.sum() + extra_room.sum()) - nf
    big = 1e6 * (float(sub.abs().max()) + 1.0)
    c = torch.zeros(nf + 1, 2 * k, dtype=torch.float64)
    c[:nf, :k], c[:nf, k:] = sub, sub
    c[nf, :k] = big
    a = torch.cat([torch.ones(nf, dtype=torch.float64), torch.tensor([spare], dtype=torch.float64)])
    b = torch.cat([first_room, extra_room])
    keep_cols = b > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ot.emd(a.numpy(), b[keep_cols].numpy(), np.ascontiguousarray(c[:, keep_cols].numpy()),
                      numItermax=max(100_000, 50 * (nf + 1) * 2 * k))
    full = torch.zeros(nf + 1, 2 * k, dtype=torch.float64)
    full[:, keep_cols] = torch.from_numpy(plan)
    flow = full[:nf, :k] + full[:nf, k:]
    labels[free_rows] = flow.argmax(1)
    return labels


def _centroids_uncapped(x: torch.Tensor, kept: torch.Tensor, init: str, spherical: bool, seed: int) -> torch.Tensor:
    from scipy.optimize import linear_sum_assignment

    k = len(kept)
    if init == "hartigan":
        from ._hartigan import FoldSeeds, hartigan_kmeans

        xd = x.double()
        xc = xd - xd.mean(0, keepdim=True)
        labels, _ = hartigan_kmeans((xc @ xc.T).numpy(), k, FoldSeeds(seed).next())
        labels = torch.as_tensor(labels, dtype=torch.long)
        if len(torch.unique(labels)) < k:
            from ._kmeans import _fill_empty

            labels = _fill_empty(labels, k, torch.zeros(len(x), dtype=torch.float64))
        centers = torch.zeros(k, xd.shape[1], dtype=torch.float64).index_add_(0, labels, xd)
        counts = torch.bincount(labels, minlength=k).double().clamp_min(1)
        centers = (_unit_rows(centers) if spherical else centers / counts[:, None]).to(x.dtype)
    elif init == "k-means++":
        from ._kmeans import _fill_empty, kmeans, span_coordinates

        z = span_coordinates(x.double())
        # Model Folding's 20 Lloyd iterations for plain k-means (the same clusters as method="fold");
        # spherical k-means runs to convergence so that nearest centres by the cost are the clusters
        labels = kmeans(z, k, n_init=10, max_iter=100 if spherical else 20, seed=seed, spherical=spherical)
        if len(torch.unique(labels)) < k:
            labels = _fill_empty(labels, k, torch.zeros(len(x), dtype=torch.float64))
        xd = x.double()
        centers = torch.zeros(k, xd.shape[1], dtype=torch.float64).index_add_(0, labels, xd)
        counts = torch.bincount(labels, minlength=k).double().clamp_min(1)
        centers = (_unit_rows(centers) if spherical else centers / counts[:, None]).to(x.dtype)
    else:
        from sklearn.cluster import KMeans

        xn = x.double().numpy()
        km = KMeans(n_clusters=k, init=xn[kept.numpy()], n_init=1, max_iter=100, random_state=0).fit(xn)
        centers = torch.from_numpy(km.cluster_centers_).to(x.dtype)
    rows, cols = linear_sum_assignment(torch.cdist(x[kept], centers).numpy())
    out = torch.empty_like(centers)
    out[torch.as_tensor(rows)] = centers[torch.as_tensor(cols)]
    return out
