"""Optimal transport between a group's channels and the channels it keeps: cost, masses, plan, merge maps.

Tensors in, tensors out; nothing here knows about models.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, fields
from typing import Optional, Tuple

import numpy as np
import torch

from ._l1 import l1_distances

__all__ = [
    "OTConfig",
    "default_config",
    "cost_matrix",
    "masses",
    "transport_plan",
    "merge_matrices",
    "selection_plan",
]

_TARGETS = ("most_important", "centroid")
_MASSES = ("uniform", "importance", "free", "capped")
_SOLVERS = ("emd", "sinkhorn")
_FUSIONS = ("barycentric", "paper")
_BN_EPS = ("exact", "authors")
_CENTROID_INITS = ("kept", "k-means++", "hartigan")
_Q_SCALES = ("exact", "none")


@dataclass(frozen=True)
class OTConfig:
    """Settings of Intra-Fusion's optimal-transport step.

    Parameters
    ----------
    p : float
        Order of the p-norm distance between (unit-normalised) channel weight vectors; ``p >= 1``.
    target : {"most_important", "centroid"}
        Transport onto the kept (most important) channels themselves, or onto k-means centroids of
        all channels (each centroid is labelled with the kept channel nearest to it).
    centroid_init : {"kept", "k-means++", "hartigan"}
        How ``target="centroid"`` finds its centroids: k-means started from the kept channels
        (``"kept"``, default), or spherical k-means with k-means++ seeding, best of 10 starts
        (``"k-means++"``; every centroid is then the normalised mean of the channels nearest to it, so
        with ``target_mass="free"`` each channel merges into its cluster), or Hartigan's k-means from
        random balanced partitions, best of 10 (``"hartigan"``, the algorithm Model Folding uses: lower
        k-means cost and smaller clusters than Lloyd's), on the vectors as the cost sees them.
    standardize : bool
        Standardise every coordinate of the channel vectors across the group's channels before the
        cost (median and interquartile range, scikit-learn's ``RobustScaler``, as Model Folding does
        before clustering).  Without it, coordinates with large weights and the direction all
        channels share dominate the distance.
    normalize : bool
        Unit-normalise every channel vector (and centroid) before the cost (default, the paper's
        cost).  ``False`` compares the vectors as they are, and ``centroid_init="k-means++"`` is then
        plain (Euclidean) k-means, Model Folding's clustering.
    source_mass, target_mass : {"uniform", "importance"}; target_mass also "free"
        Mass of each source channel / each target, uniform or proportional to importance.
        ``target_mass="free"``: semi-relaxed transport, targets take whatever mass reaches them, so
        every channel goes whole to its nearest target (a kept channel to itself) instead of every
        kept channel absorbing the same share.  ``target_mass="capped"``: transport with capacities,
        every channel goes whole to one target, every target takes at least one channel and at most
        ``ceil(capacity * n / k)`` of them, at the least total cost (an exact min-cost assignment); with
        ``target="centroid"`` the centroids are re-fitted to the capped clusters (capacitated k-means),
        so the plan is a size-bounded clustering.  Bounding how much each target absorbs is what keeps
        the data-free repair working (a merged channel standing for dozens of others cannot be
        repaired from statistics); see ``docs/defaults.md``.
    capacity : float
        For ``target_mass="capped"``: the most channels a target may absorb, as a multiple of the
        mean ``n / k`` (``>= 1``; 1 is a balanced hard assignment).
    solver : {"emd", "sinkhorn"}
        Exact optimal transport, or entropic Sinkhorn with strength ``reg``.
    reg : float
        Entropic regularisation, relative to the largest cost (the cost is divided by its maximum
        before Sinkhorn, so ``reg`` means the same for every layer).
    fusion : {"barycentric", "paper"}
        ``"barycentric"`` (default): a kept channel's outgoing weights are the plan-weighted average
        of its sources and the next layer's incoming weights are the plan-weighted sum, so merging
        exact duplicates changes nothing.  ``"paper"``: the Intra-Fusion paper's per-source map on
        both sides (rows are summed too; outputs grow by about n/k); for reproducing its numbers only.
    fold_batchnorm : bool
        Fold BatchNorm into the preceding conv/linear (exactly, with eps) before merging.
    max_iter : int or None
        Iteration limit of the solver; ``None`` picks one large enough for the problem size.
    cost_bias : bool
        Include each producer's (folded) bias in the channel vectors the cost compares (default).
        ``False`` compares weight vectors only, as the paper's code does.
    score_folded : bool
        Score importance on the BatchNorm-folded weights, the weights that are merged ("score what
        you merge"; the paper's code does this), instead of on the model as it is (where
        Torch-Pruning's magnitude importance also adds ``|BatchNorm weight|``).  Used by both
        methods; the returned model is not folded by it.
    bn_eps : {"exact", "authors"}
        ``"exact"`` (default): BatchNorm is folded exactly.  ``"authors"``: reproduce the paper's code
        bit for bit, quirk included: every BatchNorm of the model is folded first *without* its eps
        and left as a BatchNorm with variance 1 that still divides by ``sqrt(1 + eps)``, for both
        methods.  This changes the model's function (about 3e-4 relative for eps = 1e-5); use it only
        to compare with the paper's code.  Needs ``fold_batchnorm=True``.
    q_scale : {"exact", "none"}
        Softmax temperature of an ``nn.MultiheadAttention`` merged by Intra-Fusion (its heads shrink
        from ``E / h`` to ``k / h`` dims, and attention divides the scores by ``sqrt(head_dim)``).
        ``"exact"`` (default): the merged q rows and bias are multiplied by ``sqrt(k / E)``, so the
        scores keep their scale and merging exact duplicates changes nothing.  ``"none"``: q is left
        as merged, so the smaller ``sqrt(head_dim)`` sharpens the scores; merged (averaged) q rows are
        shorter than their sources, and on converged ViTs this kept more accuracy (BENCHMARKS.md,
        section 8, "ViT: attention heads under Intra-Fusion").  Default pruning never rescales q.

    Notes
    -----
    Use :meth:`OTConfig.paper` for every setting of the paper's code at once, and
    :meth:`OTConfig.data_free` for the plan that holds up on a whole network without data.
    """

    p: float = 2.0
    target: str = "most_important"
    source_mass: str = "uniform"
    target_mass: str = "uniform"
    solver: str = "emd"
    reg: float = 0.05
    fusion: str = "barycentric"
    fold_batchnorm: bool = True
    max_iter: Optional[int] = None
    cost_bias: bool = True
    score_folded: bool = False
    bn_eps: str = "exact"
    centroid_init: str = "kept"
    standardize: bool = False
    normalize: bool = True
    q_scale: str = "exact"
    capacity: float = 2.0

    @classmethod
    def paper(cls, bn_eps: str = "exact", **overrides) -> "OTConfig":
        """Every setting of the Intra-Fusion authors' code (github alexandertheus/Intra-Fusion, 82a2871).

        p = 1 cost between unit-normalised weight vectors (biases left out), uniform source and
        target masses, the most important channels as targets, exact EMD, the per-source map on both
        sides (``fusion="paper"``), importance scored on the BatchNorm-folded weights.  With
        ``importance="l1"``, ``prune(..., method="intra-fusion" or "default", config=OTConfig.paper())``
        keeps the channels the authors' code keeps and computes the same pruned function.

        Parameters
        ----------
        bn_eps : {"exact", "authors"}
            ``"exact"`` (default) folds BatchNorm exactly, the one deliberate difference from the
            authors' code (theirs drops eps: outputs differ by about 3e-4 relative for eps = 1e-5);
            ``"authors"`` reproduces that quirk too.
        **overrides
            Any other field, e.g. ``target="centroid"``.

        Examples
        --------
        >>> cfg = OTConfig.paper()
        >>> cfg.p, cfg.fusion, cfg.cost_bias, cfg.score_folded
        (1.0, 'paper', False, True)
        """
        settings = dict(p=1.0, target="most_important", source_mass="uniform", target_mass="uniform",
                        solver="emd", fusion="paper", fold_batchnorm=True, cost_bias=False,
                        score_folded=True, bn_eps=bn_eps)
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def data_free(cls, **overrides) -> "OTConfig":
        """The Intra-Fusion plan for merging a whole network without data (then ``repair="data-free"``).

        Centroid targets found by spherical k-means with k-means++ seeding (``target="centroid"``,
        ``centroid_init="k-means++"``) on standardised, unit-normalised channel vectors
        (``standardize=True``), and a semi-relaxed plan (``target_mass="free"``): every channel merges
        whole into its cluster, and each cluster becomes its mean.  ``normalize=False`` gives plain
        k-means on the standardised vectors: Model Folding's clusters (``method="fold"`` merges the
        same ones).  On whole converged networks (``BENCHMARKS.md``, section 5) the most important
        channels as targets, the paper's balanced plan, or a cost on unstandardised vectors lose more
        than the data-free repair can restore; this plan does not.

        Examples
        --------
        >>> cfg = OTConfig.data_free()
        >>> cfg.target, cfg.centroid_init, cfg.target_mass, cfg.standardize, cfg.normalize
        ('centroid', 'k-means++', 'free', True, True)
        """
        settings = dict(target="centroid", centroid_init="k-means++", target_mass="free", standardize=True,
                        normalize=True)
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def capped(cls, capacity: float = 2.0, **overrides) -> "OTConfig":
        """Size-bounded clusters as Intra-Fusion targets: what ``prune(..., method="intra-fusion")`` uses by default.

        Centroid targets found by Hartigan's k-means (``centroid_init="hartigan"``, Model Folding's
        algorithm) on standardised channel vectors compared as they are (``standardize=True``,
        ``normalize=False``), and transport with capacities (``target_mass="capped"``): every channel
        merges whole into one target, and no target absorbs more than ``ceil(capacity * n / k)``
        channels (the centroids are refitted to those capped clusters).  Free clusters on these vectors
        grow to dozens of channels that the data-free repair cannot restore; capping them is what makes
        the repair work (``docs/defaults.md``).  ``repair="auto"`` picks ``"data-free"`` for this plan.

        Examples
        --------
        >>> cfg = OTConfig.capped()
        >>> cfg.target, cfg.centroid_init, cfg.target_mass, cfg.capacity, cfg.standardize, cfg.normalize
        ('centroid', 'hartigan', 'capped', 2.0, True, False)
        """
        settings = dict(target="centroid", centroid_init="hartigan", target_mass="capped", capacity=capacity,
                        standardize=True, normalize=False)
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def capped_fold(cls, capacity: float = 3.0, **overrides) -> "OTConfig":
        """For ``method="fold"``: Model Folding's clusters with transport capacities.

        ``prune(model, x, s, method="fold", config=OTConfig.capped_fold())``: Model Folding's channel
        vectors, scaling and Hartigan clusters, then no cluster larger than ``ceil(capacity * n / k)``
        channels (a capacitated k-means refit from Hartigan's clusters, exact min-cost capped
        assignments), then Model Folding's merge and data-free repair.  Measured (``docs/defaults.md``):
        better than Model Folding at some sparsities, worse at others; ``method="fold"`` without a config
        (the default call) is Model Folding exactly.

        Examples
        --------
        >>> cfg = OTConfig.capped_fold()
        >>> cfg.target_mass, cfg.capacity
        ('capped', 3.0)
        """
        settings = dict(target_mass="capped", capacity=capacity)
        settings.update(overrides)
        return cls(**settings)

    def auto_repair(self, method: str) -> str:
        """What ``prune(..., repair="auto")`` does after this plan: ``"data-free"`` for hard plans that
        merge clusters (``method="fold"``, or Intra-Fusion with ``target_mass`` ``"free"`` or ``"capped"``),
        else ``"none"``."""
        if method == "fold" or (method == "intra-fusion" and self.target_mass in ("free", "capped")):
            return "data-free"
        return "none"

    def __post_init__(self):
        _check_field_types(self)
        if self.target == "cluster_centroid":  # the paper's spelling
            object.__setattr__(self, "target", "centroid")
        _check_choice("target", self.target, _TARGETS)
        _check_choice("source_mass", self.source_mass, _MASSES[:2])
        _check_choice("target_mass", self.target_mass, _MASSES)
        _check_choice("solver", self.solver, _SOLVERS)
        _check_choice("fusion", self.fusion, _FUSIONS)
        if not (isinstance(self.p, (int, float)) and math.isfinite(self.p) and self.p >= 1):
            raise ValueError(f"p must be a number >= 1 (a p-norm), got {self.p!r}")
        if not (isinstance(self.reg, (int, float)) and math.isfinite(self.reg) and self.reg > 0):
            raise ValueError(f"reg must be a positive number, got {self.reg!r}")
        if self.max_iter is not None and (not isinstance(self.max_iter, int) or self.max_iter < 1):
            raise ValueError(f"max_iter must be a positive int or None, got {self.max_iter!r}")
        for name in ("cost_bias", "score_folded", "standardize", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _check_choice("bn_eps", self.bn_eps, _BN_EPS)
        _check_choice("centroid_init", self.centroid_init, _CENTROID_INITS)
        _check_choice("q_scale", self.q_scale, _Q_SCALES)
        if not (isinstance(self.capacity, (int, float)) and math.isfinite(self.capacity) and self.capacity >= 1):
            raise ValueError(f"capacity must be a number >= 1 (a multiple of the mean cluster size n / k), "
                             f"got {self.capacity!r}")
        if self.bn_eps == "authors" and self.fold_batchnorm is not True:
            raise ValueError("bn_eps='authors' folds every BatchNorm the paper's way, so it needs "
                             "fold_batchnorm=True")


_TYPE_CHECKS = {  # annotation -> (test, what to pass); bool is an int in Python, so it is refused by name
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    "int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an int"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def default_config(method: str = "intra-fusion", whole_model: bool = True) -> OTConfig:
    """The plan :func:`intrafusion_viz.prune` uses for ``method`` when no ``config`` is given.

    ``"intra-fusion"``: :meth:`OTConfig.capped` (size-bounded Hartigan clusters as targets, then the
    data-free repair); ``"default"`` and ``"fold"``: ``OTConfig()`` (``"fold"`` is then Model Folding
    exactly).  The paper's balanced plan is ``OTConfig.paper()``, the balanced barycentric plan ``OTConfig()``.
    """
    if method == "intra-fusion":
        return OTConfig.capped()
    return OTConfig()


def resolve_default(method: Optional[str], config: Optional[OTConfig], whole_model: bool = True):
    """``(method, config)`` that :func:`intrafusion_viz.prune` runs for the ``method`` and ``config`` it was given.

    Neither given (the default call ``prune(model, x, s)``): ``("fold", OTConfig())``, Model Folding exactly
    (its channel vectors, Hartigan clusters, merge and data-free repair), for the whole model and for one
    group alike: the best measured without data on converged VGG11-BN (MNIST, Fashion-MNIST; 
    ``docs/defaults.md``: no capped or Intra-Fusion plan beat it at every sparsity; ``whole_model`` is
    where a per-case choice would go).  Only a config given: Intra-Fusion with it.  Only a method given:
    that method with :func:`default_config`.
    """
    if method is None and config is None:
        return "fold", OTConfig()
    if method is None:
        return "intra-fusion", config
    return method, (config if config is not None else default_config(method, whole_model))


def _check_field_types(config) -> None:
    """Refuse a value of the wrong type in any field (``p=True``, ``fold_batchnorm="no"``), from its annotation."""
    for f in fields(config):
        kind, value = str(f.type), getattr(config, f.name)
        optional = kind.startswith("Optional[")
        base = kind[len("Optional["):-1] if optional else kind
        if (optional and value is None) or base not in _TYPE_CHECKS:
            continue
        test, what = _TYPE_CHECKS[base]
        if not test(value):
            raise TypeError(f"OTConfig.{f.name} must be {'None or ' if optional else ''}{what}, "
                            f"got {type(value).__name__} {value!r}")


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _check_kept(kept, n: int, where: str) -> torch.Tensor:
    """``kept`` as a 1-D long tensor of distinct indices in ``[0, n)``, else our error naming ``where``."""
    if kept is None or isinstance(kept, (str, bytes)):
        raise TypeError(f"{where}: kept must be a 1-D tensor of channel indices, got {type(kept).__name__}")
    try:
        kept = torch.as_tensor(kept)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{where}: kept must be a 1-D tensor of channel indices ({err})") from err
    if kept.is_floating_point() or kept.dtype == torch.bool or kept.dim() != 1 or len(kept) == 0:
        raise ValueError(f"{where}: kept must be a non-empty 1-D tensor of integer channel indices, got "
                         f"dtype {kept.dtype} and shape {tuple(kept.shape)}")
    kept = kept.long()
    low, high = int(kept.min()), int(kept.max())
    if low < 0 or high >= n:
        raise ValueError(f"{where}: kept indices must be in [0, {n}) (the group has {n} channels); "
                         f"got values from {low} to {high}")
    if len(torch.unique(kept)) != len(kept):
        raise ValueError(f"{where}: kept has repeated indices; each kept channel must appear once")
    return kept


def _check_mass(mass: torch.Tensor, name: str) -> None:
    if not all_finite(mass) or bool((mass < 0).any()):
        raise ValueError(f"transport_plan: the {name} masses must be finite and non-negative")
    if float(mass.sum()) <= 0:
        raise ValueError(f"transport_plan: the {name} masses are all zero; give them positive mass (e.g. "
                         f"ifv.masses('uniform', None, n))")


def cost_matrix(features: torch.Tensor, kept: torch.Tensor, config: OTConfig = OTConfig(),
                importance: Optional[torch.Tensor] = None, seed: int = 0, inplace: bool = False) -> torch.Tensor:
    """Cost of moving each channel onto each target.

    Parameters
    ----------
    features : Tensor, shape (n, d)
        One weight vector per channel (all of the group's layers concatenated).
    kept : Tensor, shape (k,)
        Indices of the kept channels.
    config : OTConfig
        Uses ``p``, ``target``, ``centroid_init``, ``standardize`` and ``normalize``.
    seed : int
        Seed of the k-means++ seeding (``centroid_init="k-means++"``); the clusters it finds can
        differ from seed to seed.
    inplace : bool
        Unit-normalise ``features`` in place (a floating-point CPU tensor the caller owns and no longer
        needs; its values change) instead of in a copy: the same cost, bit for bit, with one copy of
        the vectors less (:func:`prune` does this with the vectors it built, 1.2 GB for ViT-L/16's
        residual stream).

    Returns
    -------
    Tensor, shape (n, k)
        p-norm distance between (unit-normalised unless ``normalize=False``) channel vectors and the
        targets; float64, on CPU.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise TypeError("cost_matrix: features must be a tensor of shape (n, d), one vector per channel "
                        f"(ifv.channel_features(model, group)); got "
                        f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    kept = _check_kept(kept, len(features), "cost_matrix")
    x = features.detach().cpu()
    own = inplace  # x may be written: the caller's (inplace=True) or a copy made here
    if not x.is_floating_point():
        x, own = x.double(), True
    if config.standardize:
        x, own = _standardized(x), True
    unit = _unit_rows if config.normalize else (lambda v: v)
    if own and config.normalize:
        x = x.div_(x.norm(dim=1, keepdim=True).clamp_min(1e-12))  # what _unit_rows computes, without a copy
    else:
        x = unit(x)
    kept = torch.as_tensor(kept, dtype=torch.long)
    if config.target == "most_important":
        targets = x[kept]
    else:
        targets = unit(_centroids(x, kept, config.centroid_init, spherical=config.normalize, seed=seed,
                                  capacity=config.capacity if config.target_mass == "capped" else None))
    targets = targets.to(x.dtype)
    if config.p == 2 and config.normalize:  # unit vectors: |x - t|^2 = 2 - 2 x.t, one matrix product
        cost = (2.0 - 2.0 * (x @ targets.T)).double().clamp_min_(0).sqrt_()
    elif config.p == 1 and config.target == "most_important":
        # The paper's setting: a fast L1 kernel; the kept-vs-kept block is symmetric (half the pairs).
        dropped = torch.ones(len(x), dtype=torch.bool)
        dropped[kept] = False
        cost = torch.empty(len(x), len(kept), dtype=torch.float64)
        cost[kept] = l1_distances(targets)
        cost[dropped] = l1_distances(x[dropped], targets)
    elif config.p == 1:
        cost = l1_distances(x, targets)
    else:
        cost = torch.cdist(x, targets, p=float(config.p)).double().clamp_min_(0)
    if config.target == "most_important":
        cost[kept, torch.arange(len(kept))] = 0.0  # exact zero: matmul-based cdist can leave ~1e-8
    return cost


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


def masses(kind: str, importance: Optional[torch.Tensor], n: int) -> torch.Tensor:
    """Probability vector of length ``n``: uniform, or proportional to (non-negative) importance."""
    _check_choice("mass", kind, _MASSES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"masses: n must be a positive int (the number of channels), got {n!r}")
    if kind in ("uniform", "free", "capped"):
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if importance is None:
        raise ValueError(f"masses({kind!r}, ...) needs the channels' importance scores (a tensor of length n)")
    imp = torch.as_tensor(importance, dtype=torch.float64).flatten()
    if imp.numel() != n or not all_finite(imp):
        raise ValueError(f"masses: importance must hold {n} finite scores, got {imp.numel()} "
                         f"{'values' if all_finite(imp) else 'values with NaN or inf'}")
    imp = imp.clamp_min(0)
    imp = imp + 1e-12 * max(float(imp.max()), 1.0)  # a zero-importance channel still has to go somewhere
    return imp / imp.sum()


def selection_plan(n: int, kept: torch.Tensor) -> torch.Tensor:
    """The plan of default pruning: kept channel j keeps itself, every other channel is dropped.

    Returns
    -------
    Tensor, shape (n, k)
        ``plan[kept[j], j] = 1 / n``, zero elsewhere.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"selection_plan: n must be a positive int (the number of channels), got {n!r}")
    kept = _check_kept(kept, n, "selection_plan")
    plan = torch.zeros(n, len(kept), dtype=torch.float64)
    plan[kept, torch.arange(len(kept))] = 1.0 / n
    return plan


def transport_plan(cost: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                   config: OTConfig = OTConfig(), kept: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Solve the transport problem.

    Parameters
    ----------
    cost : Tensor, shape (n, k)
    source : Tensor, shape (n,)
        Source masses (sum to 1).
    target : Tensor, shape (k,)
        Target masses (sum to 1).
    config : OTConfig
        Uses ``solver``, ``reg``, ``max_iter``, ``target`` and ``p``.
    kept : Tensor, shape (k,), optional
        When the targets are the kept channels themselves (``target="most_important"``) and the cost
        is a metric (``p >= 1``), an optimal plan leaves each kept channel's mass in place; the exact
        solver uses this to solve a smaller problem (an assignment when every kept channel receives
        the same whole number of others), which is several times faster than the full problem.

    Returns
    -------
    Tensor, shape (n, k)
        float64 plan with row sums ``source`` and column sums ``target`` (exact for ``"emd"``; within
        1e-3 in L1 for ``"sinkhorn"``, else it raises).
    """
    if any(t is None for t in (cost, source, target)):
        raise TypeError("transport_plan needs a cost (n, k), source masses (n,) and target masses (k,); got None")
    cost = torch.as_tensor(cost, dtype=torch.float64).cpu()
    a = torch.as_tensor(source, dtype=torch.float64).cpu()
    b = torch.as_tensor(target, dtype=torch.float64).cpu()
    if cost.dim() != 2:
        raise ValueError(f"transport_plan: cost must have shape (n, k), got {tuple(cost.shape)}")
    n, k = cost.shape
    if a.shape != (n,) or b.shape != (k,):
        raise ValueError(f"masses of shape {tuple(a.shape)} and {tuple(b.shape)} do not fit a cost of shape {(n, k)}")
    if not all_finite(cost):
        raise ValueError("the cost matrix has NaN or infinite entries; check the layer weights for NaN")
    _check_mass(a, "source")
    _check_mass(b, "target")
    if kept is not None:
        kept = _check_kept(kept, n, "transport_plan")
        if len(kept) != k:
            raise ValueError(f"transport_plan: kept has {len(kept)} indices but the cost has {k} target columns")
    b = b * (a.sum() / b.sum())
    if config.target_mass == "capped":  # capacities: every source whole to one target, sizes bounded
        pinned = None
        if kept is not None and config.target == "most_important":
            pinned = torch.as_tensor(kept, dtype=torch.long)
        labels = _capped_labels(cost, config.capacity, pinned)
        plan = torch.zeros(n, k, dtype=torch.float64)
        plan[torch.arange(n), labels] = a
        return plan
    if config.target_mass == "free":  # semi-relaxed: the optimum sends each source whole to its cheapest target
        plan = torch.zeros(n, k, dtype=torch.float64)
        plan[torch.arange(n), cost.argmin(1)] = a
        if kept is not None and config.target == "most_important":
            kept = torch.as_tensor(kept, dtype=torch.long)
            plan[kept] = 0.0
            plan[kept, torch.arange(k)] = a[kept]
        return plan
    if config.solver == "sinkhorn":
        return _sinkhorn(cost, a, b, config)
    if kept is not None and config.target == "most_important" and config.p >= 1:
        return _emd_kept_in_place(cost, a, b, torch.as_tensor(kept, dtype=torch.long), config)
    return _emd(cost, a, b, config)


def _emd(cost, a, b, config) -> torch.Tensor:
    import ot

    n, k = cost.shape
    if n == 0 or k == 0:
        return torch.zeros(n, k, dtype=torch.float64)
    max_iter = config.max_iter or max(100_000, 50 * n * k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a solver that stops short is turned into an error below
        plan, log = ot.emd(a.numpy(), b.numpy(), np.ascontiguousarray(cost.numpy()),
                           numItermax=max_iter, log=True)
    if log.get("warning"):
        raise RuntimeError(
            f"exact OT did not reach the optimum ({log['warning']}); raise OTConfig.max_iter "
            f"(now {max_iter}) or use solver='sinkhorn'")
    return torch.from_numpy(plan)


def _emd_kept_in_place(cost, a, b, kept, config) -> torch.Tensor:
    from scipy.optimize import linear_sum_assignment

    n, k = cost.shape
    plan = torch.zeros(n, k, dtype=torch.float64)
    cols = torch.arange(k)
    stay = torch.minimum(a[kept], b)
    plan[kept, cols] = stay
    a_rest = a.clone()
    a_rest[kept] -= stay
    b_rest = b - stay
    rows = torch.nonzero(a_rest > 1e-15 * a.max()).flatten()
    tcols = torch.nonzero(b_rest > 1e-15 * b.max()).flatten()
    if len(rows) == 0 or len(tcols) == 0:
        return plan
    sub_cost = cost[rows][:, tcols]
    ar, br = a_rest[rows], b_rest[tcols]
    # An assignment when every source has the same mass u and every target room for m*u, m whole.
    unit = ar[0]
    m = float(br[0] / unit)
    if (torch.allclose(ar, unit.expand_as(ar), rtol=1e-9, atol=0)
            and torch.allclose(br, br[0].expand_as(br), rtol=1e-9, atol=0)
            and abs(m - round(m)) < 1e-6 and round(m) >= 1 and len(rows) == round(m) * len(tcols)):
        reps = int(round(m))
        r, c = linear_sum_assignment(np.repeat(sub_cost.numpy(), reps, axis=1))
        plan[rows[torch.as_tensor(r)], tcols[torch.as_tensor(c // reps)]] += unit
        return plan
    sub = _emd(sub_cost, ar, br * (ar.sum() / br.sum()), config)
    plan[rows.unsqueeze(1), tcols.unsqueeze(0)] += sub
    return plan


def _sinkhorn(cost, a, b, config) -> torch.Tensor:
    import ot

    scale = float(cost.max()) or 1.0
    max_iter = config.max_iter or 2_000
    err = float("nan")
    # Plain scaling is fastest but overflows for small reg (exp(-cost / reg) underflows); the
    # log-stabilised solver covers the rest.  (POT's "sinkhorn_log" gives the same plans 10-100x slower.)
    # Epsilon scaling rescues very small reg, but its time grows fast with size: small problems only.
    methods = (("sinkhorn",) if config.reg >= 0.02 else ()) + ("sinkhorn_stabilized",)
    if cost.numel() <= 1 << 17:
        methods += ("sinkhorn_epsilon_scaling",)
    for method in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence is checked on the marginals below
            plan = ot.sinkhorn(a.numpy(), b.numpy(), (cost / scale).numpy(), config.reg,
                               method=method, numItermax=max_iter, stopThr=1e-9)
        plan = torch.from_numpy(np.asarray(plan))
        err = float((plan.sum(1) - a).abs().sum() + (plan.sum(0) - b).abs().sum())
        if math.isfinite(err) and err <= 1e-3 and bool(torch.isfinite(plan).all()):
            return plan
    raise RuntimeError(
        f"Sinkhorn did not converge (marginal error {err:.2e}) with reg={config.reg}; "
        "raise reg or max_iter, or use solver='emd'")


def merge_matrices(plan: torch.Tensor, fusion: str = "barycentric") -> Tuple[torch.Tensor, torch.Tensor]:
    """Turn a transport plan into the maps that merge a group's channels.

    Parameters
    ----------
    plan : Tensor, shape (n, k)
    fusion : {"barycentric", "paper"}

    Returns
    -------
    out_map : Tensor, shape (n, k)
        ``new_rows = out_map.T @ rows``: for ``"barycentric"`` each column sums to 1 (a kept channel's
        outgoing weights, bias and norm parameters are the plan-weighted average of its sources).
    in_map : Tensor, shape (n, k)
        ``new_columns = columns @ in_map``: each row sums to 1 (every source's incoming contribution
        is split over the kept channels it moves to, so the next layer sums them).

    For ``"paper"`` both maps are the per-source one (``in_map``), as in the paper's code.
    """
    _check_choice("fusion", fusion, _FUSIONS)
    if plan is None or isinstance(plan, (str, bytes)):
        raise TypeError(f"merge_matrices needs a plan tensor of shape (n, k), got {type(plan).__name__}")
    plan = torch.as_tensor(plan, dtype=torch.float64)
    if plan.dim() != 2 or plan.numel() == 0 or not all_finite(plan) or float(plan.min()) < 0:
        raise ValueError("merge_matrices: the plan must be a finite, non-negative (n, k) matrix; got shape "
                         f"{tuple(plan.shape)}")
    if float(plan.max()) <= 0:
        raise ValueError("merge_matrices: the plan is all zeros, so nothing merges anywhere; build it with "
                         "ifv.transport_plan or ifv.selection_plan")
    row = plan.sum(1, keepdim=True)
    in_map = torch.where(row > 0, plan / row.clamp_min(1e-300), torch.zeros_like(plan))
    if fusion == "paper":
        return in_map, in_map
    col = plan.sum(0, keepdim=True)
    out_map = plan / col.clamp_min(1e-300)
    return out_map, in_map


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite: one float64 sum, elementwise only when the sum is not finite."""
    if t.numel() == 0:
        return True
    if t.is_floating_point() and bool(torch.isfinite(t.sum())):
        return True  # NaN and +-inf survive a sum (a sum that overflows is checked elementwise)
    return bool(torch.isfinite(t).all())
