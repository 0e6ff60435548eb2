"""Optimal transport between a group's channels and the channels it keeps: cost, masses, plan, merge maps.

Tensors in, tensors out; nothing here knows about models.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import numpy as np
import torch

from ._centroids import _capped_labels, _centroids, _standardized, _unit_rows
from ._config import _FUSIONS, _MASSES, OTConfig, _check_choice
from ._l1 import l1_distances

__all__ = [
    "cost_matrix",
    "masses",
    "transport_plan",
    "merge_matrices",
    "selection_plan",
]


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
