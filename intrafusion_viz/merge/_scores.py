"""Magnitude importance of BatchNorm-folded weights (``OTConfig(score_folded=True)``) without a folded copy.

Torch-Pruning's ``GroupMagnitudeImportance`` of a group with its BatchNorms folded, the same numbers
as scoring :func:`folded_copy_of_groups` bit for bit, read straight from the folded weights (or from
the channel vectors, which already hold them).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from ._fold import folded_weights_as
from ._positions import _slots

__all__ = ["folded_magnitude_scores", "magnitude_scores_from_features", "folded_magnitude_importances"]

_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_HANDLERS = {("out", True): "prune_conv_out_channels", ("in", True): "prune_conv_in_channels",
             ("out", False): "prune_linear_out_channels", ("in", False): "prune_linear_in_channels"}


def folded_magnitude_scores(model: nn.Module, group, estimator) -> Optional[torch.Tensor]:
    """Torch-Pruning's ``GroupMagnitudeImportance`` of ``group`` with its BatchNorms folded, read
    straight from the folded weights: the numbers :func:`folded_copy_of_groups` and the estimator
    give, bit for bit, without a copy of the model or Torch-Pruning's gathers.

    The same tensors are reduced with the same operations in the same layout (a folded producer's
    rows, a consumer's columns as ``weight.transpose(0, 1).flatten(1)``, a folded BatchNorm's
    weight of ones), then the estimator's own ``_reduce`` and (zero-safe) ``_normalize``.

    Returns
    -------
    Tensor, shape (group.size,), or None
        ``None`` where the shortcut does not apply (another estimator, bias terms, layer types
        other than plain conv/linear/BatchNorm): score the folded copy instead.
    """
    import torch_pruning as tp
    from torch_pruning.pruner import function as tpf

    from ..plan._importance import _zero_safe

    default_types = {nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm}
    if (type(estimator) is not tp.importance.GroupMagnitudeImportance or estimator.bias
            or set(estimator.target_types) != default_types):
        return None
    modules = dict(model.named_modules())
    pairs = {m.name: group.fold_pairs[m.name] for m in group.members
             if m.role in ("out", "in") and m.name in group.fold_pairs}
    identities = set(pairs.values())  # BatchNorms folded away: weight 1 in the folded copy
    imps, roots = [], []
    for m in group.members:
        layer = modules.get(m.name)
        fn = getattr(tpf, m.handler_name, None) if m.handler_name else None
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)) \
                or getattr(layer, "transposed", False) or getattr(layer, "groups", 1) != 1:
            return None
        idxs = list(m.local_idxs)
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            if fn != tpf.prune_batchnorm_out_channels:
                return None
            if not layer.affine:
                continue
            w = torch.ones_like(layer.weight) if m.name in identities else layer.weight.detach()
            imps.append(w[idxs].abs().pow(estimator.p))
            roots.append(list(m.root_idxs))
            continue
        w = folded_weights_as(layer, modules[pairs[m.name]])[0] if m.name in pairs else layer.weight.detach()
        if fn in (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels):
            w = w.flatten(1) if idxs == list(range(w.shape[0])) else w[idxs].flatten(1)
            imps.append(w.abs().pow(estimator.p).sum(1))
        elif fn in (tpf.prune_conv_in_channels, tpf.prune_linear_in_channels):
            imps.append(w.transpose(0, 1).flatten(1).abs().pow(estimator.p).sum(1)[idxs])
        else:
            return None
        roots.append(list(m.root_idxs))
    if not imps:
        return None
    safe = _zero_safe(estimator)
    return safe._normalize(estimator._reduce(imps, roots), safe.normalizer)


def magnitude_scores_from_features(model: nn.Module, group, estimator, features: torch.Tensor,
                                   bias: bool) -> Optional[torch.Tensor]:
    """:func:`folded_magnitude_scores` read from the group's channel vectors, bit for bit.

    ``features`` is ``channel_features(model, group, fold=True, bias=bias)``: its columns already
    hold every folded producer row and consumer column in the layout the estimator reduces (a
    producer's ``weight.flatten(1)``, a consumer's ``weight.transpose(0, 1).flatten(1)``), so the
    scores are the same sums over slices of it, taken row block by row block in cache instead of
    over fresh copies of whole weights (``abs``, ``pow``, a transposed copy: several times the
    weights' size, most of the cost of scoring).

    Returns
    -------
    Tensor, shape (group.size,), or None
        ``None`` where it does not apply (see :func:`folded_magnitude_scores`; also layers other
        than plain conv/linear/BatchNorm holding one position per channel).
    """
    import torch_pruning as tp
    from torch_pruning.pruner import function as tpf

    from ..plan._importance import _zero_safe

    default_types = {nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm}
    if (type(estimator) is not tp.importance.GroupMagnitudeImportance or estimator.bias
            or set(estimator.target_types) != default_types or features.dim() != 2):
        return None
    n = group.size
    modules = dict(model.named_modules())
    identities = {group.fold_pairs[m.name] for m in group.members
                  if m.role in ("out", "in") and m.name in group.fold_pairs}
    spans, strided, start = {}, {}, 0
    for m in group.members:  # the columns channel_features gives each layer, in its order
        layer = modules.get(m.name)
        if m.role == "norm":
            if not isinstance(layer, nn.modules.batchnorm._BatchNorm) or m.dim != 0 or m.layer_type == "Parameter" \
                    or getattr(tpf, m.handler_name, None) != tpf.prune_batchnorm_out_channels:
                return None
            continue
        if m.role not in ("out", "in") or type(layer) not in _CONV_LINEAR \
                or getattr(layer, "transposed", False) or getattr(layer, "groups", 1) != 1 \
                or m.handler_name != _HANDLERS[(m.role, isinstance(layer, nn.modules.conv._ConvNd))] \
                or m.dim != (0 if m.role == "out" else 1) or layer.weight.shape[m.dim] != n:
            return None
        slots = _slots(m, n)
        if slots.shape[1] != 1 or not bool((slots[:, 0] == torch.arange(n)).all()):
            return None
        if not layer.weight.is_contiguous():
            return None
        width = layer.weight.numel() // n
        spans[m.name] = (start, start + width)
        shape = layer.weight.shape
        if m.role == "in" and (shape[0] == 1 or shape[2:].numel() == 1):
            strided[m.name] = shape  # the estimator sums a strided view of this weight: done as it does
        start += width
        if m.role == "out" and bias and (layer.bias is not None or m.name in group.fold_pairs):
            start += 1
    if start != features.shape[1] or features.shape[0] != n or features.dtype != torch.float32:
        return None
    x = features.detach()
    sums = {}
    for name, shape in strided.items():  # the weight itself again (a small one), then the estimator's sums
        a, b = spans.pop(name)
        weight = x[:, a:b].reshape((n, shape[0]) + tuple(shape[2:])).transpose(0, 1).contiguous()
        sums[name] = weight.transpose(0, 1).flatten(1).abs().pow(estimator.p).sum(1)
    sums.update({name: torch.empty(n, dtype=x.dtype) for name in spans})
    rows = max(1, (1 << 17) // max(1, x.shape[1]))
    for r0 in range(0, n if spans else 0, rows):  # |x| ** p of a block of rows, in cache, then row sums
        block = x[r0:r0 + rows].abs()
        if estimator.p != 1:
            block = block.pow(estimator.p)
        for name, (a, b) in spans.items():
            sums[name][r0:r0 + len(block)] = block[:, a:b].contiguous().sum(1)  # as over the whole weight
    imps, roots = [], []
    for m in group.members:
        if m.role == "norm":
            layer = modules[m.name]
            if not layer.affine:
                continue
            w = torch.ones_like(layer.weight) if m.name in identities else layer.weight.detach()
            imps.append(w[list(m.local_idxs)].abs().pow(estimator.p))
        else:
            imps.append(sums[m.name])
        roots.append(list(m.root_idxs))
    if not imps:
        return None
    safe = _zero_safe(estimator)
    return safe._normalize(estimator._reduce(imps, roots), safe.normalizer)


def folded_magnitude_importances(model: nn.Module, groups, estimator,
                                 features: Optional[Dict[int, torch.Tensor]] = None,
                                 bias: bool = False) -> Optional[Dict[int, torch.Tensor]]:
    """:func:`folded_magnitude_scores` of each group as ``{group.index: float64 scores}``
    (checked as :func:`group_importance` checks any scores), or ``None`` unless it applies to all.

    ``features``: ``{group.index: channel_features(model, group, fold=True, bias=bias)}`` where
    known; the scores are then read from them (:func:`magnitude_scores_from_features`)."""
    from ..plan._importance import group_importance

    raw = {}
    for g in groups:
        scores = None
        if features is not None and g.index in features:
            scores = magnitude_scores_from_features(model, g, estimator, features[g.index], bias)
        if scores is None:
            scores = folded_magnitude_scores(model, g, estimator)
        if scores is None:
            return None
        raw[g.index] = scores
    return {g.index: group_importance(g, lambda _, s=raw[g.index]: s) for g in groups}
