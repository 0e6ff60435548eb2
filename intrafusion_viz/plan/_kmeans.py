"""Lloyd's k-means (k-means++ seeding) of channel vectors, and the RobustScaler that Model Folding uses.

Used by ``OTConfig.data_free()`` (``centroid_init="k-means++"``: :func:`kmeans` on the standardised channels,
``plan/_centroids.py``) and for the q/k/v dims of attention under ``method="fold"`` (:func:`cluster_plan`).
``prune(method="fold")`` itself clusters as Model Folding does, with Hartigan's k-means
(:mod:`._hartigan`: ``hkmeans.HKMeans``, Hartigan's method, not "hierarchical" k-means): on the same vectors
Lloyd's clusters cost 5-13 % more k-means objective, with more singletons and much larger clusters
(issue 20).

:func:`cluster_plan`: k-means clusters of a group's channels merged to their means: ``RobustScaler``,
then Lloyd's k-means with k-means++ seeding, best of ``n_init=10`` (``max_iter=20``) in the span of
the points (a rotation, which does not change k-means' Euclidean clusters); the merged channel sits at
the position of its cluster's most important channel.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["cluster_plan"]


def cluster_plan(features: torch.Tensor, importance: torch.Tensor, k: int, seed: int = 0,
                 n_init: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``n`` channels into ``k`` groups; returns ``(kept, plan)``.

    Parameters
    ----------
    features : Tensor, shape (n, d)
    importance : Tensor, shape (n,)
        Picks the channel whose position a cluster takes (its most important member).
    k : int
    seed : int
        k-means seed.

    Returns
    -------
    kept : Tensor, shape (k,), ascending
    plan : Tensor, shape (n, k), float64
        ``1/n`` at ``(i, j)`` when channel ``i`` is in the cluster kept at ``kept[j]`` (a hard plan:
        barycentric merging then averages each cluster).
    """
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if k == n:
        return torch.arange(n), torch.eye(n, dtype=torch.float64) / n
    x = features.detach().double().cpu().numpy()
    x = span_coordinates(torch.from_numpy(robust_scale(x)))
    labels = kmeans(x, k, n_init=n_init, seed=seed)
    present = torch.unique(labels)
    if len(present) < k:  # k-means can leave a cluster empty on (near-)duplicate points: split the largest
        labels = _fill_empty(labels, k, importance)
    imp = importance.detach().double().cpu()
    reps = torch.stack([torch.nonzero(labels == c).flatten()[imp[labels == c].argmax()] for c in range(k)])
    order = torch.argsort(reps)
    kept = reps[order]
    column = torch.empty(k, dtype=torch.long)
    column[order] = torch.arange(k)
    plan = torch.zeros(n, k, dtype=torch.float64)
    plan[torch.arange(n), column[labels]] = 1.0 / n
    return kept, plan


def robust_scale(x):
    """scikit-learn's ``RobustScaler().fit_transform(x)`` for a finite dense float64 array, bit for bit.

    Every column centred on its median and divided by its interquartile range (ranges below 10 eps
    left at 1).  scikit-learn takes the percentiles one column at a time in a Python loop (2 s for
    the 9,216 columns of a VGG11-BN group); numpy's ``axis=0`` (no NaN) takes them all at once with the same
    interpolation, so the result is identical (``tests/test_fold_speed.py``).
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():  # scikit-learn's NaN-aware path (one column at a time)
        from sklearn.preprocessing import RobustScaler

        return RobustScaler().fit_transform(x)
    center = np.median(x, axis=0)
    q_low, q_high = np.percentile(x, (25.0, 75.0), axis=0)
    scale = q_high - q_low
    scale[scale < 10 * np.finfo(scale.dtype).eps] = 1.0
    return (x - center) / scale


def span_coordinates(x: torch.Tensor) -> torch.Tensor:
    """(n, min(n, d)) coordinates of the n rows of ``x`` in their span: every distance and dot product kept.

    The n points span at most n dimensions: their coordinates in that span (x = U S V^T -> U S, read
    off the Gram matrix x x^T = U S^2 U^T) keep every distance between points and centroids (means
    of points), so k-means finds the same clusters with d / n times less work (VGG11-BN G1: 9,216 -> 512).
    """
    n = x.shape[0]
    if x.shape[1] <= n:
        return x
    eigval, eigvec = torch.linalg.eigh(x @ x.T)
    return eigvec * eigval.clamp_min(0).sqrt()


GRAM_MAX_POINTS = 4096  # up to this many points k-means works from their Gram matrix (at most 128 MB)


def kmeans(x: torch.Tensor, k: int, n_init: int = 10, max_iter: int = 20, seed: int = 0,
           spherical: bool = False) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding, best inertia of ``n_init`` runs; returns labels (n,).

    ``spherical=True``: every centre is normalised to unit length after each update (for unit rows
    ``x``: clusters by cosine similarity, and a point's nearest centre is the same by either distance).

    Up to :data:`GRAM_MAX_POINTS` points, distances come from the Gram matrix ``x x^T``, computed once:
    a centre is a mean of points, so its dot products with every point are a mean of Gram columns
    (O(n^2) per Lloyd step instead of O(n k d), and a row lookup per k-means++ draw instead of O(n d):
    ``benchmarks/fold_speed.py --kmeans 2048 1434``).  The distances differ from the direct formula's
    only by rounding; the clusters were the same in every case ``tests/test_fold_speed.py`` compares
    (random problems, exact duplicates, spherical, a grouped-conv net); exact duplicates are at distance 0.
    """
    gen = torch.Generator().manual_seed(seed)
    x = x.double()
    n = x.shape[0]
    sq = (x * x).sum(1)
    gram = x @ x.T if n <= GRAM_MAX_POINTS else None
    tiny = 64 * torch.finfo(torch.float64).eps

    pair = None
    if gram is not None:  # every squared distance at once: one row lookup per k-means++ draw
        both = sq[None, :] + sq[:, None]
        pair = (both - 2.0 * gram).clamp_min(0)
        pair[pair <= tiny * both] = 0.0  # rounding of an exact (or 1e-7 near) duplicate
        pair.fill_diagonal_(0.0)

    def dist_to(i: int) -> torch.Tensor:  # squared distances of every point to point i
        if pair is not None:
            return pair[i]
        both = sq + sq[i]
        d = (both - 2.0 * (x @ x[i])).clamp_min(0)
        d[d <= tiny * both] = 0.0
        d[i] = 0.0
        return d

    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        first = int(torch.randint(n, (1,), generator=gen))
        seeds = [first]
        d2 = dist_to(first)
        for _ in range(1, k):
            total = float(d2.sum())
            if total <= 0:
                idx = int(torch.randint(n, (1,), generator=gen))
            else:
                idx = int(torch.multinomial(d2 / total, 1, generator=gen))
            seeds.append(idx)
            d2 = torch.minimum(d2, dist_to(idx))
        seeds = torch.tensor(seeds)
        if gram is not None:  # a centre c_j is known by x c_j (n,) and |c_j|^2
            xc, cc = gram[:, seeds].clone(), sq[seeds].clone()
        else:
            c = x[seeds].clone()
            xc, cc = x @ c.T, (c * c).sum(1)
        labels = None
        for _ in range(max_iter):
            dist = sq[:, None] - 2.0 * xc + cc[None, :]
            new = dist.argmin(1)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            counts = torch.bincount(labels, minlength=k).double()
            filled = counts > 0
            if gram is not None:
                sums = torch.zeros(n, k, dtype=torch.float64).index_add_(1, labels, gram)  # x . (sum of members)
                own = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, sums[torch.arange(n), labels])
                new_xc = sums[:, filled] / counts[filled]
                new_cc = own[filled] / counts[filled] ** 2
                if spherical:
                    norm = new_cc.clamp_min(0).sqrt().clamp_min(1e-12)
                    new_xc, new_cc = new_xc / norm, new_cc / norm ** 2
                xc[:, filled], cc[filled] = new_xc, new_cc
            else:
                sums = torch.zeros_like(c).index_add_(0, labels, x)
                c[filled] = sums[filled] / counts[filled, None]
                if spherical:
                    c[filled] = c[filled] / c[filled].norm(dim=1, keepdim=True).clamp_min(1e-12)
                xc, cc = x @ c.T, (c * c).sum(1)
        inertia = float(dist.gather(1, labels[:, None]).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _fill_empty(labels: torch.Tensor, k: int, importance: torch.Tensor) -> torch.Tensor:
    labels = labels.clone()
    for c in range(k):
        if (labels == c).any():
            continue
        counts = torch.bincount(labels, minlength=k)
        big = int(counts.argmax())
        members = torch.nonzero(labels == big).flatten()
        labels[members[importance[members].argmin()]] = c
    return labels
