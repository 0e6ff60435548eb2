"""Coupled channel groups, traced once per model with Torch-Pruning's DependencyGraph.

Tracing is the slow part of structured pruning (a forward pass plus a graph walk), so it is done
once per model *structure* and cached as a static recipe (:class:`Member` lists).  The recipe is
then bound to any model with the same structure (the caller's model, or a private copy that is
about to be pruned) without tracing again.
"""
from __future__ import annotations

import copy
import numbers
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp

from ._checks import (_called_layers, _check_no_channel_shuffle, _forward_in_training_mode, _groups_within_budget,
                      _train_only_layers, _trace_error, check_inputs)
from ._group import (_DW_FNS, _IN_FNS, _NORM_FNS, _OUT_FNS, Group, Member, TracerError, UnsupportedLayerError,  # noqa: F401 (re-exported)
                     _handler, _handler_name, _module_table)
from ._layer_rules import is_affine, merge_problem
from .._state import as_tuple


# ops a bare Parameter may pass through on its way to the op that uses it (they move values, not mix them)
_PASS_THROUGH = ("ExpandBackward", "ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward",
                 "PermuteBackward", "TransposeBackward", "UnsqueezeBackward", "SqueezeBackward",
                 "CloneBackward", "ToCopyBackward", "RepeatBackward")


def _parameter_role(DG, param: nn.Parameter) -> str:
    """``"shift"`` if every use of ``param`` adds it to (or concatenates it with) the channels,
    ``"scale"`` if every use multiplies them, else ``"other"`` (prunable by selection only)."""
    node = DG.module2node.get(param)
    if node is None:
        return "other"
    uses, frontier, seen = set(), list(node.outputs), set()
    while frontier:
        nxt = frontier.pop()
        if id(nxt) in seen:
            continue
        seen.add(id(nxt))
        op = type(nxt.grad_fn).__name__.rstrip("0123456789") if nxt.grad_fn is not None else ""
        if nxt.type == tp.ops.OPTYPE.CONCAT:
            uses.add("shift")
        elif op in ("AddBackward", "SubBackward"):
            uses.add("shift")
        elif op == "MulBackward":
            uses.add("scale")
        elif op in _PASS_THROUGH or nxt.type in (tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.EXPAND):
            frontier.extend(nxt.outputs)
        else:
            uses.add("other")
    return uses.pop() if len(uses) == 1 else "other"


def _member_of(dep, idxs, root_idxs, name: str, fold_from: Optional[str],
               owner: Optional[Tuple[str, nn.Module]] = None, DG=None) -> Optional[Member]:
    module = dep.target.module
    fn = dep.handler
    hname = _handler_name(fn)
    if isinstance(module, nn.Parameter) and owner is not None and is_affine(owner[1]):
        # a norm layer Torch-Pruning does not know (RMSNorm): its weight is traced as a bare Parameter
        return Member(owner[0], "affine", type(owner[1]).__name__, 0, tuple(int(i) for i in idxs),
                      tuple(int(r) for r in root_idxs), None, hname, dep.target.pruning_dim)
    if isinstance(module, nn.Parameter):
        role = _parameter_role(DG, module) if DG is not None else "other"
        return Member(name, role, "Parameter", dep.target.pruning_dim, tuple(int(i) for i in idxs),
                      tuple(int(r) for r in root_idxs), None, hname, dep.target.pruning_dim)
    has_params = any(True for _ in module.parameters(recurse=False))
    if not has_params and not isinstance(module, nn.modules.batchnorm._BatchNorm) \
            and not is_affine(module):  # a norm without affine still holds its channel count
        return None  # parameter-free op (add, concat, flatten, ...): nothing to merge
    transposed = getattr(module, "transposed", False)
    conv_groups = 1
    if fn in _DW_FNS:
        role, dim = "depthwise", 0
    elif any(fn == f for f in _OUT_FNS):
        role, dim = "out", (1 if transposed else 0)
    elif any(fn == f for f in _IN_FNS):
        role, dim = "in", (0 if transposed else 1)
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
            role = "grouped"
    elif any(fn == f for f in _NORM_FNS):
        role, dim = "norm", 0
    elif is_affine(module):
        role, dim = "affine", 0
    else:  # an embedding holds its channels in its columns
        role, dim = "other", (1 if isinstance(module, nn.Embedding) else 0)
    if role == "out" and isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        conv_groups = module.groups  # its rows are ordinary rows, merged inside their conv group
    return Member(name, role, type(module).__name__, dim, tuple(int(i) for i in idxs),
                  tuple(int(r) for r in root_idxs), fold_from if role == "norm" else None,
                  hname, dep.target.pruning_dim, conv_groups)


def _foldable_producer(DG, bn: nn.Module, names: Dict[nn.Module, str]) -> Optional[str]:
    """Name of the conv/linear feeding only ``bn``, if BatchNorm can be folded into it."""
    if not getattr(bn, "track_running_stats", False) or bn.running_mean is None:
        return None
    node = DG.module2node.get(bn)
    if node is None or len(node.inputs) != 1:
        return None
    prev = node.inputs[0]
    layer = prev.module
    if not isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)) or len(prev.outputs) != 1:
        return None
    out_ch = layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features
    if out_ch != bn.num_features:
        return None
    return names.get(layer)


@dataclass(frozen=True)
class _GroupSpec:
    name: str
    size: int
    members: Tuple[Member, ...]
    order: int
    last_order: int = 0  # position of the group's last producer in named_modules()
    paper_index: int = -1
    problem: Optional[str] = None  # why its channels cannot be merged (None: mergeable)
    blocked: Optional[str] = None  # why it cannot be pruned at all, by any method


@dataclass
class _Trace:
    signature: tuple
    specs: List[_GroupSpec]
    output_specs: List[_GroupSpec]
    fold_pairs: Dict[str, str]


_TRACE_CACHE: "weakref.WeakKeyDictionary[nn.Module, _Trace]" = weakref.WeakKeyDictionary()


def _signature(model: nn.Module, example_inputs) -> tuple:
    params = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters())
    mods = tuple((n, type(m).__name__) for n, m in model.named_modules())
    shapes = tuple(tuple(x.shape) if torch.is_tensor(x) else repr(x) for x in as_tuple(example_inputs))
    return params, mods, shapes


def _trace(model: nn.Module, example_inputs) -> _Trace:
    check_inputs(model, example_inputs)
    sig = _signature(model, example_inputs)
    cached = _TRACE_CACHE.get(model)
    if cached is not None and cached.signature == sig:
        return cached

    template = copy.deepcopy(model)  # tracing switches to eval mode: never touch the caller's model
    for p in template.parameters():
        p.requires_grad_(True)
    try:
        with torch.enable_grad(), _called_layers(template) as called:
            DG = tp.DependencyGraph().build_dependency(template, example_inputs=example_inputs, verbose=False)
    except Exception as err:
        raise _trace_error(template, example_inputs, err) from err
    train_only = _train_only_layers(template, example_inputs, called)
    if train_only:  # auxiliary heads: trace the training-mode graph, which holds them too
        try:
            with torch.enable_grad():
                DG = tp.DependencyGraph().build_dependency(
                    template, example_inputs=example_inputs, verbose=False, forward_fn=_forward_in_training_mode)
        except Exception as err:
            raise TracerError(
                f"layers {', '.join(map(repr, train_only[:4]))}{' ...' if len(train_only) > 4 else ''} of "
                f"{type(model).__name__} run only in training mode, and Torch-Pruning's tracer failed on the "
                f"training-mode graph ({type(err).__name__}: {err}); pruning only the evaluation-mode graph "
                "would leave them unpruned and the pruned model would fail in training mode. Remove those "
                "branches (e.g. aux_logits=False) before pruning") from err
    _check_no_channel_shuffle(DG, model)

    names = {m: n for n, m in template.named_modules()}
    modules_by_name = dict(template.named_modules())
    order = {n: i for i, n in enumerate(names.values())}
    specs, output_specs = [], []
    for g in _groups_within_budget(DG, template, example_inputs):
        members = []
        for item in g:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            name = names.get(module)
            owner = None
            if name is None and isinstance(module, nn.Parameter):
                name = DG._param_to_name.get(module, "<parameter>")
                owner_name = name.rsplit(".", 1)[0] if "." in name else None
                if owner_name is not None and owner_name in modules_by_name:
                    owner = (owner_name, modules_by_name[owner_name])
            if name is None:
                continue
            fold_from = None
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                fold_from = _foldable_producer(DG, module, names)
            m = _member_of(dep, idxs, item.root_idxs, name, fold_from, owner, DG)
            if m is not None:
                members.append(m)
        producers = [m for m in members if m.role in ("out", "depthwise", "grouped")]
        if not producers:
            continue
        root = min(producers, key=lambda m: order.get(m.name, 1 << 30))
        size = len(set(producers[0].root_idxs))
        last = max(order.get(m.name, -1) for m in producers)
        spec = _GroupSpec(root.name, size, tuple(members), order.get(root.name, 1 << 30), last,
                          problem=merge_problem(members, modules_by_name, size, name=root.name))
        consumers = [m for m in members if m.role not in ("out", "norm", "shift", "scale")]
        (specs if consumers else output_specs).append(spec)

    specs, output_specs = _with_invisible_norms(specs, output_specs, template)
    specs.sort(key=lambda s: s.order)
    output_specs.sort(key=lambda s: s.order)
    specs = _with_paper_numbering(specs)
    fold_pairs = {m.fold_from: m.name for s in specs + output_specs for m in s.members
                  if m.role == "norm" and m.fold_from is not None}
    trace = _Trace(sig, specs, output_specs, fold_pairs)
    _TRACE_CACHE[model] = trace
    return trace


def _with_invisible_norms(specs, output_specs, template: nn.Module):
    """Refuse groups a norm layer without parameters may normalise when the tracer cannot see it.

    Torch-Pruning traces through a layer type it does not know (``nn.RMSNorm``) op by op; with a
    weight it is a member (the weight), without one it is invisible, and pruning its channels would
    leave its ``normalized_shape`` behind.  Every group of that width is marked unmergeable.
    """
    from dataclasses import replace

    seen = {m.name for s in specs + output_specs for m in s.members}
    invisible = [(name, int(m.normalized_shape[-1])) for name, m in template.named_modules()
                 if name not in seen and is_affine(m) and not any(True for _ in m.parameters(recurse=False))
                 and isinstance(getattr(m, "normalized_shape", None), tuple)]
    if not invisible:
        return specs, output_specs

    def mark(s):
        names = [name for name, width in invisible if width == s.size]
        if not names or s.problem is not None:
            return s
        what = type(template.get_submodule(names[0])).__name__
        why = (f"group {s.name!r} may feed {names[0]!r} ({what} without parameters), which the tracer cannot "
               "see; give it a weight (elementwise_affine=True) so its channels can be followed")
        return replace(s, problem=why, blocked=why)
    return [mark(s) for s in specs], [mark(s) for s in output_specs]


def _with_paper_numbering(specs: List[_GroupSpec]) -> List[_GroupSpec]:
    """Number groups as the Intra-Fusion paper's code does (its ``get_all_groups_in_order``).

    That code walks ``model.named_modules()`` backwards and opens a group at the first conv/linear
    whose output channels no earlier group holds; the output classifier is left out.  A group's
    number is therefore its rank by its *last* producer in module order: ResNet18's layer4 residual
    stream (last producer ``layer4.1.conv2``) is 0 and ``layer4.1.conv1`` is G1.
    """
    from dataclasses import replace

    ranked = sorted(range(len(specs)), key=lambda i: -specs[i].last_order)
    rank = {i: r for r, i in enumerate(ranked)}
    return [replace(s, paper_index=rank[i]) for i, s in enumerate(specs)]


def bind_groups(specs: Sequence[_GroupSpec], model: nn.Module,
                fold_pairs: Optional[Dict[str, str]] = None) -> List[Group]:
    """Bind traced group recipes to ``model`` (same structure as the traced one)."""
    modules = _module_table(model)

    def numbered(why, i, s):
        return None if why is None else why.replace(f"group {s.name!r}", f"group {i} ({s.name!r})", 1)

    return [Group(i, s.paper_index, s.name, s.size, s.members, model, fold_pairs, modules,
                  unmergeable_reason=numbered(s.problem, i, s), blocked=numbered(s.blocked, i, s))
            for i, s in enumerate(specs)]


def resolve_group_keys(groups: Sequence[Group], keys) -> List[int]:
    """Indices of the groups named by ``keys``: one meaning of a group key in every entry point.

    A key is a group index (``int``), a group name (the root layer, e.g. ``"features.22"``) or the
    paper's label (``"G1"``).  ``prune``, the sweeps and the dashboards all resolve keys here.

    Parameters
    ----------
    groups : sequence of Group
        As returned by :func:`find_groups`.
    keys : int, str, or iterable of int / str, or None
        ``None`` selects every group.  A single key is accepted on its own (a string is one key,
        never a sequence of characters).

    Returns
    -------
    list of int
        Group indices, ascending, without repeats.

    Examples
    --------
    >>> import torch, intrafusion_viz as ifv
    >>> from intrafusion_viz.groups._trace import resolve_group_keys
    >>> groups = ifv.find_groups(ifv.models.vgg11_bn(), torch.randn(1, 3, 32, 32))
    >>> resolve_group_keys(groups, ["features.22", "G2", 0])
    [0, 5, 6]
    """
    if keys is None:
        return [g.index for g in groups]
    if isinstance(keys, (str, int)) or not hasattr(keys, "__iter__"):
        keys = [keys]
    by_name = {g.name: g.index for g in groups}
    by_paper = {f"G{g.paper_index}": g.index for g in groups}
    indices = set()
    for key in keys:
        if isinstance(key, str):
            if key in by_name:
                indices.add(by_name[key])
            elif key in by_paper:
                indices.add(by_paper[key])
            else:
                raise KeyError(f"no group named {key!r}; use a group index (0..{len(groups) - 1}), a root "
                               f"layer name ({', '.join(list(by_name)[:6])}{', ...' if len(by_name) > 6 else ''}) "
                               f"or a paper label (G0..G{len(groups) - 1})")
        elif isinstance(key, bool) or not isinstance(key, numbers.Integral):
            raise TypeError(f"a group key must be an int index or a str name, got {type(key).__name__} {key!r}")
        elif not 0 <= key < len(groups):
            raise IndexError(f"group index {key!r} out of range: the model has {len(groups)} groups "
                             f"(0..{len(groups) - 1})")
        else:
            indices.add(int(key))
    return sorted(indices)


def find_groups(model: nn.Module, example_inputs, *, include_outputs: bool = False) -> List[Group]:
    """Find the coupled channel groups of ``model``.

    Parameters
    ----------
    model : nn.Module
        Any model Torch-Pruning can trace.  It is not modified (tracing runs on a private copy).
    example_inputs : Tensor or tuple of Tensor
        A batch shaped like the model's inputs, e.g. ``torch.randn(1, 3, 32, 32)``, on the model's device.
    include_outputs : bool
        Also return groups whose channels are model outputs (the final classifier's classes).

    Returns
    -------
    list of Group
        In forward order of their root layers; ``groups[i].index == i``.  The result is cached per
        model, so calling again (or calling :func:`prune`) does not trace again.

    Examples
    --------
    >>> import torch, intrafusion_viz as ifv
    >>> model = ifv.models.vgg11_bn()
    >>> groups = ifv.find_groups(model, torch.randn(1, 3, 32, 32))
    >>> [g.name for g in groups][:2], groups[6].paper_index
    (['features.0', 'features.4'], 1)
    """
    trace = _trace(model, example_inputs)
    specs = trace.specs + (trace.output_specs if include_outputs else [])
    if include_outputs:
        specs = sorted(specs, key=lambda s: s.order)
    return bind_groups(specs, model, trace.fold_pairs)
