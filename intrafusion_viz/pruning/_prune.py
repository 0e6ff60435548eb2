"""``prune``: groups -> importance -> transport plan -> fusion (or plain pruning), on a copy of the model."""
from __future__ import annotations

import math
import numbers
from functools import partial
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

import torch_pruning as tp

from ..merge._surgery import (IndexTracker, _check_mergeable, apply_merge, channel_features, fold_batchnorm,
                      fold_group_batchnorms, folded_copy_of_groups, restore_folded_batchnorms)
from ..merge._fastpath import (LazyCost, all_finite, direct_surgery, direct_surgery_replaces, dropped_rows_cost, fold_memo,
                        folded_magnitude_importances, kept_rows_unused, private_copy)
from ..merge._surgery import check_tied_weights
from ..plan._compact import CompactPlan, DerivedMap, MergeMaps, compact_plan, read_field
from ..groups._trace import Group, _trace, bind_groups, resolve_group_keys
from ..groups._layer_rules import conv_blocks, head_multiple, kept_count, merge_problem, norm_blocks, round_up_to
from ..plan._importance import group_importance, resolve_importance, taylor_gradients
from .._state import ModelSnapshot, saved_modes
from ..plan._blocks import per_block, top_per_block
from ..plan._transport import OTConfig, capped_fold_plan, cost_matrix, masses, resolve_default, transport_plan

__all__ = ["prune", "PruneResult", "GroupResult", "num_kept", "METHODS"]

METHODS = ("intra-fusion", "default", "fold")
PRUNE_REPAIRS = ("auto", "none", "data-free")
ON_UNMERGEABLE = ("skip", "raise", "default")

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
        float64 scores (higher = keep); NaN for a group that keeps every channel (it is not scored).
    cost : Tensor, shape (n, k) or None
        Transport cost (``None`` for default pruning).
    plan : Tensor, shape (n, k)
        Transport plan (default pruning: the selection plan, ``1/n`` at ``(kept[j], j)``).
    out_map, in_map : Tensor, shape (n, k)
        Merge matrices applied to producer rows and consumer columns.
    method : str
        The ``prune`` method that made this record (one of :data:`METHODS`; ``"default"`` for a group
        that ``on_unmergeable="default"`` pruned by selection).
    assignment : Tensor, shape (n,)
        The kept position each channel sends most of its mass to (-1 for channels dropped by
        default pruning).
    attention : dict
        ``{name: AttentionPlan}``: the per-head plans of the q/k/v dims of every
        ``nn.MultiheadAttention`` the group merged (empty otherwise; see :mod:`._attention`).

    ``plan``, ``out_map`` and ``in_map`` are dense float64 tensors when read, but :func:`prune` stores
    them compactly (:mod:`._compact`): a selection as its kept indices, an exact plan as its nonzeros,
    each map as the rule that derives it from the plan (:func:`merge_matrices`).  The first read of a
    field builds the dense tensor and keeps it in the record (as ``cost`` does), so later reads are
    free and return the same tensor; reading a map keeps the plan too.  Constructed by hand, the
    fields hold whatever tensors are given.
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
    method: str = "intra-fusion"
    attention: dict = field(default_factory=dict, repr=False)

    @property
    def assignment(self) -> torch.Tensor:
        has = self.plan.sum(1) > 0
        return torch.where(has, self.plan.argmax(1), torch.full_like(has, -1, dtype=torch.long))


def _cost_of(record: GroupResult) -> Optional[torch.Tensor]:
    cost = record.__dict__.get("_cost")
    if isinstance(cost, LazyCost):  # the kept rows, which the plan did not need, are computed now
        cost = record.__dict__["_cost"] = cost.full()
    return cost


def _set_cost(record: GroupResult, cost) -> None:
    record.__dict__["_cost"] = cost


GroupResult.cost = property(_cost_of, _set_cost, doc="Transport cost, shape (n, k), or None for default pruning.")


def _dense_field(name: str, doc: str) -> property:
    def get(record: GroupResult):
        return read_field(record, name)

    def put(record: GroupResult, value) -> None:
        record.__dict__["_" + name] = value

    return property(get, put, doc=doc)


GroupResult.plan = _dense_field("plan", "Transport plan, shape (n, k), float64 (built on first read, then kept).")
GroupResult.out_map = _dense_field("out_map", "Merge matrix of producer rows, shape (n, k) (built on first read).")
GroupResult.in_map = _dense_field("in_map", "Merge matrix of consumer columns, shape (n, k) (built on first read).")


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
    skipped : list of (int, str, str)
        ``(group index, group name, reason)`` of every selected group left as it was because its
        channels cannot be merged (or pruned); see ``on_unmergeable`` of :func:`prune`.
    """

    model: nn.Module
    groups: List[GroupResult]
    method: str
    config: OTConfig
    params_before: int
    params_after: int
    skipped: List[Tuple[int, str, str]] = field(default_factory=list)

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

    The floor of the exact product, as the Intra-Fusion paper's code and Torch-Pruning's pruners intend
    (512 channels at 30 % keep 358).  Torch-Pruning computes ``int(n * (1 - sparsity))`` in floating
    point, which keeps one channel fewer whenever the exact product is a whole number that the float
    product lands just below (``n=10, sparsity=0.8``: ``10 * 0.19999999999999996`` gives 1 there, 2
    here).  Keeping 2 of 10 channels is what 80 % sparsity means, so this rule adds ``1e-9`` before the
    floor; the two agree everywhere else.
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
    if isinstance(sparsity, Mapping):
        chosen = {}
        for key, value in sparsity.items():
            (index,) = resolve_group_keys(groups, [key])
            chosen[index] = _check_sparsity(value, f"[{key!r}]")
        if selection is not None:
            wanted = set(resolve_group_keys(groups, selection))
            chosen = {i: s for i, s in chosen.items() if i in wanted}
        return dict(sorted(chosen.items()))
    s = _check_sparsity(sparsity, "")
    return {i: s for i in resolve_group_keys(groups, selection)}


@fold_memo()  # each BatchNorm fold is computed once per call (vectors, scores and surgery share it)
def prune(model: nn.Module, example_inputs, sparsity: Sparsity, *, method: Optional[str] = None,
          importance: Union[str, Callable] = "l1", groups: Optional[Sequence[Union[int, str]]] = None,
          config: Optional[OTConfig] = None, batch=None, loss_fn: Optional[Callable] = None,
          features: Optional[Callable[[nn.Module, Group], torch.Tensor]] = None,
          seed: int = 0, inplace: bool = False, progress: bool = False, repair: Optional[str] = "auto",
          sequential: bool = False, on_unmergeable: Optional[str] = None) -> PruneResult:
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
        Merge every channel into the kept ones (Intra-Fusion), drop the unkept ones, or fold as Model
        Folding (ICLR 2025) does: Hartigan k-means clusters of its channel vectors merged to their means,
        with its data-free repair (``plan/_hartigan.py``, ``repair/_fold_repair.py``; checked against its
        own code in ``tests/test_model_folding_golden.py``).  ``None`` (default): ``"fold"`` when no
        ``config`` is given, the best measured without data (``docs/defaults.md``), else
        ``"intra-fusion"`` (``resolve_default``).
    importance : str or callable
        ``"l1"``, ``"l2"``, ``"taylor"`` (needs ``batch``), ``"lamp"``, ``"random"``, a Torch-Pruning
        importance object, or any callable ``group -> Tensor[group.size]`` (higher = keep).
    groups : int, str, or list of int or str, optional
        Prune only these groups (indices, root-layer names or paper labels ``"G1"``; see
        :func:`resolve_group_keys`); default: all.
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
        Seed of the random importance, and of the k-means clusterings (``method="fold"``, and
        ``OTConfig(centroid_init="k-means++")`` such as :meth:`OTConfig.data_free`).  At high
        sparsity the clusters, and the accuracy after merging, can change a lot from seed to seed
        (``BENCHMARKS.md``, section 5.5): try a few.
    inplace : bool
        Prune ``model`` itself.
    progress : bool
        Show a tqdm progress bar over groups.
    repair : {"auto", "none", "data-free"} or None
        Statistics repair after merging, without data: ``"data-free"`` predicts every merged
        channel's mean and variance from the stored BatchNorm statistics and weight correlations of
        the channels it merged and corrects it (see :func:`intrafusion_viz.repair`).  ``"auto"``:
        ``"data-free"`` for ``method="fold"`` and hard Intra-Fusion plans (``target_mass`` ``"free"`` or
        ``"capped"``: ``OTConfig.auto_repair``), none otherwise.  Repairs that
        need data: :func:`intrafusion_viz.repair` on the result.
    sequential : bool
        Plan and merge group by group, each plan made on the network with the previous groups
        already merged (default: every plan from the untouched model).
    on_unmergeable : {"skip", "raise", "default"} or None
        What to do with a selected group whose channels cannot be merged (``Group.mergeable`` is
        False, e.g. a layer type we cannot merge) or, for ``method="default"``, pruned.  ``"skip"``:
        leave it as it is, record it in ``PruneResult.skipped`` and warn once; ``"raise"``: refuse
        the whole call with an :class:`UnsupportedLayerError` before anything changes; ``"default"``:
        prune it by selection (default pruning) where that is possible, else skip it.  ``None``
        (default): ``"raise"`` when you named the groups (``groups=[...]`` or a per-group sparsity
        dict), else ``"skip"``; when *no* selected group could be pruned it raises too.

    Grouped convs keep the same number of channels in every conv group (Torch-Pruning's rule: each
    conv group loses ``floor(removed / groups)`` channels; ``GroupResult.k`` is the count kept) and
    channels merge only inside their conv group (a block-diagonal plan).  A GroupNorm's
    ``num_groups`` must divide the kept count, else a ``ValueError`` names the counts that work.
    A group holding an ``nn.MultiheadAttention`` keeps a multiple of its ``num_heads``; Intra-Fusion
    and ``"fold"`` merge its q/k/v dims with per-head plans of their own (importance ``"l2"`` if asked,
    else l1, on those dims' weights; ``GroupResult.attention``; see ``intrafusion_viz/merge/_attention.py``).

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
    # no method and no config: the measured default (docs/defaults.md); a config alone means Intra-Fusion
    method, config = resolve_default(method, config, whole_model=groups is None and not isinstance(sparsity, Mapping))
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    repair = "none" if repair is None else repair
    if repair not in PRUNE_REPAIRS:
        raise ValueError(f"repair must be one of {', '.join(map(repr, PRUNE_REPAIRS))} or None; got {repair!r} "
                         "(repairs that need data: ifv.repair(result, model, batch, mode=...))")
    if not isinstance(config, OTConfig):
        raise TypeError(f"config must be an OTConfig, got {type(config).__name__}")
    if repair == "auto":
        repair = config.auto_repair(method)
    for name, value in (("inplace", inplace), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if on_unmergeable is not None and on_unmergeable not in ON_UNMERGEABLE:
        raise ValueError(f"on_unmergeable must be one of {', '.join(map(repr, ON_UNMERGEABLE))} or None; "
                         f"got {on_unmergeable!r}")
    estimator = resolve_importance(importance, seed)
    trace = _trace(model, example_inputs)  # refuses TorchScript, other devices, inputs that do not fit
    originals = bind_groups(trace.specs, model, trace.fold_pairs)
    selected = _select(originals, groups, sparsity)
    fuse = method in ("intra-fusion", "fold")

    # Everything that can fail runs before the first change to a model (all-or-nothing for inplace=True):
    # layer checks, channel vectors and importance are read from the caller's model, and every plan is
    # made (with sequential=True the plans are made during the surgery, which is undone on failure).
    named = groups is not None or isinstance(sparsity, Mapping)
    policy = on_unmergeable or ("raise" if named else "skip")
    skipped, by_selection = _unmergeable(originals, selected, fuse, policy, strict=on_unmergeable is None)
    for i, _, _ in skipped:
        del selected[i]
    modules = dict(model.named_modules())
    blocks, sizes = {}, {}
    for i, s in selected.items():
        g = originals[i]
        n = g.size
        if num_kept(n, s) == n:  # nothing to remove
            blocks[i], sizes[i] = 1, (n, n)
            continue
        conv, norm = conv_blocks(g.members, modules, n), norm_blocks(g.members, modules)
        gn_names = [m.name for m in g.members if m.role == "affine" and isinstance(modules[m.name], nn.GroupNorm)]
        k = kept_count(n, s, conv, norm, num_kept, f"group {i} ({g.name!r}) at sparsity {s:g}", gn_names)
        heads = head_multiple(g.members, modules)
        if heads > 1:  # attention heads stay equal: keep a multiple of num_heads (with the blocks above)
            k = round_up_to(k, n, heads * conv * norm // math.gcd(heads, conv * norm))
        blocks[i], sizes[i] = conv * norm // math.gcd(conv, norm), (n, k)
    pruned = [i for i in selected if sizes[i][1] < sizes[i][0]]  # only these are scored and changed
    for i in pruned:
        _check_mergeable(originals[i], is_selection=not fuse or i in by_selection)
    check_tied_weights(model, originals, pruned, selection=(not fuse) or set(by_selection))
    # bn_eps="authors": the paper's code folds every BatchNorm of the model (without eps) before it
    # scores or merges anything, for both methods; vectors and scores are read from that folded copy.
    authors_fold = config.bn_eps == "authors"
    model_read = fold_batchnorm(model, example_inputs, bn_eps="authors") if authors_fold else model
    read = bind_groups(trace.specs, model_read, trace.fold_pairs) if authors_fold else originals
    own_features = features is None and config.fold_batchnorm and not authors_fold and method != "fold"
    faithful_fold = method == "fold" and not sequential  # Model Folding's vectors, merge and repair
    if features is None and method == "fold":
        from ..repair._fold_repair import fold_vectors as features
    if features is None:
        def features(m, g):
            return channel_features(m, g, fold=config.fold_batchnorm and not authors_fold, bias=config.cost_bias)
    # Channel vectors come from the untouched model, so a group's plan never depends on which other
    # groups are pruned with it or in what order (unless sequential=True asks for exactly that).
    vectors = {i: _checked_features(features, model_read, read[i]) for i in pruned
               if fuse and not sequential and i not in by_selection}
    scored = read
    scores = None
    if config.score_folded and not authors_fold and pruned:  # magnitudes straight from the folded weights
        scores = folded_magnitude_importances(model, [originals[i] for i in pruned], estimator,
                                              vectors if own_features else None, config.cost_bias)
    if config.score_folded and not authors_fold and pruned and scores is None:
        # "Score what you merge": importance of the BatchNorm-folded weights.  Gradients need a folded
        # copy of their own; reading weights needs folded copies of the scored layers only.
        needs_grad = importance == "taylor" or isinstance(estimator, tp.importance.GroupTaylorImportance)
        folded = (fold_batchnorm(model, example_inputs) if needs_grad
                  else folded_copy_of_groups(model, [originals[i] for i in pruned]))
        scored = bind_groups(trace.specs, folded, trace.fold_pairs)
    score_model = scored[0].model if scored else model
    if scores is None:
        scores = _importances(score_model, [scored[i] for i in pruned], estimator, importance, batch, loss_fn)
    sources = None
    if repair == "data-free" and pruned and not faithful_fold:  # the sources' statistics, read before anything is merged
        from ..repair._data_free import snapshot_sources

        sources = snapshot_sources(model, [originals[i] for i in pruned])

    def plan_group(i, vec, source=model_read):
        n, k = sizes[i]
        imp = scores[i]
        kept = top_per_block(imp, k, blocks[i])
        cost = None
        group_method = "default" if i in by_selection else method
        if group_method == "fold":
            from ..plan._hartigan import fold_plan
            if config.target_mass == "capped":  # transport capacities on Model Folding's clusters
                fold_plan = partial(capped_fold_plan, capacity=config.capacity)
            if blocks[i] == 1:
                kept, plan = fold_plan(vec, imp, k, fold_seeds)
            else:  # k-means inside every block
                kept, plan = per_block(n, k, blocks[i], lambda rows, kb: fold_plan(vec[rows], imp[rows], kb, fold_seeds))
            cost = cost_matrix(vec, kept, config)
            fusion = "barycentric"
        elif group_method != "default":
            a = masses(config.source_mass, imp, n)
            b = masses(config.target_mass, imp[kept], k)
            if blocks[i] == 1 and config.p == 1 and kept_rows_unused(config, a, b):
                # kept rows: computed if the record is read; our own vectors are normalised in place
                cost = dropped_rows_cost(vec, kept, config, inplace=own_features)
                plan = transport_plan(cost.partial, a, b, config, kept=kept)
                cost.compact()  # the record keeps the dropped rows only until its cost is read
            else:  # our own vectors are normalised in place (the caller's, from features=, are not)
                cost = cost_matrix(vec, kept, config, seed=seed, inplace=own_features)

                def solve(rows, kb):  # the kept channels of this block, their own transport problem
                    local = kept[(kept >= rows[0]) & (kept <= rows[-1])] - rows[0]
                    cols = torch.searchsorted(kept, local + rows[0])
                    sub_b = b[cols] / b[cols].sum()
                    return local, transport_plan(cost[rows][:, cols], a[rows] / a[rows].sum(), sub_b, config,
                                                 kept=local)

                if blocks[i] == 1:
                    plan = transport_plan(cost, a, b, config, kept=kept)
                else:  # block diagonal: every block carries its own channels' mass
                    _, plan = per_block(n, k, blocks[i], solve, weights=a)
            fusion = config.fusion
        else:
            plan, fusion = CompactPlan.selection(n, kept), "barycentric"
        # held compactly (kept indices or nonzeros); dense maps are built per group during the surgery
        plan = compact_plan(plan)
        g = originals[i]
        attention = {}
        if group_method != "default":  # every MultiheadAttention: per-head plans of its q/k/v dims
            from ..merge._attention import attention_plan

            for m in g.members:
                module = source.get_submodule(m.name) if m.layer_type != "Parameter" else None
                if isinstance(module, nn.MultiheadAttention):
                    attention[m.name] = attention_plan(module, k, config, importance if isinstance(importance, str)
                                                       else "l1", seed, group_method, m.name)
        if attention:
            attention_plans[i] = attention
        record = GroupResult(g.index, g.paper_index, g.name, n, k, selected[i], kept, imp, cost, plan,
                             DerivedMap(fusion, 0), DerivedMap(fusion, 1), members=list(g.members),
                             method=group_method, attention=attention)
        return record, (i, kept, MergeMaps(plan, kept, fusion))

    records, plans, attention_plans = [], [], {}
    from ..plan._hartigan import FoldSeeds
    fold_seeds = FoldSeeds(seed)  # Model Folding's HKMeans run seeds, drawn group after group
    items = selected.items()
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(list(items), desc=f"{method} ({len(selected)} groups)", leave=False)
    for i, s in items:
        g = originals[i]
        n, k = sizes[i]
        if k == n:  # nothing to remove: not scored, the model is not touched
            kept, imp = torch.arange(n), torch.full((n,), float("nan"), dtype=torch.float64)
            records.append(GroupResult(g.index, g.paper_index, g.name, n, k, s, kept, imp, None,
                                       CompactPlan.selection(n, kept), DerivedMap("barycentric", 0),
                                       DerivedMap("barycentric", 1), members=list(g.members), method=method))
        elif not sequential:
            record, planned = plan_group(i, vectors.pop(i, None))  # each group's vectors go once planned
            records.append(record)
            plans.append(planned)

    params_before = sum(p.numel() for p in model.parameters())
    fold = fuse and config.fold_batchnorm and not authors_fold  # the authors leave folded BatchNorms as identities
    # plain layers: the pruned copy is computed from the caller's tensors (the same numbers, less copying)
    direct = None if inplace or authors_fold or sequential or faithful_fold else direct_surgery_replaces(model, originals, plans, fold)
    frozen = {name: p.requires_grad for name, p in model.named_parameters()} if direct is not None else None
    if authors_fold and not inplace:
        work = model_read  # already the folded copy the authors' code prunes
    elif direct is not None:
        work = direct_surgery(model, originals, plans, fold, direct)
    else:
        work = model if inplace else private_copy(model)
    bound = bind_groups(trace.specs, work, trace.fold_pairs) if direct is None else originals
    # inplace=True: a failure half-way through the surgery puts the touched layers back as they were
    touched = ({name for name, _ in work.named_modules()} if authors_fold
               else {m.name for i in pruned for m in bound[i].members})
    snapshot = ModelSnapshot(work, touched) if inplace else None
    if frozen is None:
        frozen = {name: p.requires_grad for name, p in work.named_parameters()}
    try:
        with saved_modes(work):  # each module keeps its own train/eval mode
            if authors_fold and inplace:
                fold_batchnorm(work, example_inputs, inplace=True, bn_eps="authors")
            if sequential:  # each group planned on the network as the groups before it left it
                tracker = IndexTracker()
                for i in pruned:
                    vec = _checked_features(features, work, bound[i]) if fuse and i not in by_selection else None
                    record, planned = plan_group(i, vec, work)
                    records.append(record)
                    _merge(work, bound, [planned], fold, tracker, attention_plans)
                records.sort(key=lambda r: r.index)
            elif faithful_fold:
                from ..repair._fold_repair import fold_surgery
                fold_scales = fold_surgery(work, bound, plans, attention_plans, repair == "data-free")
            elif direct is None:
                _merge(work, bound, plans, fold, attention=attention_plans)
            for name, p in work.named_parameters():  # pruning makes new Parameters; keep frozen ones frozen
                sibling = name.rsplit(".", 1)[0] + ".weight"  # a bias created by folding follows its weight
                p.requires_grad_(frozen.get(name, frozen.get(sibling, True)))
            result = PruneResult(work, records, method, config, params_before, 0, skipped)
            if faithful_fold and pruned:  # DF_REPAIR's gamma factors, for ifv.repair(result, mode="data-free")
                result.fold_repair = {"scales": fold_scales, "applied": repair == "data-free"}
            if sources is not None:
                from ..repair._data_free import data_free_repair

                data_free_repair(result, snapshot=sources, inplace=True)
            _sync_widths(work)  # last: nothing after it can fail and leave the attribute changed
    except BaseException:
        if snapshot is not None:
            snapshot.restore()
        raise
    result.params_after = sum(p.numel() for p in work.parameters())
    if skipped:
        reasons = "; ".join(reason for _, _, reason in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        warnings.warn(f"{len(skipped)} of {len(skipped) + len(selected)} selected groups were left unpruned "
                      f"because their channels cannot be {'merged' if fuse else 'pruned'} (see "
                      f"PruneResult.skipped; on_unmergeable='default' prunes them by selection where possible, "
                      f"'raise' refuses): {reasons}", UserWarning, stacklevel=2)
    return result


def _sync_widths(model: nn.Module) -> None:
    """Width attributes that a model's own ``forward`` reads, set to the pruned widths.

    torchvision's ``VisionTransformer`` reshapes its patch embedding with ``self.hidden_dim``, which
    pruning its residual stream must follow (as Torch-Pruning's own torchvision test sets it).
    """
    try:
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError:  # torchvision is optional for the engine
        return
    for module in model.modules():
        if isinstance(module, VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels


def _unmergeable(groups: List[Group], selected: Dict[int, float], fuse: bool, policy: str, strict: bool):
    """Selected groups that lose channels but cannot be merged (or pruned): ``(skipped, by_selection)``.

    ``skipped``: ``[(index, name, reason)]``; ``by_selection``: indices that ``policy="default"`` prunes
    by selection instead.  Raises for ``policy="raise"``, and (``strict``: the default policy) when no
    selected group that loses channels is left to prune.
    """
    skipped, by_selection, losing = [], set(), 0
    modules = dict(groups[0].model.named_modules()) if groups else {}
    for i, s in selected.items():
        g = groups[i]
        if num_kept(g.size, s) == g.size:
            continue
        losing += 1
        problem = g.blocked or merge_problem(g.members, modules, g.size, selection=not fuse, index=g.index,
                                             name=g.name)
        if problem is None:
            continue
        if policy == "raise":
            _check_mergeable(g, is_selection=not fuse)
        if policy == "default" and fuse and g.blocked is None \
                and merge_problem(g.members, modules, g.size, selection=True) is None:
            by_selection.add(i)
        else:
            skipped.append((g.index, g.name, problem))
    if strict and skipped and len(skipped) == losing:
        _check_mergeable(groups[skipped[0][0]], is_selection=not fuse)
    return skipped, by_selection


def _merge(work: nn.Module, bound: List[Group], plans, fold: bool, tracker: Optional[IndexTracker] = None,
           attention: Optional[dict] = None) -> None:
    """Fold, merge and restore BatchNorms of every planned group, in place (plans made beforehand).

    ``plans``: ``(index, kept, MergeMaps)`` per group; each group's dense maps are built when it is merged.
    ``attention``: ``{index: {name: AttentionPlan}}`` of the groups holding an ``nn.MultiheadAttention``.
    """
    folded = {}
    if fold:
        for i, *_ in plans:
            folded.update(fold_group_batchnorms(work, bound[i]))
    tracker = tracker if tracker is not None else IndexTracker()
    for i, kept, maps in plans:  # one group's dense maps at a time
        apply_merge(work, bound[i], kept, *maps.build(), tracker, (attention or {}).get(i))
    if folded:
        for i, kept, maps in plans:
            restore_folded_batchnorms(work, bound[i], kept, maps.norm_map(), folded, tracker)


def _checked_features(features: Callable, model: nn.Module, group: Group) -> torch.Tensor:
    """``features(model, group)``, refused unless it is a finite float tensor of shape (group.size, d)."""
    v = features(model, group)
    what = f"features(model, group) for group {group.index} ({group.name!r})"
    if not torch.is_tensor(v):
        raise TypeError(f"{what} must return a tensor of shape ({group.size}, d), got {type(v).__name__}")
    if not v.is_floating_point():
        raise TypeError(f"{what} must return a floating-point tensor (one vector per channel), got {v.dtype}; "
                        "convert it with .float()")
    if v.dim() != 2 or v.shape[0] != group.size or v.shape[1] == 0:
        raise ValueError(f"{what} must return a tensor of shape ({group.size}, d): one row per channel, "
                         f"got {tuple(v.shape)}")
    if not all_finite(v):
        raise ValueError(f"{what} has NaN or infinite entries; check the weights or the data for NaN")
    return v


def _importances(model: nn.Module, groups: List[Group], estimator, importance, batch,
                 loss_fn) -> Dict[int, torch.Tensor]:
    """Scores of the groups that lose channels, read from ``model``; Taylor gradients are put back after."""
    needs_grad = importance == "taylor" or isinstance(estimator, tp.importance.GroupTaylorImportance)
    if not groups:
        return {}
    if not needs_grad:
        return {g.index: group_importance(g, estimator) for g in groups}
    with taylor_gradients(model, batch, loss_fn):
        return {g.index: group_importance(g, estimator) for g in groups}
