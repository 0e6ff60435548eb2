"""Model surgery: fold BatchNorm, read a group's channel vectors, merge channels and remove the rest.

Default pruning and Intra-Fusion take the same path here: default pruning is the merge with a 0/1
selection map.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..groups._trace import Group, Member, UnsupportedLayerError, _trace
from ..groups._trace import _handler
from ..groups._layer_rules import merge_problem
from ._memo import exact_scale, memo_lookup, memo_store

__all__ = ["fold_batchnorm", "folded_weights", "channel_features", "fold_group_batchnorms", "check_tied_weights",
           "restore_folded_batchnorms", "apply_merge", "IndexTracker"]

_PRODUCERS = ("out", "depthwise")  # roles whose rows (weight along dim, bias) are a channel's own


def _modules(model: nn.Module) -> Dict[str, nn.Module]:
    return dict(model.named_modules())


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
def _fold_pair(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm, bn_eps: str = "exact") -> torch.Tensor:
    """Fold ``bn`` into ``layer`` exactly (eps included) and leave ``bn`` as the identity in eval mode.

    ``bn_eps="authors"``: fold as the paper's code does, without eps, and leave ``bn`` with variance 1
    (so it still divides by ``sqrt(1 + eps)``).  Returns ``bn``'s state before folding (see
    :func:`_batchnorm_state`).
    """
    state = _batchnorm_state(bn)
    weight, bias = folded_weights_as(layer, bn, bn_eps)
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


def _fold_members(model: nn.Module, members: Iterable[Member], bn_eps: str = "exact") -> Dict[str, torch.Tensor]:
    modules = _modules(model)
    folded = {}
    for m in members:
        if m.role == "norm" and m.fold_from is not None:
            folded[m.name] = _fold_pair(modules[m.fold_from], modules[m.name], bn_eps)
    return folded


def fold_group_batchnorms(model: nn.Module, group: Group) -> Dict[str, torch.Tensor]:
    """Fold every foldable BatchNorm of ``group`` into its producer, in place.

    Returns
    -------
    dict
        BatchNorm name -> its state before folding, shape (4, C) float64 (gamma, beta, running mean,
        running variance), for :func:`restore_folded_batchnorms`.
    """
    return _fold_members(model, group.members)


@torch.no_grad()
def restore_folded_batchnorms(model: nn.Module, group: Group, kept: torch.Tensor, norm_map: torch.Tensor,
                              folded: Dict[str, torch.Tensor], tracker: "IndexTracker") -> None:
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

    modules = _modules(model)
    kept = torch.as_tensor(kept, dtype=torch.long).cpu()
    n, k = group.size, len(kept)
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
        bn_pos = tracker.current(m.name, m.dim, bn_slots[kept].tolist())[ok]
        p_slots = _slots(producer, n)[kept]  # (k, positions per channel)
        rows = tracker.current(producer.name, producer.dim, p_slots.flatten().tolist()).view_as(p_slots)[ok]
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
    modules, new_modules = _modules(model), _modules(copied)
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


class IndexTracker:
    """Current position of every original channel index of (module, dim) as dimensions shrink."""

    def __init__(self):
        self._alive: Dict[Tuple[str, int], torch.Tensor] = {}

    def current(self, name: str, dim: int, idxs: Iterable[int]) -> torch.Tensor:
        alive = self._alive.get((name, dim))
        idxs = torch.as_tensor(list(idxs), dtype=torch.long)
        if alive is None:
            return idxs
        pos = torch.cumsum(alive.long(), 0) - 1
        if not bool(alive[idxs].all()):
            raise RuntimeError(f"channels of {name} were removed twice; groups overlap unexpectedly")
        return pos[idxs]

    def remove(self, name: str, dim: int, size: int, idxs: Iterable[int]) -> None:
        alive = self._alive.setdefault((name, dim), torch.ones(size, dtype=torch.bool))
        alive[torch.as_tensor(list(idxs), dtype=torch.long)] = False


def _slots(member: Member, n: int) -> torch.Tensor:
    """Local positions of the group's channels as an (n, m) table: row r holds channel r's positions."""
    local = torch.as_tensor(member.local_idxs, dtype=torch.long)
    root = torch.as_tensor(member.root_idxs, dtype=torch.long)
    order = torch.argsort(root * (local.max() + 1 if len(local) else 1) + local)
    local, root = local[order], root[order]
    counts = torch.bincount(root, minlength=n)
    if len(counts) != n or not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        raise UnsupportedLayerError(
            f"layer {member.name!r} ({member.layer_type}) maps the group's channels unevenly; "
            "it cannot be merged. Use method='default' or leave this group out (groups=[...])")
    return local.view(n, -1)


def _merge_tensor(t: torch.Tensor, dim: int, slots: torch.Tensor, kept_slots: torch.Tensor,
                  merge: torch.Tensor) -> None:
    """t[..., kept slot j, ...] = sum_i merge[i, j] * t[..., slot i, ...] along ``dim``, in place."""
    n, m = slots.shape
    moved = t.data.movedim(dim, 0)
    idx = slots.flatten()
    if dim == 0 and t.is_contiguous() and len(idx) == len(moved) and bool((idx == torch.arange(len(idx))).all()):
        src = moved.reshape(n, m * moved[0].numel())  # every row in order: read in place (new is a new tensor)
    else:  # index_select / index_copy_: as indexing with a tensor, about twice as fast on strided views
        src = moved.index_select(0, idx.to(t.device)).reshape(n, m * moved[0].numel())
    merge_t = merge.T.to(src.device, src.dtype)
    if (merge_t != 0).sum() < 0.1 * merge_t.numel():
        merge_t = merge_t.to_sparse()  # exact plans are sparse: each channel goes to one or two places
    new = merge_t @ src  # (k, m * rest)
    moved.index_copy_(0, kept_slots.flatten().to(t.device), new.reshape(-1, *moved.shape[1:]))


def _check_mergeable(group: Group, is_selection: bool) -> None:
    problem = getattr(group, "blocked", None) or merge_problem(
        group.members, _modules(group.model), group.size, selection=is_selection, index=group.index, name=group.name)
    if problem is not None:
        is_selection = is_selection or getattr(group, "blocked", None) is not None
        what = "prune" if is_selection else "merge"
        advice = ("leave this group out with groups=[...]" if is_selection else
                  "use method='default' or leave this group out with groups=[...]")
        raise UnsupportedLayerError(f"{problem}; this toolkit cannot {what} it: {advice}")


def _prune_parameter(model: nn.Module, name: str, dim: int, remove: List[int]) -> None:
    """Remove positions ``remove`` along ``dim`` of the bare Parameter ``name`` (a new Parameter, set on its owner)."""
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    param = getattr(owner, attr)
    keep = torch.ones(param.shape[dim], dtype=torch.bool)
    keep[torch.as_tensor(remove, dtype=torch.long)] = False
    kept = param.data.index_select(dim, keep.nonzero().flatten().to(param.device))
    setattr(owner, attr, nn.Parameter(kept.contiguous(), requires_grad=param.requires_grad))


@torch.no_grad()
def apply_merge(model: nn.Module, group: Group, kept: torch.Tensor, out_map: torch.Tensor,
                in_map: torch.Tensor, norm_map: Optional[torch.Tensor] = None,
                tracker: Optional[IndexTracker] = None, attention: Optional[dict] = None) -> None:
    """Merge a group's channels into the kept ones and remove the others, in place.

    Parameters
    ----------
    model : nn.Module
        The model ``group`` describes (same structure); modified in place.
    group : Group
    kept : Tensor, shape (k,)
        Kept channel indices, ascending; they take the merged values, in this order.
    out_map : Tensor, shape (n, k)
        Applied to producer rows and biases: ``new_row[j] = sum_i out_map[i, j] * row[i]``.
    in_map : Tensor, shape (n, k)
        Applied to consumer columns: ``new_col[j] = sum_i in_map[i, j] * col[i]``.
    norm_map : Tensor, shape (n, k), optional
        Applied to BatchNorm parameters and statistics that were not folded (default ``out_map``).
    tracker : IndexTracker, optional
        Shared across groups merged into the same model, for layers shared between groups.
    attention : dict, optional
        ``{name: AttentionPlan}`` for the group's ``nn.MultiheadAttention`` layers (the per-head plans
        of their q/k/v dims, :func:`intrafusion_viz.merge._attention.attention_plan`).  A merge without one
        plans them with ``OTConfig()`` and l1; plain selection without one prunes them as
        Torch-Pruning does (the same indices for the residual and the q/k/v dims).
    """
    n = group.size
    kept = torch.as_tensor(kept, dtype=torch.long).cpu()
    selection = _is_selection(out_map, kept) and _is_selection(in_map, kept)
    _check_mergeable(group, selection)
    norm_map = out_map if norm_map is None else norm_map
    tracker = tracker or IndexTracker()
    modules = _modules(model)
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[kept] = False
    ties = _ties(model, {m.name for m in group.members})
    merged = set()  # (tensor, dim) already merged: a tensor tied between layers is merged once
    for m in group.members:
        module = model.get_parameter(m.name) if m.layer_type == "Parameter" else modules[m.name]
        slots = _slots(m, n)
        size = _dim_size(module, m)
        cur = tracker.current(m.name, m.dim, slots.flatten().tolist()).view_as(slots)
        if isinstance(module, nn.MultiheadAttention) and (not selection or m.name in (attention or {})):
            from ._attention import attention_plan, merge_attention

            plan = (attention or {}).get(m.name) or attention_plan(module, len(kept), name=m.name)
            merge_attention(module, cur[:, 0], out_map, in_map, plan)
            tracker.remove(m.name, m.dim, size, slots[dropped].flatten().tolist())
            continue
        if m.role == "grouped":  # merged and shrunk per conv group (the same map for plain selection)
            _merge_grouped_inputs(module, cur, kept, in_map)
            tracker.remove(m.name, m.dim, size, slots[dropped].flatten().tolist())
            continue
        if not selection:
            if m.role in _PRODUCERS:  # a depthwise kernel is its channel's row
                tensors = [(module.weight, m.dim)] + ([(module.bias, 0)] if module.bias is not None else [])
                merge = out_map
            elif m.role == "in":
                tensors, merge = [(module.weight, m.dim)], in_map
            elif m.role in ("shift", "scale"):  # a bare Parameter: added like a bias, or a scale like a BN weight
                tensors, merge = [(module, m.dim)], (out_map if m.role == "shift" else norm_map)
            else:  # BatchNorm, or the per-channel affine of a LayerNorm / GroupNorm / RMSNorm / PReLU
                tensors = [(getattr(module, a), 0) for a in ("weight", "bias", "running_mean", "running_var")
                           if torch.is_tensor(getattr(module, a, None))]
                merge = norm_map
            for t, d in tensors:
                if (id(t), d) not in merged:
                    _merge_tensor(t, d, cur, cur[kept], merge)
                    merged.add((id(t), d))
        remove_orig = slots[dropped].flatten().tolist()
        remove_cur = cur[dropped].flatten().tolist()
        if remove_cur:
            if m.layer_type == "Parameter":
                _prune_parameter(model, m.name, m.dim, remove_cur)
            elif m.role == "affine":
                _prune_affine(module, sorted(remove_cur), size)
            else:
                _handler(m.handler_name)(module, sorted(remove_cur))
            tracker.remove(m.name, m.dim, size, remove_orig)
    for users in ties:  # pruning gave each user its own new tensor: tie them again (they are equal)
        owners = [(model.get_submodule(name), attr) for name, attr in users]
        first = getattr(*owners[0])
        for owner, attr in owners[1:]:
            if not torch.equal(getattr(owner, attr), first):
                raise RuntimeError(f"tied tensor {'.'.join(users[0])} was merged differently for its users {users}")
            setattr(owner, attr, first)


def _ties(model: nn.Module, names) -> List[List[Tuple[str, str]]]:
    """Parameters of the modules ``names`` that several modules share: one list of (module, attribute) each."""
    users: Dict[int, List[Tuple[str, str]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False):
            users.setdefault(id(p), [])
            if (name, attr) not in users[id(p)]:
                users[id(p)].append((name, attr))
    return [u for u in users.values()
            if len({n for n, _ in u}) > 1 and any(n in names for n, _ in u)]


def check_tied_weights(model: nn.Module, groups: List[Group], pruned, selection) -> None:
    """Refuse, before anything changes, a tensor shared by layers that pruning would change differently.

    A tensor tied between layers (an embedding and an output head, two layers given one weight) can be
    merged once for all of them only if every user holds it in the same group, along the same dimension,
    at the same positions and in the same role (so the same merge applies); otherwise the merged layers
    would need different tensors and the tie could not be kept.  ``selection``: True when every group
    is pruned by plain selection, False when every group is merged, or the indices of the groups pruned
    by selection.
    """
    pruned = set(pruned)
    by_selection = (lambda index: selection) if isinstance(selection, bool) else (lambda index: index in selection)
    where: Dict[Tuple[str, str], list] = {}
    for g in groups:
        for m in g.members:
            if m.layer_type == "Parameter":
                continue
            module = model.get_submodule(m.name)
            for attr, _ in module.named_parameters(recurse=False):
                dim = m.dim if attr == "weight" else 0
                kind = "selection" if by_selection(g.index) else ("out" if m.role in ("out", "shift") else m.role)
                where.setdefault((m.name, attr), []).append((g.index, dim, kind, m.local_idxs, m.root_idxs))
    for users in _ties(model, {m.name for g in groups for m in g.members}):
        uses = [(u, use) for u in users for use in where.get(u, [])]
        if not any(use[0] in pruned for _, use in uses):
            continue
        if len({use for _, use in uses}) > 1 or len({u for u, _ in uses}) < len(users):
            names = ", ".join(f"{n}.{a}" for n, a in users)
            raise UnsupportedLayerError(
                f"one tensor is tied between layers ({names}) that hold its channels in different groups, "
                f"dimensions or roles, so {'pruning' if selection is True else 'merging'} cannot change it the same "
                "way for each of them without untying it (which would change what the model trains). Untie "
                "it first (give each layer its own copy), or leave the groups that contain these layers out "
                "with groups=[...]")


def _prune_affine(module: nn.Module, remove, size: int) -> None:
    """Drop channels ``remove`` of a LayerNorm / GroupNorm / RMSNorm / InstanceNorm / PReLU, in place."""
    keep = torch.ones(size, dtype=torch.bool)
    keep[torch.as_tensor(remove, dtype=torch.long)] = False
    keep = torch.nonzero(keep).flatten()
    for attr in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(module, attr, None)
        if not torch.is_tensor(t):
            continue
        new = t.data[keep.to(t.device)].clone()
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(new, requires_grad=t.requires_grad)
            if t.grad is not None:
                new.grad = t.grad[keep.to(t.device)].clone()
        setattr(module, attr, new)
    k = len(keep)
    if isinstance(getattr(module, "normalized_shape", None), tuple):
        module.normalized_shape = tuple(module.normalized_shape[:-1]) + (k,)
    for attr in ("num_channels", "num_features"):
        if hasattr(module, attr):
            setattr(module, attr, k)
    if isinstance(module, nn.PReLU):
        module.num_parameters = k


def _merge_grouped_inputs(conv: nn.Module, cur: torch.Tensor, kept: torch.Tensor, in_map: torch.Tensor) -> None:
    """Merge and shrink the input channels of a grouped conv, conv group by conv group, in place.

    The weight is ``(out, in / g, *kernel)``: input channel ``c`` is column ``c % (in / g)`` of the rows
    of conv group ``c // (in / g)``.  ``in_map`` (n, k) is block diagonal (channels merge only inside
    their conv group) and every conv group keeps ``k / g`` channels, so the result is again a conv
    with ``g`` groups.
    """
    g = conv.groups
    n, k = in_map.shape
    order = cur[:, 0]  # current position of each of the group's channels (all of the conv's inputs)
    weight = conv.weight
    out_g = weight.shape[0] // g
    rest = weight.shape[2:]
    merge = in_map.to(weight.device, torch.float64)

    def shrink(t: torch.Tensor) -> torch.Tensor:
        columns = t.reshape(g, out_g, n // g, *rest).movedim(2, 1).reshape(n, -1)  # row c: input c's column
        merged = merge.T @ columns[order.to(t.device)].double()  # (k, out/g * kernel)
        return merged.to(t.dtype).reshape(g, k // g, out_g, *rest).movedim(1, 2).reshape(g * out_g, k // g, *rest)

    new = nn.Parameter(shrink(weight.data), requires_grad=weight.requires_grad)
    if weight.grad is not None:
        new.grad = shrink(weight.grad)
    conv.weight = new
    conv.in_channels = k


def _dim_size(module: nn.Module, m: Member) -> int:
    w = getattr(module, "weight", None)
    if isinstance(module, nn.Parameter):
        return module.shape[m.dim]
    if m.role == "grouped":
        return int(module.in_channels)
    if w is not None:
        return int(w.shape[m.dim]) if m.role in ("out", "in") else int(w.shape[0])
    for attr in ("num_features", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    if hasattr(module, "normalized_shape"):
        return int(module.normalized_shape[-1])
    pruner = getattr(_handler(m.handler_name), "__self__", None)  # e.g. an LSTM: ask Torch-Pruning
    if pruner is not None:
        count = (pruner.get_in_channels if "_in_" in m.handler_name else pruner.get_out_channels)(module)
        if count is not None:
            return int(count)
    return 0


def _is_selection(mat: torch.Tensor, kept: torch.Tensor) -> bool:
    k = len(kept)
    expect = torch.zeros_like(mat)
    expect[kept, torch.arange(k)] = 1.0
    return bool(torch.equal(mat, expect))


@torch.no_grad()
def channel_features(model: nn.Module, group: Group, *, fold: bool = True, bias: bool = True) -> torch.Tensor:
    """One vector per channel: its producer rows and biases and its consumer columns, concatenated.

    Parameters
    ----------
    model : nn.Module
        The model ``group`` describes; read only.
    group : Group
    fold : bool
        Read every conv/linear as if its BatchNorm were folded into it (without changing the model),
        so the vectors describe what each channel computes.
    bias : bool
        Append each producer's (folded) bias; ``False`` gives weight vectors only (the paper's code).

    Returns
    -------
    Tensor, shape (n, d)
        In the model's dtype, on CPU.
    """
    n = group.size
    include_bias = bias
    modules = _modules(model)
    parts = []
    for m in group.members:
        module = modules.get(m.name)
        if isinstance(module, nn.MultiheadAttention) and merge_problem([m], modules, n) is None:
            from ._attention import residual_vectors  # its residual columns and rows, not its q/k/v rows

            parts.append(residual_vectors(module, _slots(m, n)[:, 0], bias=include_bias))
            continue
        if m.role not in ("out", "in", "depthwise", "grouped"):
            continue
        slots = _slots(m, n).flatten()
        weight = module.weight.detach()
        if m.role == "grouped":  # input c of a grouped conv: column c % (in/g) of its conv group's rows
            g = module.groups
            weight = weight.reshape(g, -1, n // g, *weight.shape[2:]).movedim(2, 1).reshape(n, -1)
            parts.append(weight[slots].reshape(n, -1).cpu())
            continue
        bias = module.bias.detach() if module.bias is not None else None
        bn_name = group.fold_pairs.get(m.name) if fold else None
        whole = len(slots) == weight.shape[m.dim] and bool((slots == torch.arange(len(slots))).all())
        if (bn_name is not None and m.role == "in" and whole and len(slots) == n and weight.device.type == "cpu"
                and weight.dtype in (torch.float32, torch.float16, torch.bfloat16)):
            parts.append(_FoldInto(module, modules[bn_name], m.dim, n))  # folded straight into place, below
            continue
        if bn_name is not None:
            weight, bias = folded_weights_as(module, modules[bn_name])
            bias = bias.to(weight.dtype)
        moved = weight.movedim(m.dim, 0)
        if not whole:
            moved = moved.index_select(0, slots.to(weight.device))  # the group holds part of this layer
        parts.append(moved.reshape((n, -1) + tuple(moved.shape[1:])))  # a view: copied once, below
        if m.role in _PRODUCERS and bias is not None and include_bias:
            parts.append(bias[slots].reshape(n, -1))
    if not parts:
        raise UnsupportedLayerError(f"group {group.index} ({group.name!r}) has no conv/linear layer to compare channels by")
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    widths = [part.width if isinstance(part, _FoldInto) else part[0].numel() for part in parts]
    out = torch.empty(n, sum(widths), dtype=dtype)
    start = 0
    for part, width in zip(parts, widths):  # one strided copy per layer, straight into place
        if isinstance(part, _FoldInto):
            part.write(out[:, start:start + width])
        else:
            out[:, start:start + width].view(part.shape).copy_(part)
        start += width
    return out


class _FoldInto:
    """A consumer's BatchNorm-folded columns, written into the vectors without a folded copy first.

    The same numbers as :func:`folded_weights_as` (the same per-row float64 factor applied by
    :func:`exact_scale`), written through a view of the destination laid out like the weight.
    """

    def __init__(self, layer: nn.Module, bn: nn.Module, dim: int, n: int):
        self.layer, self.bn, self.dim = layer, bn, dim
        weight = layer.weight
        self.dtype = weight.dtype
        self.width = weight.numel() // n  # the columns of one channel
        self._moved_shape = tuple(weight.movedim(dim, 0).shape)

    def write(self, dest: torch.Tensor) -> None:

        if dest.dtype != self.dtype:  # another layer's dtype wins: round to ours first, as a folded copy does
            folded = folded_weights_as(self.layer, self.bn)[0].movedim(self.dim, 0)
            dest.view(self._moved_shape).copy_(folded)
            return
        weight = self.layer.weight.detach()
        transposed = getattr(self.layer, "transposed", False)
        shape = [1] * weight.dim()
        shape[1 if transposed else 0] = weight.shape[1 if transposed else 0]
        factor, _ = _fold_formula(self.layer, torch.ones(shape, dtype=torch.float64), self.bn, "exact")
        exact_scale(weight, factor, out=dest.view(self._moved_shape).movedim(0, self.dim))
