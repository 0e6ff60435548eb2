"""Data-free statistics repair after merging channels, after Model Folding's approximate REPAIR.

Model Folding (Wang, Sikic, Thiele, Saukh, ICLR 2025; github marza96/ModelFolding,
``merge_channel_clustering_approx_repair`` in ``utils/weight_clustering.py``) repairs a folded network
without data.  After ``fuse_bnorms_vgg`` (each conv computes its standardised output ``xhat_i``; the
BatchNorm keeps gamma, beta and gets ``running_mean = 0, running_var = 1``) a cluster of ``n_c``
channels is averaged and its BatchNorm set to::

    avg_corr   = get_average_correlation(merge, concat_weights(...))  # mean cosine over the cluster's pairs
    weight     = mean(gamma) * sqrt(n_c / (1 + (n_c - 1) * avg_corr))
    bias       = mean(beta);   running_mean = 0;   running_var = 1

that is, the average of ``n_c`` unit-variance channels with mean correlation ``avg_corr`` has variance
``(1 + (n_c - 1) avg_corr) / n_c``, which the BatchNorm's scale undoes.  The cosines are taken between
*every* tensor along the channel (``concat_weights``): the standardised producer rows and bias, the
BatchNorm's gamma and beta, and the consumer's columns.  That estimate is the default here
(``correlation="model-folding"``).  Cosines of the producer rows alone (``"white-inputs"``, exact for
white inputs) are 2 to 4 times too low on a trained network, whose inputs are correlated ReLU features
(converged VGG11-BN on MNIST, ``fold`` at 30 %: mean within-cluster correlation of the BatchNorm inputs
0.33 to 0.83 per layer, Model Folding's estimate 0.37 to 0.74, the producer rows' 0.13 to 0.56), so
they predict too small a variance and the repair amplifies every merged channel, layer after layer.

Here the same prediction is made for any merge: a soft transport plan or hard clusters, BatchNorm
folded into the producer (Intra-Fusion's default) or not, "paper" fusion whose rows are summed.
For merged channel ``j`` of a producer followed by a BatchNorm, with ``a_i`` the factor that merge
applied to source ``i`` and each source ``o_i = c_i * xhat_i + d_i`` (``xhat_i`` standardised;
``(c, d) = (gamma, beta)`` when the BatchNorm was folded into the producer, ``(sigma, mu)`` of the
BatchNorm's running statistics when not):

    predicted mean   m_j = sum_i a_ij d_i
    predicted var    v_j = sum_il a_ij a_lj c_i c_l rho_il,   rho_il = cos(F_i, F_l)

(``F_i``: channel ``i``'s tensors concatenated as above)
and the BatchNorm gets ``running_mean = m_j``, ``running_var = v_j - eps`` and the affine
``|gamma| = sum_i w_ij |gamma_i|``, ``beta = sum_i w_ij beta_i`` with ``w`` the plan's columns
normalised to 1 (the plan-weighted output statistics of the sources, as REPAIR targets).  A merged
channel of channels identical in every tensor (``rho = 1``) is left exactly as it was; so is every
channel that default pruning keeps.  For a hard cluster whose gammas are equal this is Model Folding's
repair; with unequal gammas ours merges ``gamma_i xhat_i`` (the BatchNorm folded whole, Intra-Fusion's
convention) where Model Folding merges ``xhat_i`` and averages gamma, so ``v_j`` weights the correlations by
the gammas.  ``prune(method="fold")`` results get Model Folding's own repair instead
(``repair/_fold_repair.py``, group by group on the partially merged weights, as its code does).  A producer without BatchNorm has its
merged rows rescaled so their predicted output std (inputs of unit variance, the same ``rho``) is the
plan-weighted std of its sources.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from ..merge._surgery import _slots

__all__ = ["data_free_repair", "snapshot_sources", "predicted_statistics"]

_BN = nn.modules.batchnorm._BatchNorm
CORRELATIONS = ("model-folding", "white-inputs")


def _rows(module: nn.Module, member, n: int) -> torch.Tensor:
    """(n, d) float64: the producer's incoming weights of each of the group's channels."""
    slots = _slots(member, n)
    w = module.weight.detach().double().movedim(member.dim, 0)
    return w[slots.flatten()].reshape(n, -1).cpu()


def _bn_of(members, producer: str):
    for m in members:
        if m.role == "norm" and m.fold_from == producer:
            return m
    return None


@torch.no_grad()
def snapshot_sources(model: nn.Module, records) -> Dict[str, dict]:
    """What the repair needs from the unpruned model, per producer: weight rows, BatchNorm statistics and affine.

    Taken before merging (so ``prune(..., inplace=True)`` can still repair).  Keyed by producer name.
    """
    modules = dict(model.named_modules())
    snap = {}
    for g in records:
        n = g.n if hasattr(g, "n") else g.size
        group_gram = _folding_gram(modules, g.members, n)
        for m in g.members:
            if m.role != "out" or m.name in snap:
                continue
            entry = {"rows": _rows(modules[m.name], m, n), "gram": group_gram}
            bn_member = _bn_of(g.members, m.name)
            if bn_member is not None:
                bn = modules[bn_member.name]
                slots = _slots(bn_member, n)[:, 0]
                var = bn.running_var.detach().double().cpu()[slots]
                entry.update(
                    bn=bn_member.name,
                    mu=bn.running_mean.detach().double().cpu()[slots],
                    sigma=torch.sqrt(var + bn.eps),
                    gamma=(bn.weight.detach().double().cpu()[slots] if bn.affine else torch.ones(n, dtype=torch.float64)),
                    beta=(bn.bias.detach().double().cpu()[slots] if bn.affine else torch.zeros(n, dtype=torch.float64)),
                )
            snap[m.name] = entry
    return snap


def _folding_gram(modules: Dict[str, nn.Module], members, n: int) -> torch.Tensor:
    """(n, n) float64: Gram matrix of every tensor of the group along its channels, as Model Folding
    correlates them (summed part by part, so the concatenation is never held).

    ``concat_weights`` of marza96/ModelFolding after ``fuse_bnorms_vgg``: each producer's rows and bias
    with its BatchNorm's standardisation folded in (``W / sigma``, ``(b - mu) / sigma``), the BatchNorm's
    gamma and beta, and the consumers' columns; running statistics left out.
    """
    gram = torch.zeros(n, n, dtype=torch.float64)

    def add(part):
        gram.add_(part @ part.T)

    by_producer = {m.fold_from: m for m in members if m.role == "norm" and m.fold_from}
    for m in members:
        module = modules.get(m.name)  # None: a bare Parameter (pos_embedding), not part of the Gram
        if m.role == "out":
            rows = _rows(module, m, n)
            slots = _slots(m, n)[:, 0]
            bias = (module.bias.detach().double().cpu()[slots] if getattr(module, "bias", None) is not None
                    else torch.zeros(n, dtype=torch.float64))
            norm = by_producer.get(m.name)
            if norm is not None:
                bn = modules[norm.name]
                bslots = _slots(norm, n)[:, 0]
                sigma = torch.sqrt(bn.running_var.detach().double().cpu()[bslots] + bn.eps)
                mu = bn.running_mean.detach().double().cpu()[bslots]
                rows, bias = rows / sigma[:, None], (bias - mu) / sigma
            add(rows)
            add(bias[:, None])
        elif m.role == "norm" and getattr(modules[m.name], "affine", False):
            bn = modules[m.name]
            slots = _slots(m, n)[:, 0]
            add(bn.weight.detach().double().cpu()[slots, None])
            add(bn.bias.detach().double().cpu()[slots, None])
        elif m.role == "in":
            add(_rows(module, m, n))
    return gram


def _correlation_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Cosine similarities from a Gram matrix of vectors (a zero vector gets 0 against the others)."""
    norms = gram.diagonal().clamp_min(0).sqrt().clamp_min(1e-12)
    return (gram / norms[:, None] / norms[None, :]).clamp_(-1.0, 1.0)


def predicted_statistics(applied: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                         correlation: torch.Tensor):
    """Mean and variance of ``sum_i applied[i, j] * (scale_i * xhat_i + shift_i)`` for every column j.

    ``xhat`` are standardised variables with correlation matrix ``correlation`` (n, n); ``applied`` is
    (n, k).  Returns two (k,) float64 tensors.
    """
    a = applied.double() * scale.double()[:, None]
    mean = applied.double().T @ shift.double()
    var = ((correlation.double() @ a) * a).sum(0).clamp_min(0.0)
    return mean, var


def _target_weights(plan: torch.Tensor) -> torch.Tensor:
    plan = plan.double()
    return plan / plan.sum(0, keepdim=True).clamp_min(1e-300)


def _folded(result, g) -> bool:
    """Whether prune folded this group's BatchNorms into their producers before merging."""
    config = getattr(result, "config", None)
    if getattr(config, "bn_eps", "exact") == "authors":  # the paper's code folds every BatchNorm first
        return True
    fold = getattr(config, "fold_batchnorm", True)
    return bool(fold) and getattr(result, "method", "intra-fusion") != "default" and g.k < g.n


@torch.no_grad()
def _repair_group(model: nn.Module, g, snap: Dict[str, dict], folded: bool,
                  correlation: str = "model-folding") -> None:
    from ._activations import _apply_affine, _pruned_positions

    modules = dict(model.named_modules())
    from ..plan._compact import read_field

    # (built for this group only, not kept in the record: a prune holds no dense plans afterwards)
    applied = read_field(g, "out_map", cache=False).double().cpu()  # what merging did to each producer row
    target = _target_weights(read_field(g, "plan", cache=False).cpu())  # the sources each merged channel stands for
    for m in g.members:
        if m.role != "out" or m.name not in snap:
            continue
        src = snap[m.name]
        rho = _correlation_from_gram(src["gram"] if correlation == "model-folding" else src["rows"] @ src["rows"].T)
        if "bn" in src:
            bn_member = _bn_of(g.members, m.name)
            slots = _slots(bn_member, g.n)[:, 0]
            pos = _pruned_positions(slots, g.kept)
            bn = modules[bn_member.name]
            if folded:
                c, d = src["gamma"], src["beta"]
            else:
                c, d = src["sigma"], src["mu"]
            mean, var = predicted_statistics(applied, c, d, rho)
            if folded:
                # (mean, var) describe the folded, merged output z.  The BatchNorm after the producer
                # maps its input y to z = a * y + b in eval mode (the identity prune leaves, or the scale
                # and statistics prune gives back to folded BatchNorms), so y has mean (mean - b) / a
                # and variance var / a^2.
                run_var = bn.running_var.detach().double().cpu()[pos]
                gain = (bn.weight.detach().double().cpu()[pos] if bn.affine else torch.ones_like(run_var))
                a = gain / torch.sqrt(run_var + bn.eps)
                b = (bn.bias.detach().double().cpu()[pos] if bn.affine else torch.zeros_like(run_var)) \
                    - bn.running_mean.detach().double().cpu()[pos] * a
                a = torch.where(a.abs() > 1e-12, a, torch.ones_like(a))
                mean, var = (mean - b) / a, var / a ** 2
            std_target = target.T @ src["gamma"].abs()
            mean_target = target.T @ src["beta"]
            if not folded and bn.affine:  # the BatchNorm's own gamma carries the channel's sign
                sign = torch.where(bn.weight.detach().double().cpu()[pos] < 0, -1.0, 1.0).double()
                std_target = std_target * sign
            if bn.affine:
                dtype = bn.running_mean.dtype
                bn.running_mean[pos] = mean.to(dtype).to(bn.running_mean.device)
                bn.running_var[pos] = (var - bn.eps).clamp_min(0.0).to(dtype).to(bn.running_var.device)
                bn.weight[pos] = std_target.to(bn.weight.dtype).to(bn.weight.device)
                bn.bias[pos] = mean_target.to(bn.bias.dtype).to(bn.bias.device)
            else:  # no affine to set: put the correction into the producer (BN then standardises it)
                k_total = bn.running_mean.shape[0]
                scale = torch.ones(k_total, dtype=torch.float64)
                shift = torch.zeros(k_total, dtype=torch.float64)
                now_mean = bn.running_mean.detach().double().cpu()[pos]
                now_std = torch.sqrt(bn.running_var.detach().double().cpu()[pos] + bn.eps)
                std_pred = torch.sqrt(var).clamp_min(1e-12)
                # make the producer's output have the BN's current statistics after the merge
                scale[pos] = now_std / std_pred
                shift[pos] = now_mean - scale[pos] * mean
                _apply_affine(modules[m.name], scale, shift)
        else:
            # no statistics stored: rescale merged rows so their unit-variance-input response has the
            # plan-weighted norm of the sources' (bias untouched)
            norms = src["rows"].norm(dim=1)
            gram_std = torch.sqrt(((rho @ (applied * norms[:, None])) * (applied * norms[:, None])).sum(0))
            want = target.T @ norms
            slots = _slots(m, g.n)[:, 0]
            pos = _pruned_positions(slots, g.kept)
            module = modules[m.name]
            size = module.weight.shape[m.dim]
            scale = torch.ones(size, dtype=torch.float64)
            scale[pos] = torch.where(gram_std > 1e-12, want / gram_std.clamp_min(1e-12), torch.ones_like(want))
            shape = [1] * module.weight.dim()
            shape[m.dim] = -1
            module.weight.mul_(scale.to(module.weight.dtype).to(module.weight.device).view(shape))


def data_free_repair(result, model: Optional[nn.Module] = None, snapshot: Optional[Dict[str, dict]] = None,
                     inplace: bool = False, correlation: str = "model-folding") -> nn.Module:
    """Repair the merged channels' statistics of ``result.model`` without data (see the module docstring).

    Parameters
    ----------
    result : PruneResult
    model : nn.Module, optional
        The unpruned model (read only); or give ``snapshot`` (from :func:`snapshot_sources`).
    inplace : bool
        Repair ``result.model`` itself instead of a copy.
    correlation : {"model-folding", "white-inputs"}
        How the merged channels' correlation ``rho`` is estimated from weights.  ``"model-folding"``
        (default): cosine similarity of every tensor along the channel, as Model Folding's
        ``get_average_correlation`` (see the module docstring).  ``"white-inputs"``: cosine similarity of
        the producer rows only, exact when the producer's inputs are white (uncorrelated, unit variance),
        far too low on a trained network's correlated ReLU features.
    """
    import copy

    if correlation not in CORRELATIONS:
        raise ValueError(f"correlation must be one of {CORRELATIONS}, got {correlation!r}")
    if snapshot is None:
        snapshot = snapshot_sources(model, result.groups)
    fixed = result.model if inplace else copy.deepcopy(result.model)
    fold = getattr(result, "fold_repair", None)
    if fold is not None:  # prune(method="fold"): Model Folding's own repair (repair/_fold_repair.py), once
        if correlation != "model-folding":
            raise ValueError("a prune(method='fold') result is repaired as Model Folding repairs it "
                             "(correlation='model-folding'); prune with method='intra-fusion' to try other estimates")
        if not fold["applied"]:
            from ._fold_repair import apply_fold_repair

            apply_fold_repair(fixed, result.groups, fold["scales"])
        return fixed
    for g in result.groups:
        if g.k >= g.n:
            continue
        _repair_group(fixed, g, snapshot, _folded(result, g), correlation)
    return fixed

