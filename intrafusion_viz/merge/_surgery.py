"""Model surgery: merge a group's channels into the kept ones along a plan and remove the rest.

One implementation for every caller (Intra-Fusion, Model Folding, default pruning, a whole model or
one group): default pruning is the merge with a 0/1 selection map.  Plain layers (conv without
groups, linear, BatchNorm) are given new tensors computed from their current ones in the pruned shape
(``new = merge.T @ rows``, one read and one write), so a work copy may share those tensors with the
caller's model until the surgery replaces them (:func:`shared_tensors`,
:func:`intrafusion_viz.merge._copy.private_copy`).  Every other member (grouped and depthwise convs,
attention, norms of other kinds, bare Parameters, layers only Torch-Pruning knows) is merged in place
and cut by its Torch-Pruning handler.  Each group's maps are transposed, cast and made sparse once.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..groups._layer_rules import merge_problem
from ..groups._trace import Group, Member, UnsupportedLayerError, _handler
# re-exported: the surgery's neighbours, imported from here by the stages above
from ._features import channel_features
from ._fold import (fold_batchnorm, fold_group_batchnorms, folded_copy_of_groups, folded_weights,
                    folded_weights_as, restore_folded_batchnorms)
from ._positions import IndexTracker, _slots

__all__ = ["apply_merge", "check_tied_weights", "shared_tensors", "replaceable", "IndexTracker", "channel_features",
           "fold_batchnorm", "fold_group_batchnorms", "folded_copy_of_groups", "folded_weights", "folded_weights_as",
           "restore_folded_batchnorms"]

_PRODUCERS = ("out", "depthwise")  # roles whose rows (weight along dim, bias) are a channel's own
_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_HANDLERS = {("out", True): "prune_conv_out_channels", ("in", True): "prune_conv_in_channels",
             ("out", False): "prune_linear_out_channels", ("in", False): "prune_linear_in_channels"}


def _modules(model: nn.Module) -> Dict[str, nn.Module]:
    return dict(model.named_modules())


class _Maps:
    """One group's merge maps, each transposed and cast once per dtype and device.

    Exact plans are sparse (each channel goes to one or two places): a map with at most a tenth of
    its entries nonzero (after the cast) becomes a sparse matrix.
    """

    def __init__(self, out_map: Optional[torch.Tensor], in_map: Optional[torch.Tensor],
                 norm_map: Optional[torch.Tensor], n: int, kept: torch.Tensor, pattern=None):
        self.maps = {"out": out_map, "in": in_map, "norm": norm_map}
        self.n, self.kept = n, kept
        self._cache: Dict[tuple, torch.Tensor] = {}
        self._pattern = None
        if pattern is not None:  # the (k, n) positions of every nonzero of out_map.T and in_map.T, in COO order
            rows, cols = (torch.as_tensor(t, dtype=torch.long) for t in pattern)
            order = torch.argsort(cols * n + rows)
            self._pattern = torch.stack([cols[order], rows[order]])

    def dense(self, which: str) -> torch.Tensor:
        """The ``(n, k)`` map (the selection of ``kept`` where none was given)."""
        if self.maps[which] is None:
            selection = torch.zeros(self.n, len(self.kept), dtype=torch.float64)
            selection[self.kept, torch.arange(len(self.kept))] = 1.0
            self.maps = {key: selection if value is None else value for key, value in self.maps.items()}
        return self.maps[which]

    def transposed(self, which: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``map.T`` as a ``(k, n)`` matrix in ``dtype`` on ``device``, sparse where that pays."""
        merge = self.dense(which)
        key = (id(merge), dtype, device)
        if key not in self._cache:
            known = self._pattern is not None and (merge is self.maps["out"] or merge is self.maps["in"])
            if known and self._pattern.shape[1] < 0.1 * merge.numel():
                # what to_sparse() gives, read at the plan's nonzeros instead of found by a scan
                index = self._pattern
                values = merge.T[index[0], index[1]].to(device, dtype)
                merge_t = torch.sparse_coo_tensor(index.to(device), values, (merge.shape[1], merge.shape[0]),
                                                  is_coalesced=True, check_invariants=False)
            else:
                merge_t = merge.T.to(device, dtype)
                if (merge_t != 0).sum() < 0.1 * merge_t.numel():
                    merge_t = merge_t.to_sparse()
            self._cache[key] = merge_t
        return self._cache[key]


def replaceable(module, member: Member) -> bool:
    """Whether the surgery gives ``member``'s layer new tensors instead of writing into its own.

    Plain layers in their standard role: a conv without groups or transposition or a linear layer
    (rows for ``"out"``, columns for ``"in"``) and a BatchNorm with running statistics (``"norm"``).
    """
    if member.layer_type == "Parameter" or not isinstance(module, nn.Module):
        return False
    if member.role in ("out", "in"):
        conv = isinstance(module, nn.modules.conv._ConvNd)
        return (type(module) in _CONV_LINEAR and member.handler_name == _HANDLERS[(member.role, conv)]
                and member.dim == (0 if member.role == "out" else 1)
                and not (conv and (module.groups != 1 or module.transposed)))
    return (member.role == "norm" and type(module) in _BATCHNORMS and module.track_running_stats
            and module.running_mean is not None and member.dim == 0
            and member.handler_name in ("prune_batchnorm_out_channels", "prune_batchnorm_in_channels"))


def _replaced_attributes(member: Member) -> Tuple[str, ...]:
    if member.role == "out":
        return ("weight", "bias")
    if member.role == "in":
        return ("weight",)
    return ("weight", "bias", "running_mean", "running_var")


def shared_tensors(model: nn.Module, groups: List[Group], indices: Iterable[int],
                   fold: bool = False) -> Dict[int, torch.Tensor]:
    """The tensors of ``model`` that merging groups ``indices`` replaces without ever writing into them.

    A work copy may share these with ``model`` (:func:`intrafusion_viz.merge._copy.private_copy`):
    the tensors of layers that are :func:`replaceable` in every one of those groups and hold no
    Parameter tied to another layer.  ``fold``: BatchNorms are folded first (which replaces the
    producer's weight and bias and the BatchNorm's tensors too).

    Returns
    -------
    dict
        ``{id(tensor): tensor}``.
    """
    modules = _modules(model)
    verdict: Dict[str, bool] = {}
    attributes: Dict[str, set] = {}
    for i in indices:
        for m in groups[i].members:
            module = modules.get(m.name) if m.layer_type != "Parameter" else None
            verdict[m.name] = verdict.get(m.name, True) and replaceable(module, m)
            attributes.setdefault(m.name, set()).update(_replaced_attributes(m))
    users: Dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            users[id(p)] = users.get(id(p), 0) + 1
    shared = {}
    for name, ok in verdict.items():
        module = modules.get(name)
        if not ok or module is None or any(users.get(id(p), 0) > 1 for p in module.parameters(recurse=False)):
            continue
        for attr in attributes[name]:
            t = getattr(module, attr, None)
            if torch.is_tensor(t):
                shared[id(t)] = t
    return shared


def _merged_cut(t: torch.Tensor, dim: int, cur: torch.Tensor, kept: torch.Tensor, keep: torch.Tensor,
                merge_t: Optional[torch.Tensor]) -> torch.Tensor:
    """A new tensor: ``t`` along ``dim`` with the kept channels' positions merged and the dropped ones gone.

    ``cur``: (n, w) current positions of the group's channels; ``keep``: the positions that stay,
    ascending; ``merge_t``: the (k, n) transposed map, or ``None`` for a selection (a cut only).
    """
    moved = t.detach().movedim(dim, 0)
    if merge_t is None:
        new = moved.index_select(0, keep.to(t.device))
    else:
        n, w = cur.shape
        flat = cur.flatten()
        whole = len(flat) == len(moved) and bool((flat == torch.arange(len(flat))).all())
        if whole and dim == 0 and moved.is_contiguous():
            src = moved.reshape(n, -1)  # every row in order: read in place
        else:
            src = moved.index_select(0, flat.to(t.device)).reshape(n, -1)
        merged = (merge_t @ src).reshape((-1,) + tuple(moved.shape[1:]))  # (k * w, ...)
        if whole:
            new = merged
        else:  # the layer holds other channels too: they stay as they are
            new = moved.index_select(0, keep.to(t.device))
            where = torch.searchsorted(keep, cur[kept].flatten())
            new.index_copy_(0, where.to(t.device), merged)
    return new if dim == 0 else new.movedim(0, dim).contiguous()


def _replace_member(module: nn.Module, m: Member, cur: torch.Tensor, kept: torch.Tensor, dropped: torch.Tensor,
                    maps: _Maps, selection: bool) -> None:
    """Merge and cut a :func:`replaceable` member by giving its layer new tensors (and new sizes)."""
    size = module.weight.shape[m.dim] if m.role != "norm" else module.running_mean.shape[0]
    alive = torch.ones(size, dtype=torch.bool)
    alive[cur[dropped].flatten()] = False
    keep = torch.nonzero(alive).flatten()
    which = {"out": "out", "in": "in"}.get(m.role, "norm")
    for attr in _replaced_attributes(m):
        t = getattr(module, attr, None)
        if not torch.is_tensor(t):
            continue
        dim = m.dim if attr == "weight" else 0
        merge_t = None if selection else maps.transposed(which, t.dtype, t.device)
        new = _merged_cut(t, dim, cur, kept, keep, merge_t)
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(new, requires_grad=t.requires_grad)
            if t.grad is not None:  # as Torch-Pruning cuts it
                new.grad = t.grad.index_select(dim, keep.to(t.device))
        setattr(module, attr, new)
    if m.role == "norm":
        module.num_features = module.running_mean.shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    else:
        module.out_channels, module.in_channels = module.weight.shape[:2]


def _merge_tensor(t: torch.Tensor, dim: int, slots: torch.Tensor, kept_slots: torch.Tensor,
                  merge_t: torch.Tensor) -> None:
    """t[..., kept slot j, ...] = sum_i merge[i, j] * t[..., slot i, ...] along ``dim``, in place.

    ``merge_t``: the transposed map, shape (k, n) (:meth:`_Maps.transposed`).
    """
    n, m = slots.shape
    moved = t.data.movedim(dim, 0)
    idx = slots.flatten()
    if dim == 0 and t.is_contiguous() and len(idx) == len(moved) and bool((idx == torch.arange(len(idx))).all()):
        src = moved.reshape(n, m * moved[0].numel())  # every row in order: read in place (new is a new tensor)
    else:  # index_select / index_copy_: as indexing with a tensor, about twice as fast on strided views
        src = moved.index_select(0, idx.to(t.device)).reshape(n, m * moved[0].numel())
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
def apply_merge(model: nn.Module, group: Group, kept: torch.Tensor, out_map: Optional[torch.Tensor],
                in_map: Optional[torch.Tensor], norm_map: Optional[torch.Tensor] = None,
                tracker: Optional[IndexTracker] = None, attention: Optional[dict] = None,
                pattern: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
    """Merge a group's channels into the kept ones and remove the others, in place.

    Parameters
    ----------
    model : nn.Module
        The model ``group`` describes (same structure); modified in place.
    group : Group
    kept : Tensor, shape (k,)
        Kept channel indices, ascending; they take the merged values, in this order.
    out_map : Tensor, shape (n, k), or None
        Applied to producer rows and biases: ``new_row[j] = sum_i out_map[i, j] * row[i]``.
    in_map : Tensor, shape (n, k), or None
        Applied to consumer columns: ``new_col[j] = sum_i in_map[i, j] * col[i]``.  ``out_map`` and
        ``in_map`` both ``None``: plain selection of ``kept`` (default pruning), without dense maps.
    norm_map : Tensor, shape (n, k), optional
        Applied to BatchNorm parameters and statistics that were not folded (default ``out_map``).
    tracker : IndexTracker, optional
        Shared across groups merged into the same model, for layers shared between groups.
    attention : dict, optional
        ``{name: AttentionPlan}`` for the group's ``nn.MultiheadAttention`` layers (the per-head plans
        of their q/k/v dims, :func:`intrafusion_viz.merge._attention.attention_plan`).  A merge without one
        plans them with ``OTConfig()`` and l1; plain selection without one prunes them as
        Torch-Pruning does (the same indices for the residual and the q/k/v dims).
    pattern : (Tensor, Tensor), optional
        ``(rows, cols)``, shape (nnz,) each: where the plan ``out_map`` and ``in_map`` were derived from
        is nonzero (both maps are zero everywhere else), so their sparse forms are read there
        instead of found by scanning every entry.

    Plain layers get new tensors (:func:`replaceable`): the ``model``'s old ones are only read.
    """
    n = group.size
    kept = torch.as_tensor(kept, dtype=torch.long).cpu()
    if (out_map is None) != (in_map is None):
        raise ValueError("give both out_map and in_map, or neither (plain selection of kept)")
    selection = out_map is None or (_is_selection(out_map, kept) and _is_selection(in_map, kept))
    _check_mergeable(group, selection)
    maps = _Maps(out_map, in_map, out_map if norm_map is None else norm_map, n, kept, pattern)
    tracker = tracker or IndexTracker()
    modules = _modules(model)
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[kept] = False
    if "ties" not in tracker.cache:  # the model's ties, found once (the surgery keeps them tied)
        tracker.cache["ties"] = _ties(model)
    names = {m.name for m in group.members}
    ties = [users for users in tracker.cache["ties"] if any(name in names for name, _ in users)]
    tied = {name for users in ties for name, _ in users}
    merged = set()  # (tensor, dim) already merged: a tensor tied between layers is merged once
    for m in group.members:
        module = model.get_parameter(m.name) if m.layer_type == "Parameter" else modules[m.name]
        slots = _slots(m, n)
        size = _dim_size(module, m)
        cur = tracker.current(m.name, m.dim, slots.flatten()).view_as(slots)
        if m.name not in tied and replaceable(module, m):
            _replace_member(module, m, cur, kept, dropped, maps, selection)
        else:
            _merge_in_place(model, module, m, cur, kept, dropped, size, maps, selection, attention, merged)
        tracker.remove(m.name, m.dim, size, slots[dropped].flatten())
    for users in ties:  # pruning gave each user its own new tensor: tie them again (they are equal)
        owners = [(model.get_submodule(name), attr) for name, attr in users]
        first = getattr(*owners[0])
        for owner, attr in owners[1:]:
            if not torch.equal(getattr(owner, attr), first):
                raise RuntimeError(f"tied tensor {'.'.join(users[0])} was merged differently for its users {users}")
            setattr(owner, attr, first)


def _merge_in_place(model: nn.Module, module, m: Member, cur: torch.Tensor, kept: torch.Tensor,
                    dropped: torch.Tensor, size: int, maps: _Maps, selection: bool, attention: Optional[dict],
                    merged: set) -> None:
    """Merge a member that is not :func:`replaceable` into its own tensors, then cut it (its handler)."""
    if isinstance(module, nn.MultiheadAttention) and (not selection or m.name in (attention or {})):
        from ._attention import attention_plan, merge_attention

        plan = (attention or {}).get(m.name) or attention_plan(module, len(kept), name=m.name)
        merge_attention(module, cur[:, 0], maps.dense("out"), maps.dense("in"), plan)
        return
    if m.role == "grouped":  # merged and shrunk per conv group (the same map for plain selection)
        _merge_grouped_inputs(module, cur, kept, maps.dense("in"))
        return
    if not selection:
        if m.role in _PRODUCERS:  # a depthwise kernel is its channel's row
            tensors = [(module.weight, m.dim)] + ([(module.bias, 0)] if module.bias is not None else [])
            which = "out"
        elif m.role == "in":
            tensors, which = [(module.weight, m.dim)], "in"
        elif m.role in ("shift", "scale"):  # a bare Parameter: added like a bias, or a scale like a BN weight
            tensors, which = [(module, m.dim)], ("out" if m.role == "shift" else "norm")
        else:  # BatchNorm, or the per-channel affine of a LayerNorm / GroupNorm / RMSNorm / PReLU
            tensors = [(getattr(module, a), 0) for a in ("weight", "bias", "running_mean", "running_var")
                       if torch.is_tensor(getattr(module, a, None))]
            which = "norm"
        for t, d in tensors:
            if (id(t), d) not in merged:
                _merge_tensor(t, d, cur, cur[kept], maps.transposed(which, t.dtype, t.device))
                merged.add((id(t), d))
    remove_cur = cur[dropped].flatten().tolist()
    if remove_cur:
        if m.layer_type == "Parameter":
            _prune_parameter(model, m.name, m.dim, remove_cur)
        elif m.role == "affine":
            _prune_affine(module, sorted(remove_cur), size)
        else:
            _handler(m.handler_name)(module, sorted(remove_cur))


def _ties(model: nn.Module, names=None) -> List[List[Tuple[str, str]]]:
    """Parameters of the modules ``names`` (default: all) that several modules share: one list of
    (module, attribute) each."""
    users: Dict[int, List[Tuple[str, str]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False):
            users.setdefault(id(p), [])
            if (name, attr) not in users[id(p)]:
                users[id(p)].append((name, attr))
    return [u for u in users.values()
            if len({n for n, _ in u}) > 1 and (names is None or any(n in names for n, _ in u))]


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
