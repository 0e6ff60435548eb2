"""BatchNorm folding: the one fold formula, folding in place or into a copy, and restoring folded BatchNorms.

:func:`folded_weights` is torch's ``fuse_conv_bn_weights`` / ``fuse_linear_bn_weights`` in float64;
inside :func:`intrafusion_viz.merge._memo.fold_memo` each (layer, BatchNorm) fold is computed once.
:func:`restore_folded_batchnorms` gives a merged channel its scale, shift and statistics back.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, Tuple

import torch
import torch.nn as nn

from ..groups._trace import Group, Member, _trace
from ._memo import exact_scale, memo_lookup, memo_pop, memo_store
from ._positions import IndexTracker, _slots

__all__ = ["folded_weights", "folded_weights_as", "fold_batchnorm", "fold_group_batchnorms", "folded_copy_of_groups",
           "restore_folded_batchnorms"]

_PRODUCERS = ("out", "depthwise")  # roles whose rows (weight along dim, bias) are a channel's own


def folded_weights(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm,
                   bn_eps: str = "exact") -> Tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``layer`` with ``bn`` (which follows it) folded in: the one fold formula.

    Torch's ``fuse_conv_bn_weights`` / ``fuse_linear_bn_weights``, evaluated in float64 (eps included),
    so ``bn(layer(x)) == x @ weight.T + bias`` in eval mode up to the final rounding.
    ``bn_eps="authors"`` leaves eps out, as the Intra-Fusion paper's code does (then it is not exactly ``bn``).

    Returns
    -------
    weight : Tensor, shape of ``layer.weight``, float64
    bias : Tensor, shape (out_channels,), float64
    """

    hit = memo_lookup(layer, bn, bn_eps)  # inside prune(): each fold is computed once
    if hit is not None:
        return hit
    folded = _fold_formula(layer, layer.weight.detach().double(), bn, bn_eps)
    memo_store(layer, bn, bn_eps, folded)
    return folded


def _fold_formula(layer: nn.Module, weight: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm,
                  bn_eps: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Torch's fuse functions in float64 on ``weight`` (``layer``'s weight or a stand-in of its shape)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

    def f64(t):
        return None if t is None else t.detach().double()

    eps = 0.0 if bn_eps == "authors" else bn.eps
    stats = (f64(bn.running_mean), f64(bn.running_var), eps, f64(bn.weight) if bn.affine else None,
             f64(bn.bias) if bn.affine else None)
    if isinstance(layer, nn.Linear):
        ones = torch.ones_like(stats[0])
        w, b = fuse_linear_bn_weights(weight, f64(layer.bias), stats[0], stats[1], eps,
                                      stats[3] if bn.affine else ones, stats[4] if bn.affine else 0 * ones)
    else:
        w, b = fuse_conv_bn_weights(weight, f64(layer.bias), *stats, transpose=getattr(layer, "transposed", False))
    return w.data, b.data


def folded_weights_as(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm,
                      bn_eps: str = "exact") -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`folded_weights` with the weight in ``layer``'s dtype, bit for bit ``weight.to(dtype)``.

    The weight is multiplied by the per-channel float64 factor piece by piece (:func:`exact_scale`),
    without a float64 copy of the whole weight.

    Returns
    -------
    weight : Tensor, shape and dtype of ``layer.weight``
    bias : Tensor, shape (out_channels,), float64
    """

    hit = memo_lookup(layer, bn, bn_eps, "as")
    if hit is not None:
        return hit
    weight = layer.weight.detach()
    if weight.dtype == torch.float64 or not weight.is_floating_point():
        w, b = folded_weights(layer, bn, bn_eps)
        folded = (w.to(weight.dtype), b)
    else:
        shape = [1] * weight.dim()
        shape[1 if getattr(layer, "transposed", False) else 0] = weight.shape[1 if getattr(layer, "transposed", False) else 0]
        factor, b = _fold_formula(layer, torch.ones(shape, dtype=torch.float64, device=weight.device), bn, bn_eps)

        folded = (exact_scale(weight, factor), b)
    memo_store(layer, bn, bn_eps, folded, "as")
    return folded


def _batchnorm_state(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """(4, C) float64: gamma, beta, running mean, running variance (gamma 1, beta 0 without affine)."""
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(var)
    return torch.stack([gamma, beta, bn.running_mean.detach().double(), var]).cpu()


@torch.no_grad()
def _fold_pair(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm, bn_eps: str = "exact",
               replace: bool = False) -> torch.Tensor:
    """Fold ``bn`` into ``layer`` exactly (eps included) and leave ``bn`` as the identity in eval mode.

    ``bn_eps="authors"``: fold as the paper's code does, without eps, and leave ``bn`` with variance 1
    (so it still divides by ``sqrt(1 + eps)``).  ``replace=True``: give both modules new tensors
    instead of writing into theirs (the surgery's work copy may share its tensors with the caller's
    model until they are replaced).  Returns ``bn``'s state before folding (see :func:`_batchnorm_state`).
    """
    state = _batchnorm_state(bn)
    weight, bias = folded_weights_as(layer, bn, bn_eps)
    if replace:  # the fold becomes the layer's own tensor: no copy, and no later reader of the memo sees it change
        memo_pop(layer, bn, bn_eps, "as")
        memo_pop(layer, bn, bn_eps)
        grad = layer.weight.requires_grad
        bias_grad = layer.bias.requires_grad if layer.bias is not None else grad
        layer.weight = nn.Parameter(weight, requires_grad=grad)
        layer.bias = nn.Parameter(bias.to(weight.device, weight.dtype), requires_grad=bias_grad)
        bn.running_mean = torch.zeros_like(bn.running_mean)
        bn.running_var = torch.full_like(bn.running_var, 1.0 if bn_eps == "authors" else 1.0 - bn.eps)
        if bn.affine:
            bn.weight = nn.Parameter(torch.ones_like(bn.weight), requires_grad=bn.weight.requires_grad)
            bn.bias = nn.Parameter(torch.zeros_like(bn.bias), requires_grad=bn.bias.requires_grad)
        return state
    layer.weight.copy_(weight)
    if layer.bias is None:
        layer.bias = nn.Parameter(bias.to(layer.weight.device, layer.weight.dtype),
                                  requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.copy_(bias.to(layer.bias.dtype))
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 if bn_eps == "authors" else 1.0 - bn.eps)  # exact: sqrt(running_var + eps) == 1
    if bn.affine:
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    return state


def _fold_members(model: nn.Module, members: Iterable[Member], bn_eps: str = "exact",
                  replace: bool = False) -> Dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    folded = {}
    for m in members:
        if m.role == "norm" and m.fold_from is not None:
            folded[m.name] = _fold_pair(modules[m.fold_from], modules[m.name], bn_eps, replace)
    return folded


def fold_group_batchnorms(model: nn.Module, group: Group, replace: bool = False) -> Dict[str, torch.Tensor]:
    """Fold every foldable BatchNorm of ``group`` into its producer, in place (``replace=True``: the
    folded modules get new tensors instead of having theirs written).

    Returns
    -------
    dict
        BatchNorm name -> its state before folding, shape (4, C) float64 (gamma, beta, running mean,
        running variance), for :func:`restore_folded_batchnorms`.
    """
    return _fold_members(model, group.members, replace=replace)


@torch.no_grad()
def restore_folded_batchnorms(model: nn.Module, group: Group, kept: torch.Tensor, norm_map: torch.Tensor,
                              folded: Dict[str, torch.Tensor], tracker: IndexTracker) -> None:
    """After merging, give each BatchNorm folded into its producer a real scale, shift and statistics again.

    Folded, kept channel ``j`` computes ``y_j = W'_j x + b'_j`` and its BatchNorm is the identity in
    eval mode; in train mode that BatchNorm would re-normalise ``y_j`` and lose the scale and shift.
    Here it gets the ``norm_map``-weighted original ``|gamma|, beta, mean, var`` of the channels merged
    into ``j``, and the producer is divided back by ``s_j = |gamma|_j / sqrt(var_j + eps) > 0``::

        W''_j = W'_j / s_j,    b''_j = (b'_j - beta_j) / s_j + mean_j

    so eval mode computes exactly the merged function, and train mode normalises ``W''_j x`` with batch
    statistics and then applies ``|gamma|_j, beta_j``, as the original network does: a negative gamma's
    sign stays in the producer, where normalising commutes with it, so merging exact duplicates gives
    the original function in train mode too.  A channel whose merged ``|gamma|`` is (nearly) zero keeps
    the identity BatchNorm.

    Parameters
    ----------
    model : nn.Module
        Merged model, modified in place.
    group : Group
    kept : Tensor, shape (k,)
    norm_map : Tensor, shape (n, k)
        Column j: the weights of the original channels in kept channel j (as in :func:`apply_merge`).
    folded : dict
        From :func:`fold_group_batchnorms`.
    tracker : IndexTracker
        The tracker :func:`apply_merge` used, to find the kept channels' positions.
    """

    modules = dict(model.named_modules())
    kept = torch.as_tensor(kept, dtype=torch.long).cpu()
    n = group.size
    for m in group.members:
        if m.role != "norm" or m.name not in folded:
            continue
        producer = next((p for p in group.members if p.name == m.fold_from and p.role in _PRODUCERS), None)
        if producer is None:  # folded into a layer outside this group: it stays an identity
            continue
        bn, layer = modules[m.name], modules[producer.name]
        bn_slots = _slots(m, n)[:, 0]
        state = folded[m.name][:, bn_slots].clone()
        state[0] = state[0].abs()  # the sign of gamma stays folded in the producer
        gamma, beta, mean, var = (norm_map.T.double() @ state.T).unbind(1)  # (k,) each
        scale = gamma / torch.sqrt(var + bn.eps)
        ok = scale.abs() > 1e-8 * float(scale.abs().max())
        if not bool(ok.any()):
            continue
        bn_pos = tracker.current(m.name, m.dim, bn_slots[kept])[ok]
        p_slots = _slots(producer, n)[kept]  # (k, positions per channel)
        rows = tracker.current(producer.name, producer.dim, p_slots.flatten()).view_as(p_slots)[ok]
        per_row = scale[ok].repeat_interleave(rows.shape[1])
        weight = layer.weight.data.movedim(producer.dim, 0)
        flat = rows.flatten().to(weight.device)
        view = [-1] + [1] * (weight.dim() - 1)
        if len(flat) == len(weight) and bool((flat == torch.arange(len(flat), device=flat.device)).all()):
            exact_scale(weight, per_row.to(weight.device).view(view), divide=True, out=weight)  # every row, in place
        else:
            scaled = weight.index_select(0, flat)
            exact_scale(scaled, per_row.to(weight.device).view(view), divide=True, out=scaled)
            weight.index_copy_(0, flat, scaled)
        bias = layer.bias.data
        b_new = (bias[flat].double() - beta[ok].repeat_interleave(rows.shape[1]).to(bias.device)) \
            / per_row.to(bias.device) + mean[ok].repeat_interleave(rows.shape[1]).to(bias.device)
        bias[flat] = b_new.to(bias.dtype)
        pos = bn_pos.to(bn.running_mean.device)
        bn.running_mean[pos] = mean[ok].to(bn.running_mean)
        bn.running_var[pos] = var[ok].to(bn.running_var)
        if bn.affine:
            bn.weight[pos] = gamma[ok].to(bn.weight)
            bn.bias[pos] = beta[ok].to(bn.bias)


def fold_batchnorm(model: nn.Module, example_inputs, *, inplace: bool = False,
                   bn_eps: str = "exact") -> nn.Module:
    """Fold every BatchNorm that directly follows a conv/linear into it.

    In eval mode the result computes the same function (up to rounding); each folded BatchNorm is
    kept as an identity (mean 0, variance ``1 - eps``, weight 1, bias 0).  In train mode such a
    BatchNorm normalises with batch statistics, so the folded model is for evaluation and analysis;
    :func:`intrafusion_viz.prune` gives merged BatchNorms their scale and statistics back.

    Parameters
    ----------
    model : nn.Module
    example_inputs : Tensor or tuple of Tensor
        Used once to trace which conv feeds which BatchNorm.
    inplace : bool
        Modify ``model`` itself instead of a copy.
    bn_eps : {"exact", "authors"}
        ``"authors"`` folds as the Intra-Fusion paper's code does: without eps, leaving each
        BatchNorm with variance 1 and its eps (this changes the function by about eps / 2 relative
        per BatchNorm; for comparing with that code only).

    Returns
    -------
    nn.Module
        The folded model (``model`` itself when ``inplace``).
    """
    trace = _trace(model, example_inputs)
    target = model if inplace else copy.deepcopy(model)
    seen, members = set(), []
    for spec in trace.specs + trace.output_specs:
        for m in spec.members:
            if m.role == "norm" and m.fold_from is not None and m.name not in seen:
                seen.add(m.name)
                members.append(m)
    if bn_eps not in ("exact", "authors"):
        raise ValueError(f"bn_eps must be 'exact' or 'authors', got {bn_eps!r}")
    _fold_members(target, members, bn_eps)
    return target


def folded_copy_of_groups(model: nn.Module, groups: Iterable[Group], bn_eps: str = "exact") -> nn.Module:
    """A copy of ``model`` in which the layers of ``groups`` are BatchNorm-folded.

    Only those layers get new (folded) weights; every other tensor is shared with ``model``, so this
    is cheap on a large model.  For reading weights (importance scores) only: nothing may be written
    into it.
    """
    pairs = {}
    for g in groups:
        for m in g.members:
            if m.role in ("out", "in") and m.name in g.fold_pairs:
                pairs[m.name] = g.fold_pairs[m.name]
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    copied = copy.deepcopy(model, memo)  # the module tree only; tensors shared
    modules, new_modules = dict(model.named_modules()), dict(copied.named_modules())
    with torch.no_grad():
        for layer, bn in pairs.items():
            src, dst = modules[layer], new_modules[layer]
            weight, bias = folded_weights_as(src, modules[bn], bn_eps)
            dst.weight = nn.Parameter(weight, requires_grad=src.weight.requires_grad)
            dst.bias = nn.Parameter(bias.to(src.weight.dtype), requires_grad=False)
            norm = new_modules[bn]  # the identity it becomes (importance may read its weight)
            if norm.affine:
                norm.weight = nn.Parameter(torch.ones_like(norm.weight), requires_grad=False)
                norm.bias = nn.Parameter(torch.zeros_like(norm.bias), requires_grad=False)
            norm.running_mean = torch.zeros_like(norm.running_mean)
            norm.running_var = torch.full_like(norm.running_var, 1.0 if bn_eps == "authors" else 1.0 - norm.eps)
    return copied

