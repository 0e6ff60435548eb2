"""Settings of a plan: :class:`OTConfig` (validated, frozen, with the presets), and the rule that picks
the method and config :func:`intrafusion_viz.prune` runs when the caller names none.

Plain values in, plain values out; nothing here computes a plan (``_transport`` does).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Optional, Tuple

__all__ = ["OTConfig", "default_config", "resolve_default"]

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
        shorter than their sources, and on converged ViTs this kept more accuracy (``docs/results.md``,
        "ViT: attention heads under Intra-Fusion").  Default pruning never rescales q.

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
        same ones).  On whole converged networks (``docs/results.md``, "Whole-model merging") the most important
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


def default_config(method: str = "intra-fusion") -> OTConfig:
    """The plan :func:`intrafusion_viz.prune` uses for ``method`` when no ``config`` is given.

    ``OTConfig()`` for every method: for ``"intra-fusion"`` the balanced barycentric plan onto the kept
    channels, for ``"fold"`` Model Folding exactly.  The capacity-bounded plan that wins on Fashion-MNIST
    is ``OTConfig.capped()``, the paper's plan ``OTConfig.paper()`` (``docs/defaults.md`` compares them).
    """
    return OTConfig()


def resolve_default(method: Optional[str], config: Optional[OTConfig], repair: Optional[str] = "auto",
                    synthesizable: bool = False) -> Tuple[str, OTConfig, Optional[str]]:
    """``(method, config, repair)`` that :func:`intrafusion_viz.prune` runs for the arguments it was given.

    Neither method nor config given (the default call ``prune(model, x, s)``):

    * ``synthesizable`` (the model has BatchNorm statistics and one floating-point input, and for
      ``repair="auto"`` making synthetic inputs fits its budget on the device): Intra-Fusion
      with capacities (:meth:`OTConfig.capped`) and, for ``repair="auto"``, ``repair="synthetic"``
      (BatchNorm statistics re-estimated on inputs synthesised from the unpruned model's BatchNorm
      statistics; no data).  The best measured without data on converged VGG11-BN and ResNet18
      (MNIST, Fashion-MNIST; ``docs/defaults.md``), above Model Folding's code at every measured sparsity.
    * otherwise: ``("fold", OTConfig())``, Model Folding exactly (its channel vectors, Hartigan
      clusters, merge and data-free repair); ``prune`` warns when the budget was the reason.

    Only a config given: Intra-Fusion with it.  Only a method given: that method with
    :func:`default_config`.  ``repair`` other than ``"auto"`` is returned as given.
    """
    if method is None and config is None:
        if synthesizable:
            return "intra-fusion", OTConfig.capped(), ("synthetic" if repair == "auto" else repair)
        return "fold", OTConfig(), repair
    if method is None:
        return "intra-fusion", config, repair
    return method, (config if config is not None else default_config(method)), repair


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
