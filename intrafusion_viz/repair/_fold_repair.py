"""Model Folding's channel vectors, merge and data-free repair (DF_REPAIR), on our unfused BatchNorms.

Model Folding (Wang et al., ICLR 2025; github marza96/ModelFolding @ 33e2818, ``utils/weight_clustering.py``
``concat_weights`` / ``merge_channel_clustering_approx_repair`` after ``utils/utils.py`` ``fuse_bnorms_*``)
first fuses every BatchNorm's standardisation into its conv: the conv becomes ``W / s`` with bias
``(b - mu) / s`` (``s = sqrt(var + eps)``) and the BatchNorm keeps gamma, beta with ``mu = 0, var = 1``.
Then, group after group in forward order, on the current (partially merged) weights:

* the channel vectors ``w_i`` (:func:`fold_vectors`): the producers' fused rows and fused bias, the BatchNorm's
  gamma and beta, the consumers' fused columns (running statistics left out);
* a cluster ``c`` of ``n_c`` channels: rows, bias, gamma, beta -> their means; consumer columns -> their sum;
  running stats -> ``mu = 0, var = 1``; then gamma *= ``sqrt(n_c / (1 + (n_c - 1) avg_corr_c))`` with
  ``avg_corr_c`` the mean cosine of ``w_i, w_j`` over the ordered pairs ``i != j`` of the cluster.

**The same network with our BatchNorms left in place** (:func:`standardise_producers`, proof below): each
producer conv followed by a BatchNorm becomes ``W / s``, bias ``b / s``, and its BatchNorm ``mu / s``,
``var = 1 - eps`` (gamma, beta unchanged).  In eval mode the BatchNorm computes
``gamma (W x + b - mu) / s + beta``, the function before (up to rounding), and its input minus its running mean
is their fused conv's output ``(W x + b - mu) / s`` exactly.  Merging now averages ``W / s``, ``b / s``,
``mu / s`` (and ``var = 1 - eps``) per cluster: the merged BatchNorm sees ``mean(W / s) x + mean(b / s) -
mean(mu / s)``, which is their merged fused conv ``mean(W / s) x + mean((b - mu) / s)`` (linearity), and
divides it by ``sqrt(1 - eps + eps) = 1``.  Gamma, beta are theirs.  Consumer columns are summed, which
commutes with the consumer's own row scaling, so consumers need no change.  The one difference: their
BatchNorm divides by ``sqrt(1 + eps)`` (``var = 1`` and eps kept), ours by 1, so ours is the unpruned
function where theirs is off by about ``eps / 2`` per BatchNorm (6e-5 relative on the golden networks);
``tests/test_model_folding_golden.py`` sets our merged BatchNorms' ``running_var`` to 1 and gets their logits
to float round-off, and leaves it at ``1 - eps`` and gets them to 1e-4.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn

from ..merge._surgery import IndexTracker, _slots, apply_merge

__all__ = ["fold_vectors", "standardise_producers", "fold_surgery", "cluster_correlation"]

_BN = nn.modules.batchnorm._BatchNorm


def _current(member, n: int, tracker: Optional[IndexTracker]) -> torch.Tensor:
    slots = _slots(member, n)
    if tracker is None:
        return slots
    return tracker.current(member.name, member.dim, slots.flatten().tolist()).view_as(slots)


def _sigma_mu(bn: nn.Module):
    """(s, mu) float64 of a BatchNorm's running statistics: ``s = sqrt(var + eps)``."""
    var = bn.running_var.detach().double().cpu()
    return torch.sqrt(var + bn.eps), bn.running_mean.detach().double().cpu()


@torch.no_grad()
def fold_vectors(model: nn.Module, group, tracker: Optional[IndexTracker] = None) -> torch.Tensor:
    """(n, d) float64: Model Folding's ``concat_weights`` of the group's channels, BatchNorm standardisation fused.

    One row per channel: each producer's rows ``W / s`` and bias ``(b - mu) / s`` (zero bias where the conv has
    none; ``s, mu`` of the BatchNorm that follows it, if any), each BatchNorm's gamma and beta, each consumer's
    columns (of ``W_c / s_c``, the consumer's own BatchNorm fused).  Column order differs from theirs
    (member order); the k-means distances and cosines do not depend on it.  ``tracker``: positions in a model
    some groups of which were merged already.
    """
    modules = dict(model.named_modules())
    n = group.size
    pairs = getattr(group, "fold_pairs", {}) or {}
    parts = []
    for m in group.members:
        module = modules.get(m.name)
        if module is None or m.layer_type == "Parameter":
            continue
        cur = _current(m, n, tracker)
        if m.role in ("out", "depthwise"):
            w = module.weight.detach().double().cpu().movedim(m.dim, 0)
            rows = w[cur.flatten()].reshape(n, -1)
            bias = (module.bias.detach().double().cpu()[cur[:, 0]] if getattr(module, "bias", None) is not None
                    else torch.zeros(n, dtype=torch.float64))
            bn = modules.get(pairs.get(m.name, ""))
            if isinstance(bn, _BN):
                s, mu = _sigma_mu(bn)
                s, mu = s[cur[:, 0]], mu[cur[:, 0]]
                rows, bias = rows / s[:, None], (bias - mu) / s
            parts += [rows, bias[:, None]]
        elif m.role in ("norm", "affine"):
            for attr in ("weight", "bias"):
                t = getattr(module, attr, None)
                if torch.is_tensor(t):
                    parts.append(t.detach().double().cpu()[cur.flatten()].reshape(n, -1))
        elif m.role == "in":
            w = module.weight.detach().double().cpu()
            bn = modules.get(pairs.get(m.name, ""))
            if isinstance(bn, _BN) and m.dim != 0:  # the consumer's own rows, standardised
                s, _ = _sigma_mu(bn)
                w = w / s.view(-1, *([1] * (w.dim() - 1)))
            parts.append(w.movedim(m.dim, 0)[cur.flatten()].reshape(n, -1))
    if not parts:
        raise ValueError(f"group {group.index} ({group.name!r}) has no weights to cluster")
    return torch.cat(parts, 1)


def cluster_correlation(vectors: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """(k,) mean cosine similarity over the ordered pairs ``i != j`` of each cluster (0 for singletons).

    ``vectors`` (n, d); ``members`` (n, k) boolean, one True per row (Model Folding's ``get_average_correlation``).
    """
    v = vectors.double()
    norms = v.norm(dim=1).clamp_min(1e-300)
    u = v / norms[:, None]
    a = members.double()
    s = a.T @ u  # (k, d): sum of unit vectors per cluster
    n_c = a.sum(0)
    pair_sum = (s * s).sum(1) - (u * u).sum(1) @ a  # sum over i != j of cos
    pairs = n_c * (n_c - 1)
    return torch.where(pairs > 0, pair_sum / pairs.clamp_min(1), torch.zeros_like(pair_sum))


@torch.no_grad()
def standardise_producers(model: nn.Module, groups: Iterable) -> Dict[str, str]:
    """Put every producer's BatchNorm standardisation into the producer, in place (same function in eval mode).

    Conv (or Linear) rows ``W / s``, bias ``b / s``; its BatchNorm ``running_mean / s``, ``running_var = 1 - eps``
    (module docstring).  Returns ``{producer: BatchNorm}`` of the pairs changed (each once).
    """
    modules = dict(model.named_modules())
    done = {}
    for g in groups:
        pairs = getattr(g, "fold_pairs", {}) or {}
        for m in g.members:
            if m.role != "out" or m.name in done or not isinstance(modules.get(pairs.get(m.name, "")), _BN):
                continue
            conv, bn = modules[m.name], modules[pairs[m.name]]
            if bn.running_var is None or bn.running_mean is None:
                continue
            s, mu = _sigma_mu(bn)
            shape = [1] * conv.weight.dim()
            shape[m.dim] = -1
            conv.weight.copy_((conv.weight.double() / s.to(conv.weight.device).view(shape)).to(conv.weight.dtype))
            if conv.bias is not None:
                conv.bias.copy_((conv.bias.double() / s.to(conv.bias.device)).to(conv.bias.dtype))
            bn.running_mean.copy_((mu / s).to(bn.running_mean))
            bn.running_var.fill_(1.0 - bn.eps)
            done[m.name] = pairs[m.name]
    return done


@torch.no_grad()
def fold_surgery(model: nn.Module, bound, plans, attention: Optional[dict] = None,
                 repair: bool = True) -> Dict[int, torch.Tensor]:
    """Model Folding's merge (and, with ``repair``, its DF_REPAIR) of every planned group, in place.

    ``bound``: the groups bound to ``model``; ``plans``: ``(index, kept, MergeMaps)`` in forward (group)
    order, hard clusters.  Producers are standardised first (:func:`standardise_producers`); then each group
    is merged on the current weights, its clusters' correlations read from :func:`fold_vectors` just before.
    Returns ``{group index: (k,) gamma factor}`` of DF_REPAIR (applied when ``repair``; a gamma scaled
    enters no other group's vectors, so :func:`apply_fold_repair` can apply them later).
    """
    standardise_producers(model, [bound[i] for i, *_ in plans])
    tracker = IndexTracker()
    scales = {}
    for i, kept, maps in plans:
        group = bound[i]
        out_map, in_map, norm_map = maps.build()
        members = out_map > 0
        rho = cluster_correlation(fold_vectors(model, group, tracker), members)
        n_c = members.double().sum(0)
        scale = scales[i] = torch.sqrt(n_c / (1.0 + (n_c - 1.0) * rho).clamp_min(1e-12))
        kept = torch.as_tensor(kept, dtype=torch.long).cpu()
        apply_merge(model, group, kept, out_map, in_map, norm_map, tracker, (attention or {}).get(i))
        if not repair:
            continue
        modules = dict(model.named_modules())
        for m in group.members:
            bn = modules.get(m.name)
            if m.role != "norm" or not isinstance(bn, _BN) or not bn.affine:
                continue
            slots = _slots(m, group.size)[kept][:, 0]  # the merged channels, in kept order
            pos = tracker.current(m.name, m.dim, slots.tolist())
            bn.weight[pos.to(bn.weight.device)] *= scale.to(bn.weight)
    return scales


@torch.no_grad()
def apply_fold_repair(model: nn.Module, records, scales: Dict[int, torch.Tensor]) -> None:
    """Multiply the merged BatchNorms' gamma of a folded ``model`` by DF_REPAIR's factors, in place.

    ``records``: the prune's GroupResults; ``scales``: :func:`fold_surgery`'s return.
    """
    from ._activations import _pruned_positions

    modules = dict(model.named_modules())
    for g in records:
        scale = scales.get(g.index)
        if scale is None:
            continue
        for m in g.members:
            bn = modules.get(m.name)
            if m.role != "norm" or not isinstance(bn, _BN) or not bn.affine:
                continue
            pos = _pruned_positions(_slots(m, g.n)[:, 0], torch.as_tensor(g.kept, dtype=torch.long))
            bn.weight[pos.to(bn.weight.device)] *= scale.to(bn.weight)
