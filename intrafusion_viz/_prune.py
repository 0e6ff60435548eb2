"""``prune``: groups -> importance -> transport plan -> fusion (or plain pruning), on a copy of the model."""
from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

import torch_pruning as tp

from ._fusion import IndexTracker, _check_mergeable, apply_merge, channel_features, fold_group_batchnorms
from ._groups import Group, _trace, bind_groups, check_inputs
from ._importance import accumulate_gradients, group_importance, resolve_importance
from ._transport import OTConfig, cost_matrix, masses, merge_matrices, selection_plan, transport_plan

__all__ = ["prune", "PruneResult", "GroupResult", "num_kept", "METHODS"]

METHODS = ("intra-fusion", "default", "fold")
PRUNE_REPAIRS = ("auto", "none", "data-free")

Sparsity = Union[float, Mapping[Union[int, str], float]]


@dataclass
class GroupResult:
    """What happened to one group; figures read these fields instead of recomputing them.

    Attributes
    ----------
    index, paper_index, name : int, int, str
        As in :class:`Group`.
    n, k : int
        Channels before and after.
    sparsity : float
        Requested sparsity of this group.
    kept : Tensor, shape (k,)
        Kept channel indices (ascending): position j of the pruned layer is channel ``kept[j]``.
    importance : Tensor, shape (n,)
    cost : Tensor, shape (n, k) or None
        Transport cost (``None`` for default pruning).
    plan : Tensor, shape (n, k)
        Transport plan (default pruning: the selection plan, ``1/n`` at ``(kept[j], j)``).
    out_map, in_map : Tensor, shape (n, k)
        Merge matrices applied to producer rows and consumer columns.
    assignment : Tensor, shape (n,)
        The kept position each channel sends most of its mass to (-1 for channels dropped by
        default pruning).
    """

    index: int
    paper_index: int
    name: str
    n: int
    k: int
    sparsity: float
    kept: torch.Tensor
    importance: torch.Tensor
    cost: Optional[torch.Tensor]
    plan: torch.Tensor
    out_map: torch.Tensor
    in_map: torch.Tensor
    members: list = field(default_factory=list, repr=False)

    @property
    def assignment(self) -> torch.Tensor:
        has = self.plan.sum(1) > 0
        return torch.where(has, self.plan.argmax(1), torch.full_like(has, -1, dtype=torch.long))


@dataclass
class PruneResult:
    """The pruned model and a record per pruned group.

    Attributes
    ----------
    model : nn.Module
        The new, smaller model (the caller's model is unchanged unless ``inplace=True``).
    groups : list of GroupResult
        One per pruned group, in group order.
    method : str
    config : OTConfig
    params_before, params_after : int
    """

    model: nn.Module
    groups: List[GroupResult]
    method: str
    config: OTConfig
    params_before: int
    params_after: int

    def group(self, key: Union[int, str]) -> GroupResult:
        """The record of a group, by index or by name."""
        for g in self.groups:
            if g.index == key or g.name == key:
                return g
        raise KeyError(f"group {key!r} was not pruned; pruned groups: {[g.index for g in self.groups]}")

    def summary(self) -> List[dict]:
        """One dict per group (index, paper index, name, n, k, sparsity): a tidy table."""
        return [dict(index=g.index, paper_group=f"G{g.paper_index}", name=g.name, n=g.n, k=g.k,
                     sparsity=g.sparsity) for g in self.groups]


def num_kept(n: int, sparsity: float) -> int:
    """Channels kept out of ``n`` at ``sparsity``: ``floor(n * (1 - sparsity))``, at least 1.

    The same rule as Torch-Pruning's pruners and the Intra-Fusion paper's code, so layer sizes match
    theirs (512 channels at 30 % keep 358).
    """
    return max(1, int(math.floor(n * (1.0 - sparsity) + 1e-9)))


def _check_sparsity(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"sparsity{where} must be a float in [0, 1), got {value!r}")
    value = float(value)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ValueError(f"sparsity{where} must be in [0, 1) (the fraction of channels to remove), got {value!r}")
    return value


def _select(groups: List[Group], selection, sparsity) -> Dict[int, float]:
    by_name = {g.name: g.index for g in groups}

    def index_of(key):
        if isinstance(key, str):
            if key not in by_name:
                raise KeyError(f"no group named {key!r}; groups are {list(by_name)}")
            return by_name[key]
        if isinstance(key, bool) or not isinstance(key, numbers.Integral) or not 0 <= key < len(groups):
            raise IndexError(f"group index {key!r} out of range: the model has {len(groups)} groups (0..{len(groups) - 1})")
        return int(key)

    if isinstance(sparsity, Mapping):
        chosen = {index_of(k): _check_sparsity(v, f"[{k!r}]") for k, v in sparsity.items()}
        if selection is not None:
            wanted = {index_of(k) for k in selection}
            chosen = {i: s for i, s in chosen.items() if i in wanted}
        return dict(sorted(chosen.items()))
    s = _check_sparsity(sparsity, "")
    indices = range(len(groups)) if selection is None else sorted({index_of(k) for k in selection})
    return {i: s for i in indices}


def _check_vectors(vectors, originals) -> None:
    for i, v in vectors.items():
        if not (torch.is_tensor(v) and v.dim() == 2 and v.shape[0] == originals[i].size):
            raise ValueError(f"features for group {i} must be a tensor of shape ({originals[i].size}, d), "
                             f"got {getattr(v, 'shape', type(v).__name__)}")


def prune(model: nn.Module, example_inputs, sparsity: Sparsity, *, method: str = "intra-fusion",
          importance: Union[str, Callable] = "l1", groups: Optional[Sequence[Union[int, str]]] = None,
          config: Optional[OTConfig] = None, batch=None, loss_fn: Optional[Callable] = None,
          features: Optional[Callable[[nn.Module, Group], torch.Tensor]] = None,
          seed: int = 0, inplace: bool = False, progress: bool = False, repair: Optional[str] = "auto",
          sequential: bool = False) -> PruneResult:
    """Prune ``model`` by merging channels along an optimal-transport plan (or by dropping them).

    Parameters
    ----------
    model : nn.Module
        CPU or CUDA, train or eval mode.  Not modified unless ``inplace=True``.
    example_inputs : Tensor or tuple of Tensor
        A batch shaped like the model's inputs, on the model's device (used to trace groups once).
    sparsity : float in [0, 1) or mapping
        Fraction of channels to remove from each group, or ``{group index or name: sparsity}``.
    method : {"intra-fusion", "default", "fold"}
        Merge every channel into the kept ones (Intra-Fusion), drop the unkept ones, or merge k-means
        clusters of channels into their means (Model Folding, ICLR 2025; see :mod:`._fold`).
    importance : str or callable
        ``"l1"``, ``"l2"``, ``"taylor"`` (needs ``batch``), ``"lamp"``, ``"random"``, a Torch-Pruning
        importance object, or any callable ``group -> Tensor[group.size]`` (higher = keep).
    groups : list of int or str, optional
        Prune only these groups (indices or names from :func:`find_groups`); default: all.
    config : OTConfig, optional
        Optimal-transport settings (cost, masses, solver, fusion rule).
    batch : (inputs, targets), optional
        Data for data-driven importance (Taylor).
    loss_fn : callable, optional
        Loss for Taylor importance; default cross-entropy.
    features : callable, optional
        ``features(model, group) -> Tensor (group.size, d)``: the vectors the transport cost compares
        (default :func:`channel_features`, the channels' weights with BatchNorm folded).  Called on
        the caller's model, read only.
    seed : int
        Seed of the random importance.
    inplace : bool
        Prune ``model`` itself.
    progress : bool
        Show a tqdm progress bar over groups.
    repair : {"auto", "none", "data-free"} or None
        Statistics repair after merging, without data: ``"data-free"`` predicts every merged
        channel's mean and variance from the stored BatchNorm statistics and weight correlations of
        the channels it merged and corrects it (see :func:`intrafusion_viz.repair`).  ``"auto"``:
        ``"data-free"`` for ``method="fold"`` (part of Model Folding), none otherwise.  Repairs that
        need data: :func:`intrafusion_viz.repair` on the result.
    sequential : bool
        Plan and merge group by group, each plan made on the network with the previous groups
        already merged (default: every plan from the untouched model).

    Returns
    -------
    PruneResult
        ``.model`` (the pruned model, in the caller's train/eval mode) and ``.groups``.

    Examples
    --------
    >>> import torch, intrafusion_viz as ifv
    >>> model = ifv.models.vgg11_bn()
    >>> res = ifv.prune(model, torch.randn(1, 3, 32, 32), sparsity=0.5)
    >>> res.model.features[0].out_channels
    32
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    repair = "none" if repair is None else repair
    if repair not in PRUNE_REPAIRS:
        raise ValueError(f"repair must be one of {', '.join(map(repr, PRUNE_REPAIRS))} or None; got {repair!r} "
                         "(repairs that need data: ifv.repair(result, model, batch, mode=...))")
    if repair == "auto":
        repair = "data-free" if method == "fold" else "none"
    config = config if config is not None else OTConfig()
    if not isinstance(config, OTConfig):
        raise TypeError(f"config must be an OTConfig, got {type(config).__name__}")
    estimator = resolve_importance(importance, seed)
    check_inputs(model, example_inputs)
    trace = _trace(model, example_inputs)
    originals = bind_groups(trace.specs, model, trace.fold_pairs)
    selected = _select(originals, groups, sparsity)
    fuse = method in ("intra-fusion", "fold")
    # Channel vectors are read from the untouched model, so a group's plan never depends on which
    # other groups are pruned with it or in what order.
    if features is None:
        def features(m, g):
            return channel_features(m, g, fold=config.fold_batchnorm)
    vectors = {i: features(model, originals[i]) for i, s in selected.items()
               if fuse and not sequential and num_kept(originals[i].size, s) < originals[i].size}
    _check_vectors(vectors, originals)

    work = model if inplace else copy.deepcopy(model)
    was_training = work.training
    bound = bind_groups(trace.specs, work, trace.fold_pairs)
    params_before = sum(p.numel() for p in model.parameters())
    for i in selected:  # refuse unmergeable layers before anything is changed (matters for inplace)
        _check_mergeable(bound[i], is_selection=not fuse)
    needs_grad = importance == "taylor" or isinstance(estimator, tp.importance.GroupTaylorImportance)
    if needs_grad:
        saved = {name: (p.grad, p.requires_grad) for name, p in work.named_parameters()}
        accumulate_gradients(work, batch, loss_fn)
    try:
        scores = {i: group_importance(bound[i], estimator) for i in selected}
    finally:
        if needs_grad:
            for name, p in work.named_parameters():
                p.grad = saved[name][0] if inplace else None
                p.requires_grad_(saved[name][1])

    snapshot = None
    if repair == "data-free":  # read the sources' statistics before anything is folded or merged
        from ._data_free import snapshot_sources

        snapshot = snapshot_sources(model, [originals[i] for i in selected])
    records = []
    planned = []
    tracker = IndexTracker()
    items = selected.items()
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(list(items), desc=f"{method} ({len(selected)} groups)", leave=False)
    for i, s in items:
        g = bound[i]
        n, k = g.size, num_kept(g.size, s)
        imp = scores[i]
        kept = torch.sort(torch.topk(imp, k, sorted=True).indices).values
        cost = None
        if fuse and k < n:
            if sequential:  # this group's channels as the network merged so far computes them
                vectors[i] = features(work, g)
                _check_vectors(vectors, originals)
            if config.fold_batchnorm:
                fold_group_batchnorms(work, g)
            if method == "fold":
                from ._fold import cluster_plan

                kept, plan = cluster_plan(vectors[i], imp, k, seed=seed)
                cost = cost_matrix(vectors[i], kept, config)
                out_map, in_map = merge_matrices(plan)
                norm_map = out_map
            else:
                cost = cost_matrix(vectors[i], kept, config)
                a = masses(config.source_mass, imp, n)
                b = masses(config.target_mass, imp[kept], k)
                plan = transport_plan(cost, a, b, config, kept=kept)
                out_map, in_map = merge_matrices(plan, config.fusion)
                norm_map = out_map if config.fusion == "barycentric" else merge_matrices(selection_plan(n, kept))[0]
        else:
            plan = selection_plan(n, kept)
            out_map, in_map = merge_matrices(plan)
            norm_map = out_map
        if sequential:
            apply_merge(work, g, kept, out_map, in_map, norm_map, tracker)
        else:
            planned.append((g, kept, out_map, in_map, norm_map))
        records.append(GroupResult(g.index, g.paper_index, g.name, n, k, s, kept, imp, cost, plan,
                                   out_map, in_map, members=list(g.members)))

    # Merge after every plan is made: each plan then depends only on its own group's weights.
    frozen = {name: p.requires_grad for name, p in work.named_parameters()}
    for g, kept, out_map, in_map, norm_map in planned:
        apply_merge(work, g, kept, out_map, in_map, norm_map, tracker)
    for name, p in work.named_parameters():  # pruning makes new Parameters; keep frozen ones frozen
        sibling = name.rsplit(".", 1)[0] + ".weight"  # a bias created by folding follows its weight
        p.requires_grad_(frozen.get(name, frozen.get(sibling, True)))
    work.train(was_training)
    result = PruneResult(work, records, method, config, params_before, 0)
    if repair == "data-free":
        from ._data_free import data_free_repair

        data_free_repair(result, snapshot=snapshot, inplace=True)
    result.params_after = sum(p.numel() for p in work.parameters())
    return result
