"""Per-call work of :func:`intrafusion_viz.prune` made cheap, with the same numbers bit for bit.

One Intra-Fusion step on one group is a few tens of milliseconds of arithmetic; around it, a plain
implementation spends as much again on bookkeeping: folding the same BatchNorm into the same layer
three times (channel vectors, importance, surgery), checking millions of entries for NaN one by one,
copying the model object by object, and computing cost rows the plan never reads.  This module holds
the helpers that remove that work without changing any result:

* :func:`fold_memo`: inside the block, :func:`intrafusion_viz.merge._surgery.folded_weights` computes each
  (layer, BatchNorm) fold once; a fold is reused only while none of the tensors it was computed from
  has changed (same objects, same version counters).  Nothing outlives the block.
* :func:`all_finite`: one sum instead of an elementwise check (the elementwise check runs only when
  the sum is not finite, to tell overflow from NaN).
* :func:`private_copy`: ``copy.deepcopy(model)`` with every ``nn.Parameter`` cloned directly, which
  shares nothing with ``model`` (same semantics as deepcopy's) and skips deepcopy's per-object work.
* :class:`LazyCost`: the cost rows of the kept channels, which an exact plan with uniform masses never
  reads, computed when someone reads ``GroupResult.cost``.
"""
from __future__ import annotations

import copy
import copyreg
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..plan._transport import all_finite
from ._memo import _local, exact_scale, fold_memo

__all__ = ["fold_memo", "all_finite", "private_copy", "LazyCost",
           "kept_rows_unused", "dropped_rows_cost", "exact_scale", "direct_surgery", "direct_surgery_replaces"]

def private_copy(model: nn.Module, skip: Optional[Dict[int, torch.Tensor]] = None) -> nn.Module:
    """``copy.deepcopy(model)``, faster: every plain ``nn.Parameter`` is cloned up front.

    The result shares no tensor with ``model`` (exactly as deepcopy: a Parameter becomes
    ``nn.Parameter(p.data.clone(), p.requires_grad)``; buffers and everything else go through deepcopy).
    ``skip``: ``{id: Parameter}`` that the caller replaces right after; they become empty placeholders.
    """
    memo: Dict[int, object] = {}
    for key, p in (skip or {}).items():
        memo[key] = nn.Parameter(torch.empty(0, dtype=p.dtype, device=p.device), p.requires_grad)
    placeholders = set(memo)
    aliases = getattr(_local, "aliases", None)
    buffers = list(model.buffers())
    storages: Dict[int, int] = {}
    for b in buffers:
        if b.layout == torch.strided and b.device.type != "meta":
            key = b.untyped_storage().data_ptr()
            storages[key] = storages.get(key, 0) + 1
    with torch.no_grad():
        for p in model.parameters():
            if type(p) is nn.Parameter and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.data.clone(memory_format=torch.preserve_format), p.requires_grad)
        for b in buffers:  # plain buffers alone in their storage; the rest (views, subclasses) go to deepcopy
            if (type(b) is torch.Tensor and id(b) not in memo and b.layout == torch.strided and b.is_leaf
                    and not b.requires_grad and b.grad is None and not b.__dict__ and not b.is_quantized
                    and b.device.type != "meta" and b.is_contiguous() and b.storage_offset() == 0
                    and b.untyped_storage().nbytes() == b.numel() * b.element_size()
                    and storages.get(b.untyped_storage().data_ptr()) == 1):
                memo[id(b)] = b.clone()
    if aliases is not None:  # inside fold_memo: a fold of an untouched clone is the original's fold
        originals = {id(t): t for t in list(model.parameters()) + buffers}
        for key, clone in memo.items():
            original = originals.get(key)
            if original is not None and key not in placeholders:
                aliases[id(clone)] = (clone._version, clone, original, original._version)
    return _module_copy(model, memo)


_ATOMIC = (type(None), bool, int, float, complex, str, bytes, type)
_EMPTY_HOOKS = (dict, OrderedDict)


def _module_copy(module: nn.Module, memo: Dict[int, object]) -> nn.Module:
    """``copy.deepcopy(module, memo)`` with the module tree walked here instead of by ``copy``.

    What deepcopy does with an ``nn.Module`` (``cls.__new__``, a deep copy of ``__getstate__()``,
    ``__setstate__``), done directly for the parts every module has: attributes that deepcopy
    returns as they are (numbers, strings, tuples of them), the ``_modules`` / ``_parameters`` /
    ``_buffers`` tables (their entries through this function or the memo), empty hook tables and
    the set of non-persistent buffer names; the class's own ``__setstate__`` is called, as deepcopy
    calls it.  Any other attribute, and any module class that changes how it is copied or pickled
    (``__deepcopy__``, ``__reduce__``, ``__getstate__``, slots), goes to ``copy.deepcopy`` with the
    same memo.
    """
    key = id(module)
    if key in memo:
        return memo[key]
    cls = type(module)
    if (not isinstance(module, nn.Module) or getattr(cls, "__deepcopy__", None) is not None
            or cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__
            or cls.__getstate__ is not nn.Module.__getstate__ or copyreg._slotnames(cls)):
        return copy.deepcopy(module, memo)
    state = module.__getstate__()
    new = cls.__new__(cls)
    memo[key] = new
    memo.setdefault(id(memo), []).append(module)  # as deepcopy: keep the original alive while memo lives
    copied = {}
    for name, value in state.items():
        kind = type(value)
        if kind in _ATOMIC or (kind is tuple and all(type(v) in _ATOMIC for v in value)):
            copied[name] = value
        elif id(value) in memo:
            copied[name] = memo[id(value)]
        elif name == "_modules" and kind in _EMPTY_HOOKS:
            table = kind()
            memo[id(value)] = table
            for child_name, child in value.items():
                table[child_name] = None if child is None else _module_copy(child, memo)
            copied[name] = table
        elif name in ("_parameters", "_buffers") and kind in _EMPTY_HOOKS and all(
                t is None or id(t) in memo for t in value.values()):
            table = kind((k, None if t is None else memo[id(t)]) for k, t in value.items())
            memo[id(value)] = table
            copied[name] = table
        elif kind in _EMPTY_HOOKS and not value:
            copied[name] = memo[id(value)] = kind()
        elif kind is set and all(type(v) in _ATOMIC for v in value):
            copied[name] = memo[id(value)] = set(value)
        else:
            copied[name] = copy.deepcopy(value, memo)
    new.__setstate__(copied)
    return new


def kept_rows_unused(config, source: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the exact plan never reads the kept channels' cost rows.

    With the kept channels as targets and an exact solver, each kept channel keeps ``min(a_i, b_j)``
    of its own mass in place (:func:`transport_plan`); when ``a_i <= b_j`` for every kept channel
    (uniform masses: ``1/n <= 1/k``) nothing of it is left to move, so its row is never used.
    """
    return (config.p >= 1 and config.target == "most_important" and config.solver == "emd"
            and config.target_mass != "free" and source.numel() > 0
            and float(source.max()) <= float(target.min()) * (1 - 1e-12))


class LazyCost:
    """A cost matrix whose kept channels' rows are computed on first use.

    Parameters
    ----------
    partial : Tensor, shape (n, k)
        float64; the dropped channels' rows are final, the kept channels' rows zero.
    targets : Tensor, shape (k, d)
        The unit-normalised kept channel vectors (the kept-vs-kept block is their pairwise L1 distance).
    kept : Tensor, shape (k,)

    After the plan is solved, :meth:`compact` keeps only the dropped rows of ``partial`` (the kept
    rows are zero until :meth:`full` computes them), which is what a record holds until it is read.
    """

    __slots__ = ("partial", "targets", "kept", "n")

    def __init__(self, partial: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor):
        self.partial, self.targets, self.kept, self.n = partial, targets, kept, None

    def compact(self) -> "LazyCost":
        """Hold the dropped rows of ``partial`` only (``n - k`` of its ``n`` rows); :meth:`full` puts them back."""
        if self.targets is not None and self.n is None:
            self.n = len(self.partial)
            self.partial = self.partial.index_select(0, self._dropped())
        return self

    def _dropped(self) -> torch.Tensor:
        dropped = torch.ones(self.n, dtype=torch.bool)
        dropped[self.kept] = False
        return torch.nonzero(dropped).flatten()

    def full(self) -> torch.Tensor:
        """The whole (n, k) cost, equal bit for bit to :func:`cost_matrix`'s."""
        from ..plan._l1 import l1_distances

        cost = self.partial
        if self.targets is None:  # already completed
            return cost
        if self.n is not None:  # compacted: the dropped rows back in place, the kept rows zero
            cost = torch.zeros(self.n, len(self.kept), dtype=self.partial.dtype)
            cost.index_copy_(0, self._dropped(), self.partial)
            self.partial, self.n = cost, None
        cost[self.kept] = l1_distances(self.targets)
        cost[self.kept, torch.arange(len(self.kept))] = 0.0
        self.targets = None
        return cost

    def __getstate__(self):
        return {"partial": self.partial, "targets": self.targets, "kept": self.kept, "n": self.n}

    def __setstate__(self, state):
        self.n = None  # (states pickled before compact() existed have no "n")
        for name, value in state.items():
            setattr(self, name, value)


def dropped_rows_cost(features: torch.Tensor, kept: torch.Tensor, config, inplace: bool = False) -> LazyCost:
    """:func:`cost_matrix` at ``p = 1`` onto the kept channels with only the dropped rows computed.

    ``inplace=True``: ``features`` (a float CPU tensor that nobody reads afterwards) is unit-normalised
    in place and the dropped rows are read where they are, without a copy of them.

    Returns
    -------
    LazyCost
        ``.partial`` is what the plan reads; ``.full()`` gives :func:`cost_matrix`'s result exactly.
    """
    from ..plan._l1 import l1_distances

    x = features.detach().cpu()
    if not x.is_floating_point():
        x = x.double()
    # _unit_rows, row by row where the rows are needed: the same divisions, one pass fewer over x
    norms = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    kept = torch.as_tensor(kept, dtype=torch.long)
    dropped = torch.ones(len(x), dtype=torch.bool)
    dropped[kept] = False
    dropped = torch.nonzero(dropped).flatten()
    if inplace and x.data_ptr() == features.data_ptr() and x.is_contiguous():
        x.div_(norms)  # the same divisions, every row in place
        targets = x.index_select(0, kept)
        cost = torch.zeros(len(x), len(kept), dtype=torch.float64)
        cost.index_copy_(0, dropped, l1_distances(x, targets, rows=dropped))
        return LazyCost(cost, targets, kept)
    targets = x.index_select(0, kept).div_(norms.index_select(0, kept))
    sources = x.index_select(0, dropped).div_(norms.index_select(0, dropped))
    cost = torch.zeros(len(x), len(kept), dtype=torch.float64)
    cost.index_copy_(0, dropped, l1_distances(sources, targets))
    return LazyCost(cost, targets, kept)


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

    from ._surgery import folded_weights_as
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

    from ._surgery import _slots
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


# ----------------------------------------------------------------------------------------------
# Direct surgery: the pruned copy built from the caller's tensors, without cloning what is replaced

DIRECT_SURGERY = True  # tests switch it off to compare with the general path

_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_HANDLERS = {("out", True): "prune_conv_out_channels", ("in", True): "prune_conv_in_channels",
             ("out", False): "prune_linear_out_channels", ("in", False): "prune_linear_in_channels"}


def direct_surgery_replaces(model: nn.Module, groups, plans, fold: bool) -> Optional[Dict[int, nn.Parameter]]:
    """Whether :func:`direct_surgery` applies, and the caller's Parameters it replaces (by id).

    It applies to plain layers only (conv without groups or transposition, linear, BatchNorm with
    running statistics), each holding all of its channels in one group in order, no module in two
    groups, no Parameter shared between modules, and every BatchNorm folded into a producer of its
    own group.  Everything else takes the general path (copy, then merge in place).

    Returns
    -------
    dict or None
        ``{id(parameter): parameter}`` of the conv/linear weights and biases the surgery computes
        anew (a copy of them would be overwritten), or ``None`` where it does not apply.
    """
    if not DIRECT_SURGERY or not plans:
        return None
    from ._surgery import _slots

    modules = dict(model.named_modules())
    seen, replaced, users = set(), {}, {}
    for i, *_ in plans:
        g = groups[i]
        producers = {m.name for m in g.members if m.role == "out"}
        for m in g.members:
            module = modules.get(m.name)
            if m.name in seen or module is None or m.layer_type == "Parameter":
                return None
            seen.add(m.name)
            if m.role in ("out", "in"):
                conv = isinstance(module, nn.modules.conv._ConvNd)
                if (type(module) not in _CONV_LINEAR or m.handler_name != _HANDLERS[(m.role, conv)]
                        or m.dim != (0 if m.role == "out" else 1)
                        or (conv and (module.groups != 1 or module.transposed))
                        or module.weight.shape[m.dim] != len(m.local_idxs)):
                    return None
                tensors = [module.weight] + ([module.bias] if m.role == "out" and module.bias is not None else [])
                if any(type(t) is not nn.Parameter for t in tensors):
                    return None
                replaced.update((id(t), t) for t in tensors)
            elif m.role == "norm":
                if (type(module) not in _BATCHNORMS or not module.track_running_stats or m.dim != 0
                        or module.running_mean is None or module.num_features != g.size
                        or (fold and m.fold_from not in producers)):
                    return None
            else:
                return None
            slots = _slots(m, g.size)  # channel c holds positions c*w, ..., c*w + w - 1 (w > 1: a flatten)
            if ((slots.shape[1] != 1 and m.role != "in")
                    or not bool((slots.flatten() == torch.arange(slots.numel())).all())):
                return None
    for name, module in model.named_modules(remove_duplicate=False):  # no tied Parameters
        for _, p in module.named_parameters(recurse=False):
            users.setdefault(id(p), set()).add(name)
    if any(len(users.get(key, ())) > 1 for key in replaced) or any(
            len(users.get(id(p), ())) > 1 for name in seen for p in modules[name].parameters(recurse=False)):
        return None
    return replaced


def _merged_rows(src: torch.Tensor, merge: torch.Tensor) -> torch.Tensor:
    """``merge.T @ src`` as :func:`intrafusion_viz.merge._surgery._merge_tensor` computes it (same kernel)."""
    merge_t = merge.T.to(src.device, src.dtype)
    if (merge_t != 0).sum() < 0.1 * merge_t.numel():
        merge_t = merge_t.to_sparse()
    return merge_t @ src


@torch.no_grad()
def direct_surgery(model: nn.Module, groups, plans, fold: bool, replaced: Dict[int, nn.Parameter]) -> nn.Module:
    """The pruned copy of ``model`` that ``private_copy`` + fold + ``apply_merge`` + restore give, bit for bit.

    Every tensor that the surgery leaves alone is cloned (:func:`private_copy`); the weights it
    changes are computed straight from the caller's (BatchNorm-folded where the general path folds
    them) into their pruned shape, so they are neither cloned, folded in place, merged in place nor
    cut by Torch-Pruning afterwards.  The arithmetic is the general path's: the same fold (the
    memo), the same merge product on the same values; BatchNorms (small) take the general path's
    own functions.  ``model`` is read only.

    Parameters
    ----------
    groups : list of Group
        Bound to ``model``.
    plans : list of (index, kept, MergeMaps)
        One group's dense maps are built when that group is reached (none for a known selection).
    replaced : dict
        From :func:`direct_surgery_replaces`.
    """
    from ._surgery import (IndexTracker, _batchnorm_state, _handler, _is_selection, _merge_tensor,
                          folded_weights_as, restore_folded_batchnorms)

    work = private_copy(model, skip=replaced)
    originals, copies = dict(model.named_modules()), dict(work.named_modules())
    for i, kept, maps in plans:
        g = groups[i]
        n = g.size
        kept = torch.as_tensor(kept, dtype=torch.long).cpu()
        k = len(kept)
        if maps.selection:  # index operations only; the BatchNorm map is built if a fold needs it
            out_map = in_map = norm_map = None
            selection = True
        else:
            out_map, in_map, norm_map = maps.build()
            selection = _is_selection(out_map, kept) and _is_selection(in_map, kept)
        dropped = torch.ones(n, dtype=torch.bool)
        dropped[kept] = False
        remove = torch.nonzero(dropped).flatten().tolist()
        slots = torch.arange(n).view(n, 1)
        tracker, folded = IndexTracker(), {}
        norms = {m.fold_from: m.name for m in g.members if m.role == "norm" and fold}
        for m in g.members:
            src, dst = originals[m.name], copies[m.name]
            if m.role == "norm":
                if fold:  # the identity it becomes when folded (as _fold_pair leaves it)
                    folded[m.name] = _batchnorm_state(src)
                    dst.running_mean.zero_()
                    dst.running_var.fill_(1.0 - dst.eps)
                    if dst.affine:
                        dst.weight.fill_(1.0)
                        dst.bias.zero_()
                if not selection:
                    for attr in ("weight", "bias", "running_mean", "running_var"):
                        t = getattr(dst, attr, None)
                        if torch.is_tensor(t):
                            _merge_tensor(t, 0, slots, slots[kept], norm_map)
                _handler(m.handler_name)(dst, remove)
            elif m.role == "out":
                weight = src.weight.detach()
                bias = None if src.bias is None else src.bias.detach()
                if m.name in norms:
                    weight, bias = folded_weights_as(src, originals[norms[m.name]])
                    bias = bias.to(weight.device, weight.dtype)
                rows = weight.reshape(n, -1).contiguous()  # the layout matters to a dense product's sums
                new = rows.index_select(0, kept.to(rows.device)) if selection else _merged_rows(rows, out_map)
                dst.weight = nn.Parameter(new.reshape((k,) + tuple(weight.shape[1:])))
                if bias is not None:
                    b = bias.reshape(n, 1).contiguous()
                    b = b.index_select(0, kept.to(b.device)) if selection else _merged_rows(b, out_map)
                    dst.bias = nn.Parameter(b.reshape(k))
                if isinstance(dst, nn.Linear):
                    dst.out_features = k
                else:
                    dst.out_channels = k
            else:  # "in": columns, w consecutive ones per channel
                weight = src.weight.detach()
                w = len(m.local_idxs) // n
                columns = weight.movedim(1, 0)
                if selection:
                    keep = (kept.view(k, 1) * w + torch.arange(w)).flatten()
                    new = columns.index_select(0, keep.to(weight.device))
                else:
                    new = _merged_rows(columns.reshape(n, -1).contiguous(), in_map)
                    new = new.reshape((k * w,) + tuple(columns.shape[1:]))
                dst.weight = nn.Parameter(new.movedim(0, 1).contiguous())
                if isinstance(dst, nn.Linear):
                    dst.in_features = k * w
                else:
                    dst.in_channels = k * w
                positions = torch.tensor(remove).view(-1, 1) * w + torch.arange(w)
                tracker.remove(m.name, m.dim, n * w, positions.flatten().tolist())
                continue
            tracker.remove(m.name, m.dim, n, remove)
        if folded:
            restore_folded_batchnorms(work, g, kept, maps.norm_map() if norm_map is None else norm_map, folded,
                                      tracker)
        out_map = in_map = norm_map = None  # this group's maps go before the next group's are built
    return work
