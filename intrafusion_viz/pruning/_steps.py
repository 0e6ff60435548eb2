"""The named steps of :func:`intrafusion_viz.prune`: resolve, score, plan, merge, repair, record.

Each step is a function of the steps before it (their results are small dataclasses), so each can be
called and tested alone (the first two live in :mod:`._resolve`)::

    request = check_arguments(method, importance, config, seed, inplace, progress, repair, ...)
    selection = resolve(model, example_inputs, sparsity, groups, request)   # groups, sizes, checks
    scored = score(model, example_inputs, request, selection)   # channel vectors and importance
    records, plans = plan(request, selection, scored)           # one plan per group (not sequential)
    sources = repair_sources(model, example_inputs, request, selection)  # what the repair reads, before merging
    work = work_copy(model, request, selection, scored)         # a copy, or the caller's model
    with undo_on_failure(work):
        merge(work, example_inputs, request, selection, scored, plans, records)
        repair(result, sources)                                 # result: a PruneResult of work.model
    record(result, request, selection)                          # parameter count, warnings

Everything that can fail runs before the first change to a model (all-or-nothing for
``inplace=True``): layer checks, channel vectors and importance are read from the caller's model and
every plan is made before :func:`merge` (with ``sequential=True`` the plans are made during the
surgery, which :class:`~intrafusion_viz._state.ModelSnapshot` undoes on failure).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

import torch_pruning as tp

from ..groups._trace import Group, bind_groups
from ..merge._copy import private_copy, unshare
from ..merge._scores import folded_magnitude_importances
from ..merge._surgery import (IndexTracker, apply_merge, channel_features, fold_batchnorm, fold_group_batchnorms,
                              folded_copy_of_groups, restore_folded_batchnorms, shared_tensors)
from ..plan._blocks import per_block, top_per_block
from ..plan._compact import CompactPlan, DerivedMap, MergeMaps, compact_plan
from ..plan._importance import group_importance, taylor_gradients
from ..plan._lazy_cost import dropped_rows_cost, dropped_rows_suffice
from ..plan._transport import all_finite, cost_matrix, masses, transport_plan
from .._state import ModelSnapshot, saved_modes
from ._resolve import METHODS, Request, Selection, check_arguments, resolve, synthesizable
from ._result import GroupResult, PruneResult

__all__ = ["METHODS", "Request", "Selection", "Scored", "Work", "check_arguments", "resolve", "score", "plan",
           "plan_group", "work_copy", "merge", "merge_plans", "repair_sources", "repair", "record", "synthesizable"]

# ---------------------------------------------------------------------------------------------- score

@dataclass
class Scored:
    """What the plans are read from (step :func:`score`).

    ``model`` / ``groups``: the caller's model and groups, or (``bn_eps="authors"``) the authors'
    BatchNorm-folded copy of it; ``features``: ``features(model, group) -> (n, d)``; ``own_features``:
    the vectors are ours (folded, as scored) and may be normalised in place; ``vectors``: ``{index:
    (n, d)}`` of the merged groups (empty with ``sequential=True``); ``scores``: ``{index: (n,)}`` float64.
    """

    model: nn.Module
    groups: List[Group]
    features: Callable
    own_features: bool
    vectors: Dict[int, torch.Tensor]
    scores: Dict[int, torch.Tensor]
    fold_seeds: object = None  # method="fold": Model Folding's k-means run seeds, drawn group after group


def score(model: nn.Module, example_inputs, request: Request, selection: Selection) -> Scored:
    """Step 2: the channel vectors the cost compares and the importance of every pruned group.

    Vectors come from the untouched model, so a group's plan never depends on which other groups are
    pruned with it or in what order (unless ``sequential=True`` asks for exactly that).
    """
    config, authors_fold, fuse = request.config, request.authors_fold, request.fuse
    originals, pruned, trace = selection.originals, selection.pruned, selection.trace
    # bn_eps="authors": the paper's code folds every BatchNorm of the model (without eps) before it
    # scores or merges anything, for both methods; vectors and scores are read from that folded copy.
    model_read = fold_batchnorm(model, example_inputs, bn_eps="authors") if authors_fold else model
    read = bind_groups(trace.specs, model_read, trace.fold_pairs) if authors_fold else originals
    features = request.features
    own_features = (features is None and config.fold_batchnorm and not authors_fold  # folded, as scored
                    and request.method != "fold")
    if features is None and request.method == "fold":
        from ..repair._fold_repair import fold_vectors as features  # Model Folding's channel vectors
    if features is None:
        def features(m, g):
            return channel_features(m, g, fold=config.fold_batchnorm and not authors_fold, bias=config.cost_bias)
    vectors = {i: checked_features(features, model_read, read[i]) for i in pruned
               if fuse and not request.sequential and i not in selection.by_selection}
    scores = _folded_scores(model, example_inputs, request, selection, read, vectors, own_features)
    if scores is None:
        scores = _importances(read[0].model if read else model, [read[i] for i in pruned], request)
    fold_seeds = None
    if request.method == "fold":
        from ..plan._hartigan import FoldSeeds

        fold_seeds = FoldSeeds(request.seed)
    return Scored(model_read, read, features, own_features, vectors, scores, fold_seeds)


def _folded_scores(model, example_inputs, request: Request, selection: Selection, read, vectors,
                   own_features) -> Optional[Dict[int, torch.Tensor]]:
    """``OTConfig(score_folded=True)``, "score what you merge": importance of the BatchNorm-folded weights."""
    config, pruned, originals = request.config, selection.pruned, selection.originals
    if not (config.score_folded and not request.authors_fold and pruned):
        return None
    # magnitudes straight from the folded weights (or the vectors that hold them)
    scores = folded_magnitude_importances(model, [originals[i] for i in pruned], request.estimator,
                                          vectors if own_features else None, config.cost_bias)
    if scores is not None:
        return scores
    # Gradients need a folded copy of their own; reading weights needs folded copies of the scored layers only.
    folded = (fold_batchnorm(model, example_inputs) if _needs_grad(request)
              else folded_copy_of_groups(model, [originals[i] for i in pruned]))
    trace = selection.trace
    scored = bind_groups(trace.specs, folded, trace.fold_pairs)
    return _importances(scored[0].model if scored else model, [scored[i] for i in pruned], request)


def _needs_grad(request: Request) -> bool:
    return request.importance == "taylor" or isinstance(request.estimator, tp.importance.GroupTaylorImportance)


def _importances(model: nn.Module, groups: List[Group], request: Request) -> Dict[int, torch.Tensor]:
    """Scores of the groups that lose channels, read from ``model``; Taylor gradients are put back after."""
    if not groups:
        return {}
    if not _needs_grad(request):
        return {g.index: group_importance(g, request.estimator) for g in groups}
    with taylor_gradients(model, request.batch, request.loss_fn):
        return {g.index: group_importance(g, request.estimator) for g in groups}


def checked_features(features: Callable, model: nn.Module, group: Group) -> torch.Tensor:
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


# ---------------------------------------------------------------------------------------------- plan

Planned = Tuple[int, torch.Tensor, MergeMaps]  # (group index, kept, the maps the surgery builds)


def plan(request: Request, selection: Selection, scored: Scored) -> Tuple[List[GroupResult], List[Planned]]:
    """Step 3: one plan per selected group, made from the untouched model (none with ``sequential=True``:
    :func:`merge` plans each group on the model the previous groups left).

    Returns the records of every selected group (groups that keep every channel included) and, for
    the groups that lose channels, what the surgery needs.
    """
    records, plans = [], []
    items = selection.selected.items()
    if request.progress:
        from tqdm.auto import tqdm
        items = tqdm(list(items), desc=f"{request.method} ({len(selection.selected)} groups)", leave=False)
    for i, s in items:
        g = selection.originals[i]
        n, k = selection.sizes[i]
        if k == n:  # nothing to remove: not scored, the model is not touched
            kept, imp = torch.arange(n), torch.full((n,), float("nan"), dtype=torch.float64)
            records.append(GroupResult(g.index, g.paper_index, g.name, n, k, s, kept, imp, None,
                                       CompactPlan.selection(n, kept), DerivedMap("barycentric", 0),
                                       DerivedMap("barycentric", 1), members=list(g.members),
                                       method=request.method))
        elif not request.sequential:
            record, planned = plan_group(i, scored.vectors.pop(i, None), scored.model, request, selection, scored)
            records.append(record)  # each group's vectors go once planned
            plans.append(planned)
    return records, plans


def plan_group(i: int, vectors: Optional[torch.Tensor], source: nn.Module, request: Request,
               selection: Selection, scored: Scored) -> Tuple[GroupResult, Planned]:
    """The plan of group ``i`` (transport, clusters or selection) and its record.

    ``vectors``: the group's channel vectors, shape (n, d) (``None`` for selection); ``source``: the
    model its attention layers are read from.
    """
    config, seed = request.config, request.seed
    n, k = selection.sizes[i]
    imp, blocks = scored.scores[i], selection.blocks[i]
    kept = top_per_block(imp, k, blocks)
    cost = None
    group_method = "default" if i in selection.by_selection else request.method
    if group_method == "fold":
        kept, group_plan, cost = _cluster_plan(vectors, imp, n, k, blocks, config, scored.fold_seeds)
        fusion = "barycentric"
    elif group_method != "default":
        group_plan, cost = _transport_plan(vectors, imp, kept, n, k, blocks, config, seed, scored.own_features)
        fusion = config.fusion
    else:
        group_plan, fusion = CompactPlan.selection(n, kept), "barycentric"
    # held compactly (kept indices or nonzeros); dense maps are built per group during the surgery
    group_plan = compact_plan(group_plan)
    g = selection.originals[i]
    attention = {}
    if group_method != "default":  # every MultiheadAttention: per-head plans of its q/k/v dims
        from ..merge._attention import attention_plan

        name = request.importance if isinstance(request.importance, str) else "l1"
        for m in g.members:
            module = source.get_submodule(m.name) if m.layer_type != "Parameter" else None
            if isinstance(module, nn.MultiheadAttention):
                attention[m.name] = attention_plan(module, k, config, name, seed, group_method, m.name)
    record = GroupResult(g.index, g.paper_index, g.name, n, k, selection.selected[i], kept, imp, cost, group_plan,
                         DerivedMap(fusion, 0), DerivedMap(fusion, 1), members=list(g.members),
                         method=group_method, attention=attention)
    return record, (i, kept, MergeMaps(group_plan, kept, fusion))


def _cluster_plan(vectors, imp, n, k, blocks, config, fold_seeds):
    """``method="fold"``: Model Folding's Hartigan k-means clusters merged into their means (inside every block)."""
    from functools import partial

    from ..plan._centroids import capped_fold_plan
    from ..plan._hartigan import fold_plan as plain_fold_plan

    # transport capacities on Model Folding's clusters, or its clusters as they are
    fold_plan = (partial(capped_fold_plan, capacity=config.capacity) if config.target_mass == "capped"
                 else plain_fold_plan)
    if blocks == 1:
        kept, group_plan = fold_plan(vectors, imp, k, fold_seeds)
    else:
        kept, group_plan = per_block(n, k, blocks, lambda rows, kb: fold_plan(vectors[rows], imp[rows], kb, fold_seeds))
    return kept, group_plan, cost_matrix(vectors, kept, config)


def _transport_plan(vectors, imp, kept, n, k, blocks, config, seed, own_features):
    """Intra-Fusion: the transport plan onto the kept channels and its cost (block diagonal for blocks)."""
    a = masses(config.source_mass, imp, n)
    b = masses(config.target_mass, imp[kept], k)
    if blocks == 1 and dropped_rows_suffice(config, a, b):
        # kept rows: computed if the record is read; our own vectors are normalised in place
        cost = dropped_rows_cost(vectors, kept, config, inplace=own_features)
        group_plan = transport_plan(cost.partial, a, b, config, kept=kept)
        cost.compact()  # the record keeps the dropped rows only until its cost is read
        return group_plan, cost
    # our own vectors are normalised in place (the caller's, from features=, are not)
    cost = cost_matrix(vectors, kept, config, seed=seed, inplace=own_features)
    if blocks == 1:
        return transport_plan(cost, a, b, config, kept=kept), cost

    def solve(rows, kb):  # the kept channels of this block, their own transport problem
        local = kept[(kept >= rows[0]) & (kept <= rows[-1])] - rows[0]
        cols = torch.searchsorted(kept, local + rows[0])
        sub_b = b[cols] / b[cols].sum()
        return local, transport_plan(cost[rows][:, cols], a[rows] / a[rows].sum(), sub_b, config, kept=local)

    _, group_plan = per_block(n, k, blocks, solve, weights=a)  # every block carries its own channels' mass
    return group_plan, cost


# ---------------------------------------------------------------------------------------------- merge

@dataclass
class Work:
    """The model the surgery changes (a copy, or the caller's with ``inplace=True``) and how to undo it.

    ``shares``: the caller's model, when the copy still shares with it the tensors the surgery
    replaces (:func:`~intrafusion_viz.merge._surgery.shared_tensors`)."""

    model: nn.Module
    groups: List[Group]
    frozen: Dict[str, bool]
    snapshot: Optional[ModelSnapshot]
    shares: Optional[nn.Module] = None


def work_copy(model: nn.Module, request: Request, selection: Selection, scored: Scored) -> Work:
    """The model to change: the caller's (``inplace=True``, with a snapshot of the layers it touches)
    or a copy that shares with it only the tensors the surgery replaces without writing into them."""
    trace, frozen = selection.trace, {name: p.requires_grad for name, p in model.named_parameters()}
    shares = None
    if request.authors_fold and not request.inplace:
        work = scored.model  # already the folded copy the authors' code prunes
    elif request.inplace:
        work = model
    elif request.faithful_fold:  # Model Folding's surgery writes into the layers it standardises
        work = private_copy(model)
    else:
        shared = shared_tensors(model, selection.originals, selection.pruned)
        work, shares = private_copy(model, share=shared), (model if shared else None)
    bound = bind_groups(trace.specs, work, trace.fold_pairs)
    # inplace=True: a failure half-way through the surgery puts the touched layers back as they were
    touched = ({name for name, _ in work.named_modules()} if request.authors_fold
               else {m.name for i in selection.pruned for m in bound[i].members})
    snapshot = ModelSnapshot(work, touched) if request.inplace else None
    return Work(work, bound, frozen, snapshot, shares)


def _folds(request: Request) -> bool:
    """Whether the surgery folds BatchNorms (the authors leave folded BatchNorms as identities)."""
    return request.fuse and request.config.fold_batchnorm and not request.authors_fold


@contextlib.contextmanager
def undo_on_failure(work: Work) -> Iterator[None]:
    """Inside the block each module keeps its train/eval mode; a failure restores the snapshot."""
    try:
        with saved_modes(work.model):
            yield
    except BaseException:
        if work.snapshot is not None:
            work.snapshot.restore()
        raise


def merge(work: Work, example_inputs, request: Request, selection: Selection, scored: Scored,
          plans: List[Planned], records: List[GroupResult]) -> Optional[Dict[int, torch.Tensor]]:
    """Step 4: merge every plan into ``work.model``, in place (``sequential=True``: plan and merge
    group by group, appending to ``records``); new Parameters keep the caller's ``requires_grad``.

    Returns Model Folding's repair factors of every group (``method="fold"``), else ``None``."""
    model, bound, fold = work.model, work.groups, _folds(request)
    if request.authors_fold and request.inplace:
        fold_batchnorm(model, example_inputs, inplace=True, bn_eps="authors")
    if request.sequential:  # each group planned on the network as the groups before it left it
        tracker, attention = IndexTracker(), {}
        for i in selection.pruned:
            vec = (checked_features(scored.features, model, bound[i])
                   if request.fuse and i not in selection.by_selection else None)
            record, planned = plan_group(i, vec, model, request, selection, scored)
            records.append(record)
            if record.attention:
                attention[i] = record.attention
            merge_plans(model, bound, [planned], fold, tracker, attention)
        records.sort(key=lambda r: r.index)
    elif request.faithful_fold:  # Model Folding's merge, group after group, with its data-free repair
        from ..repair._fold_repair import fold_surgery

        fold_scales = fold_surgery(model, bound, plans, {r.index: r.attention for r in records if r.attention},
                                   request.repair in ("data-free", "synthetic"))
    else:
        merge_plans(model, bound, plans, fold, attention={r.index: r.attention for r in records if r.attention})
    if work.shares is not None:  # whatever the surgery did not replace becomes the copy's own
        unshare(model, work.shares)
    for name, p in model.named_parameters():  # pruning makes new Parameters; keep frozen ones frozen
        sibling = name.rsplit(".", 1)[0] + ".weight"  # a bias created by folding follows its weight
        p.requires_grad_(work.frozen.get(name, work.frozen.get(sibling, True)))
    return fold_scales if request.faithful_fold else None


def merge_plans(work: nn.Module, bound: List[Group], plans: List[Planned], fold: bool,
                tracker: Optional[IndexTracker] = None, attention: Optional[dict] = None) -> None:
    """Fold, merge and restore BatchNorms of every planned group, in place (plans made beforehand).

    ``plans``: ``(index, kept, MergeMaps)`` per group; each group's dense maps are built when it is merged.
    ``attention``: ``{index: {name: AttentionPlan}}`` of the groups holding an ``nn.MultiheadAttention``.
    """
    folded = {}
    if fold:  # new tensors for the folded layers: a work copy may share the old ones with the caller
        for i, *_ in plans:
            folded.update(fold_group_batchnorms(work, bound[i], replace=True))
    tracker = tracker if tracker is not None else IndexTracker()
    for i, kept, maps in plans:  # one group's dense maps at a time (none for a selection: index operations)
        dense = (None, None, None) if maps.selection else maps.build()
        plan = maps.plan  # a compact plan knows where the maps are nonzero
        pattern = (plan.rows, plan.cols) if isinstance(plan, CompactPlan) and not plan.is_selection else None
        apply_merge(work, bound[i], kept, *dense, tracker, (attention or {}).get(i), pattern=pattern)
        del dense  # freed before the next group's are built
    if folded:
        for i, kept, maps in plans:
            restore_folded_batchnorms(work, bound[i], kept, maps.norm_map(), folded, tracker)


# ---------------------------------------------------------------------------------------------- repair

def repair_sources(model: nn.Module, example_inputs, request: Request, selection: Selection) -> Optional[dict]:
    """What the repair needs from the unpruned model, read before anything is merged.

    ``"data-free"``: the merged channels' BatchNorm statistics and weight correlations.  ``"synthetic"``:
    those too, plus inputs synthesised from the unpruned model's BatchNorm statistics (remembered for the
    last two models) and the BatchNorm affines of the pruned groups.
    """
    if request.repair not in ("data-free", "synthetic") or not selection.pruned:
        return None
    groups = [selection.originals[i] for i in selection.pruned]
    sources = {}
    if not request.faithful_fold:  # (Model Folding's own repair runs inside its surgery)
        from ..repair._data_free import snapshot_sources

        sources["data-free"] = snapshot_sources(model, groups)
    if request.repair == "synthetic":
        from ..repair._synthetic import cached_synthetic_inputs, can_synthesize, snapshot_affine

        if not can_synthesize(model, example_inputs):
            raise ValueError("repair='synthetic' needs a model with BatchNorm layers (running statistics) and one "
                             "floating-point input tensor; use repair='data-free', or ifv.repair(result, model, "
                             "batch, mode='bn') with real inputs")
        example = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        sources["synthetic"] = cached_synthetic_inputs(model, example, seed=request.seed, progress=request.progress)
        sources["affine"] = snapshot_affine(model, groups)
    return sources


def repair(result: PruneResult, sources: Optional[dict], request: Request,
           fold_scales: Optional[Dict[int, torch.Tensor]] = None) -> None:
    """Step 5: the statistics repair of the merged channels without data, in place (if asked).

    ``method="fold"`` repaired inside its surgery; its factors are kept on the result so that
    ``ifv.repair(result, model, mode="data-free")`` can apply them (once) when ``repair="none"``.
    """
    if fold_scales is not None and selection_pruned(result):
        result.fold_repair = {"scales": fold_scales, "applied": request.repair in ("data-free", "synthetic")}
    if sources is None:
        return
    if "data-free" in sources:
        from ..repair._data_free import data_free_repair

        data_free_repair(result, snapshot=sources["data-free"], inplace=True)
    if "synthetic" in sources:  # then every BatchNorm's statistics re-estimated on the synthetic inputs
        from ..repair._activations import _reset_bn_statistics
        from ..repair._data_aware import _kept_batchnorms, _restore_folded_affine
        from ..repair._data_free import _folded

        _restore_folded_affine(result.model, sources["affine"], [g for g in result.groups if _folded(result, g)],
                               signed=_kept_batchnorms(result))
        _reset_bn_statistics(result.model, sources["synthetic"])


def selection_pruned(result: PruneResult) -> bool:
    """Whether any group of the result lost channels."""
    return any(g.k < g.n for g in result.groups)


def sync_widths(model: nn.Module) -> None:
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


# ---------------------------------------------------------------------------------------------- record

def record(result: PruneResult, request: Request, selection: Selection) -> PruneResult:
    """Step 6: count the parameters after and warn once about the groups left unpruned."""
    result.params_after = sum(p.numel() for p in result.model.parameters())
    for g in result.groups:  # a group's figures name the model they came from
        g.model_name = type(result.model).__name__
    skipped = selection.skipped
    if skipped:
        reasons = "; ".join(reason for _, _, reason in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        warnings.warn(f"{len(skipped)} of {len(skipped) + len(selection.selected)} selected groups were left "
                      f"unpruned because their channels cannot be {'merged' if request.fuse else 'pruned'} (see "
                      f"PruneResult.skipped; on_unmergeable='default' prunes them by selection where possible, "
                      f"'raise' refuses): {reasons}", UserWarning, stacklevel=4)
    return result
