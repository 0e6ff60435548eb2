"""The first steps of :func:`intrafusion_viz.prune`: check the settings (:func:`check_arguments`) and
resolve the groups a call prunes and how many channels each keeps (:func:`resolve`).  Nothing here
changes a model."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

import torch.nn as nn

from ..groups._layer_rules import conv_blocks, head_multiple, kept_count, merge_problem, norm_blocks, round_up_to
from ..groups._trace import Group, _trace, bind_groups, resolve_group_keys
from ..merge._surgery import _check_mergeable, check_tied_weights
from ..plan._importance import resolve_importance
from ..plan._config import OTConfig
from ._result import num_kept

__all__ = ["METHODS", "Request", "Selection", "check_arguments", "resolve", "synthesizable"]

METHODS = ("intra-fusion", "default", "fold")
PRUNE_REPAIRS = ("auto", "none", "data-free", "synthetic")
ON_UNMERGEABLE = ("skip", "raise", "default")


# ---------------------------------------------------------------------------------------------- the settings

@dataclass
class Request:
    """:func:`prune`'s arguments, checked (``repair`` resolved: ``"none"``, ``"data-free"`` or ``"synthetic"``)."""

    method: str
    importance: object
    estimator: object
    config: OTConfig
    repair: str
    seed: int
    inplace: bool
    progress: bool
    sequential: bool
    on_unmergeable: Optional[str]
    features: Optional[Callable] = None
    batch: object = None
    loss_fn: Optional[Callable] = None

    @property
    def fuse(self) -> bool:
        """Whether channels are merged (Intra-Fusion, fold) rather than dropped."""
        return self.method in ("intra-fusion", "fold")

    @property
    def faithful_fold(self) -> bool:
        """``method="fold"`` planned at once: Model Folding's own vectors, merge and repair (``repair/_fold_repair.py``)."""
        return self.method == "fold" and not self.sequential

    @property
    def authors_fold(self) -> bool:
        """``bn_eps="authors"``: the paper's code folds every BatchNorm (without eps) before anything else."""
        return self.config.bn_eps == "authors"


def check_arguments(method: str, importance, config: Optional[OTConfig], seed, inplace, progress,
                    repair: Optional[str], sequential: bool, on_unmergeable: Optional[str],
                    features: Optional[Callable] = None, batch=None,
                    loss_fn: Optional[Callable] = None) -> Request:
    """Step 0: refuse bad settings with a message that says what to pass; resolve the importance."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    repair = "none" if repair is None else repair
    if repair not in PRUNE_REPAIRS:
        raise ValueError(f"repair must be one of {', '.join(map(repr, PRUNE_REPAIRS))} or None; got {repair!r} "
                         "(repairs that need data: ifv.repair(result, model, batch, mode=...))")
    config = config if config is not None else OTConfig()
    if not isinstance(config, OTConfig):
        raise TypeError(f"config must be an OTConfig, got {type(config).__name__}")
    if repair == "auto":  # data-free for plans that merge hard clusters (OTConfig.auto_repair)
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
    return Request(method, importance, estimator, config, repair, seed, inplace, progress, sequential,
                   on_unmergeable, features, batch, loss_fn)


def synthesizable(model, example_inputs, repair) -> bool:
    """Whether the default call may repair on synthetic inputs: ``model`` has BatchNorm statistics and one
    floating-point input, and (for ``repair="auto"``) making them fits ``SYNTHETIC_FLOP_BUDGET`` on this
    device; over it, the default call is Model Folding and a warning says how to ask for them anyway."""
    from ..repair._synthetic import SYNTHETIC_FLOP_BUDGET, can_synthesize, synthetic_affordable

    if not can_synthesize(model, example_inputs):
        return False
    if repair != "auto":
        return True
    affordable, flops = synthetic_affordable(model, example_inputs)
    if flops is None:  # the model cannot run the example: resolve() says why, in our words
        return False
    if not affordable:
        import warnings

        cost = f"{flops:.1e}"
        device = (example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs).device.type
        warnings.warn(f"prune's default call: making synthetic inputs for this model would take {cost} floating-point "
                      f"operations, more than its budget on {device} "
                      f"({SYNTHETIC_FLOP_BUDGET.get(device, SYNTHETIC_FLOP_BUDGET['cpu']):.0e}), so it runs Model "
                      "Folding (method='fold') with its data-free repair instead. For the best measured accuracy "
                      "without data pass config=ifv.OTConfig.capped(), repair='synthetic' (slow here; fast on a "
                      "GPU), or repair a result with ifv.repair(result, model, images, mode='bn') on a few hundred "
                      "unlabeled images", UserWarning, stacklevel=4)
    return affordable


# ---------------------------------------------------------------------------------------------- resolve

@dataclass
class Selection:
    """The groups a call prunes and how many channels each keeps (step :func:`resolve`).

    ``selected``: ``{group index: sparsity}`` of the groups pruned or kept whole; ``sizes``: ``{index:
    (n, k)}``; ``blocks``: the number of blocks (conv groups, GroupNorm groups) whose channels merge
    only among themselves; ``pruned``: indices with ``k < n`` (only these are scored and changed);
    ``by_selection``: indices that ``on_unmergeable="default"`` prunes by selection; ``skipped``:
    ``[(index, name, reason)]`` left unpruned.
    """

    trace: object
    originals: List[Group]
    selected: Dict[int, float]
    named: bool
    skipped: List[Tuple[int, str, str]] = field(default_factory=list)
    by_selection: Set[int] = field(default_factory=set)
    sizes: Dict[int, Tuple[int, int]] = field(default_factory=dict)
    blocks: Dict[int, int] = field(default_factory=dict)
    pruned: List[int] = field(default_factory=list)


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


def resolve(model: nn.Module, example_inputs, sparsity, groups, request: Request) -> Selection:
    """Step 1: trace the groups, select them, size them (blocks, heads) and refuse what cannot change.

    Nothing is changed; unmergeable groups are skipped or refused by ``request.on_unmergeable``.
    """
    trace = _trace(model, example_inputs)  # refuses TorchScript, other devices, inputs that do not fit
    originals = bind_groups(trace.specs, model, trace.fold_pairs)
    named = groups is not None or isinstance(sparsity, Mapping)
    selection = Selection(trace, originals, _select(originals, groups, sparsity), named)
    policy = request.on_unmergeable or ("raise" if named else "skip")
    selection.skipped, selection.by_selection = _unmergeable(
        originals, selection.selected, request.fuse, policy, strict=request.on_unmergeable is None)
    for i, _, _ in selection.skipped:
        del selection.selected[i]
    modules = dict(model.named_modules())
    for i, s in selection.selected.items():
        selection.blocks[i], selection.sizes[i] = _group_size(originals[i], s, modules)
    selection.pruned = [i for i in selection.selected if selection.sizes[i][1] < selection.sizes[i][0]]
    for i in selection.pruned:
        _check_mergeable(originals[i], is_selection=not request.fuse or i in selection.by_selection)
    check_tied_weights(model, originals, selection.pruned,
                       selection=(not request.fuse) or set(selection.by_selection))
    return selection


def _group_size(g: Group, sparsity: float, modules: Dict[str, nn.Module]) -> Tuple[int, Tuple[int, int]]:
    """``(blocks, (n, k))`` of a group at ``sparsity``: the blocks its channels merge within, and ``k``
    rounded so every block (conv group, GroupNorm group) and attention head keeps the same count."""
    n = g.size
    if num_kept(n, sparsity) == n:  # nothing to remove
        return 1, (n, n)
    conv, norm = conv_blocks(g.members, modules, n), norm_blocks(g.members, modules)
    gn_names = [m.name for m in g.members if m.role == "affine" and isinstance(modules[m.name], nn.GroupNorm)]
    k = kept_count(n, sparsity, conv, norm, num_kept, f"group {g.index} ({g.name!r}) at sparsity {sparsity:g}",
                   gn_names)
    heads = head_multiple(g.members, modules)
    if heads > 1:  # attention heads stay equal: keep a multiple of num_heads (with the blocks above)
        k = round_up_to(k, n, heads * conv * norm // math.gcd(heads, conv * norm))
    return conv * norm // math.gcd(conv, norm), (n, k)


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
