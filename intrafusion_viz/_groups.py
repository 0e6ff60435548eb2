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
from torch_pruning._helpers import GroupItem
from torch_pruning.pruner import function as tpf

from ._layer_rules import is_affine, merge_problem
from ._state import as_tuple, dtype_problem, model_device

__all__ = ["Member", "Group", "find_groups", "resolve_group_keys", "UnsupportedLayerError"]


class UnsupportedLayerError(ValueError):
    """A layer in a group cannot be merged (or pruned) by this toolkit."""


# role of a group member, from the Torch-Pruning handler that prunes it
_OUT_FNS = (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels)
_IN_FNS = (tpf.prune_conv_in_channels, tpf.prune_linear_in_channels)
_DW_FNS = (tpf.prune_depthwise_conv_out_channels, tpf.prune_depthwise_conv_in_channels)
_NORM_FNS = (tpf.prune_batchnorm_out_channels, tpf.prune_batchnorm_in_channels)


@dataclass(frozen=True)
class Member:
    """One layer of a group and how its tensors hold the group's channels.

    Attributes
    ----------
    name : str
        Module name in ``model.named_modules()``.
    role : str
        ``"out"`` (a conv/linear producing the channels: rows and bias), ``"in"`` (a conv/linear
        consuming them: columns), ``"norm"`` (BatchNorm), ``"depthwise"`` (a depthwise conv: its
        kernel and bias are the channel's row), ``"affine"`` (LayerNorm, GroupNorm, RMSNorm,
        InstanceNorm, PReLU: one scale/shift per channel, merged like BatchNorm parameters),
        ``"grouped"`` (a grouped conv consuming the channels: channels merge only inside their own
        conv group), or ``"other"`` (a layer type we can prune by selection but not merge).
    layer_type : str
        Class name of the module, for messages and figures.
    dim : int
        Weight dimension that indexes the channels.
    local_idxs : tuple of int
        Positions along ``dim`` that belong to the group (several per channel after a flatten).
    root_idxs : tuple of int
        For each local position, the group channel (0..n-1) it belongs to.
    fold_from : str or None
        For ``"norm"`` members, the conv/linear whose output feeds only this BatchNorm, so the
        BatchNorm can be folded into it exactly.
    """

    name: str
    role: str
    layer_type: str
    dim: int
    local_idxs: Tuple[int, ...]
    root_idxs: Tuple[int, ...]
    fold_from: Optional[str] = None
    handler_name: str = ""
    pruning_dim: int = -1
    conv_groups: int = 1  # ``groups`` of a producing grouped conv (its channels merge per conv group)


class _DependencyView:
    """What Torch-Pruning's importance objects read from a dependency, without its pruning ``__call__``."""

    __slots__ = ("trigger", "handler", "source", "target", "index_mapping")

    def __init__(self, handler, node):
        self.trigger = self.handler = handler
        self.source = self.target = node
        self.index_mapping = [None, None]

    @property
    def layer(self):
        return self.target.module

    @property
    def pruning_fn(self):
        return self.handler

    def __repr__(self) -> str:
        return f"[{self.target.name}] ({getattr(self.handler, '__name__', self.handler)})"


class Group:
    """A set of coupled layers whose ``size`` channels are removed (or merged) together.

    It reads like a Torch-Pruning ``Group`` (a sequence of ``(dep, idxs)`` items with ``root_idxs``),
    so Torch-Pruning's importance objects accept it directly, but it has none of its pruning methods:
    it holds the caller's modules, and only :func:`intrafusion_viz.prune` changes a model.  The recipe
    it was built from is in ``members``.

    Attributes
    ----------
    index : int
        Position in the list returned by :func:`find_groups` (forward order of the root layers).
    paper_index : int
        The Intra-Fusion paper's numbering, counted from the output backwards as its code walks the
        modules (``G1`` of VGG11-BN is ``features.22``; of ResNet18, ``layer4.1.conv1``; ``G0`` is
        the group feeding the classifier).  ``-1`` for output groups (``include_outputs=True``).
    name : str
        Name of the group's first producing layer (its root).
    size : int
        Number of channels ``n``.
    members : list of Member
        Every parametrised layer in the group with its role.
    mergeable : bool
        Whether Intra-Fusion (and ``method="fold"``) can merge this group's channels.
    unmergeable_reason : str or None
        Why not (``None`` when mergeable); :func:`intrafusion_viz.prune` skips such a group when
        pruning the whole model and records the reason in ``PruneResult.skipped``.
    """

    def __init__(self, index: int, paper_index: int, name: str, size: int,
                 members: Sequence[Member], model: nn.Module, fold_pairs: Optional[Dict[str, str]] = None,
                 unmergeable_reason: Optional[str] = None, blocked: Optional[str] = None):
        self.unmergeable_reason = unmergeable_reason
        self.blocked = blocked  # why no method can prune it (None: default pruning can)
        self.mergeable = unmergeable_reason is None
        self.fold_pairs = dict(fold_pairs or {})  # conv/linear name -> BatchNorm folded into it
        self.index = index
        self.paper_index = paper_index
        self.name = name
        self.size = size
        self.members = list(members)
        self.model = model
        modules = dict(model.named_modules())
        modules.update(model.named_parameters())  # bare nn.Parameters are members too
        items = []
        for m in self.members:
            node = tp.dependency.Node(modules[m.name], None, m.name)
            node.pruning_dim = m.pruning_dim
            item = GroupItem(_DependencyView(_handler(m.handler_name), node), list(m.local_idxs))
            item.root_idxs = list(m.root_idxs)
            items.append(item)
        self._items = tuple(items)

    def __getitem__(self, k):
        return self._items[k]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    @property
    def items(self) -> tuple:
        return self._items

    @property
    def layers(self) -> List[Tuple[str, str, nn.Module]]:
        """``(name, role, module)`` for every member."""
        modules = dict(self.model.named_modules())
        modules.update(self.model.named_parameters())
        return [(m.name, m.role, modules[m.name]) for m in self.members]

    def __repr__(self) -> str:
        roles = ", ".join(f"{m.name}:{m.role}" for m in self.members)
        why = "" if self.mergeable else f", unmergeable_reason={self.unmergeable_reason!r}"
        return (f"Group(index={self.index}, name={self.name!r}, size={self.size}, members=[{roles}], "
                f"mergeable={self.mergeable}{why})")

    __str__ = __repr__


def _handler(name: str):
    return getattr(tpf, name) if name else None


_HANDLER_NAMES = {
    v: k for k, v in vars(tpf).items() if k.startswith("prune_") and callable(v)
}


def _handler_name(fn) -> str:
    for f, name in _HANDLER_NAMES.items():
        if f == fn:
            return name
    return ""


def _member_of(dep, idxs, root_idxs, name: str, fold_from: Optional[str],
               owner: Optional[Tuple[str, nn.Module]] = None) -> Optional[Member]:
    module = dep.target.module
    fn = dep.handler
    hname = _handler_name(fn)
    if isinstance(module, nn.Parameter) and owner is not None and is_affine(owner[1]):
        # a norm layer Torch-Pruning does not know (RMSNorm): its weight is traced as a bare Parameter
        return Member(owner[0], "affine", type(owner[1]).__name__, 0, tuple(int(i) for i in idxs),
                      tuple(int(r) for r in root_idxs), None, hname, dep.target.pruning_dim)
    if isinstance(module, nn.Parameter):
        return Member(name, "other", "Parameter", dep.target.pruning_dim, tuple(idxs),
                      tuple(root_idxs), None, hname, dep.target.pruning_dim)
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
    else:
        role, dim = "other", 0
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


def check_inputs(model: nn.Module, example_inputs) -> None:
    """Raise a clear error when ``model`` is not something we can trace or ``example_inputs`` cannot be fed to it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    scripted = [name or "the model" for name, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    if scripted:
        raise TypeError(
            f"{scripted[0]} is a TorchScript module (torch.jit.script or torch.jit.trace), whose layers "
            "Torch-Pruning cannot trace; prune the original nn.Module and script or trace the pruned model "
            "afterwards")
    if torch.is_inference_mode_enabled():  # the tracer needs autograd: it would find no groups at all
        raise RuntimeError("find_groups and prune trace the model with autograd, which torch.inference_mode() "
                           "turns off; call them outside the inference_mode block (torch.no_grad() is fine)")
    device = model_device(model)
    for x in as_tuple(example_inputs):
        if not torch.is_tensor(x):
            raise TypeError(f"example_inputs must be a tensor or a tuple of tensors, got {type(x).__name__}")
        if device is not None and x.device != device:
            raise ValueError(
                f"example_inputs are on {x.device} but the model is on {device}; "
                f"move them with example_inputs.to({str(device)!r})")


def _trace_error(model: nn.Module, example_inputs, err: Exception) -> Exception:
    """Say why tracing failed: the inputs' dtype, their shape, or Torch-Pruning's tracer itself."""
    inputs = as_tuple(example_inputs)
    shapes = [tuple(x.shape) for x in inputs if torch.is_tensor(x)]
    try:  # a plain forward pass tells the inputs' fault from the tracer's
        with torch.no_grad():
            model.eval()(*inputs)
    except Exception as plain:
        problem = dtype_problem(model, inputs)
        if problem is not None:
            return TypeError(f"example_inputs do not fit the model: {problem}")
        return ValueError(
            f"could not run the model on example_inputs of shape {shapes} ({type(plain).__name__}: {plain}). "
            "Pass a batch shaped like the model's real inputs (e.g. torch.randn(1, 3, 32, 32)).")
    return RuntimeError(
        f"Torch-Pruning's dependency tracer failed on this model ({type(err).__name__}: {err}), although the "
        f"model runs on example_inputs of shape {shapes}; the model uses an operation the tracer does not "
        "support: prune a model built from standard layers, or report it to Torch-Pruning")


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
        with torch.enable_grad():
            DG = tp.DependencyGraph().build_dependency(template, example_inputs=example_inputs, verbose=False)
    except Exception as err:
        raise _trace_error(template, example_inputs, err) from err

    names = {m: n for n, m in template.named_modules()}
    modules_by_name = dict(template.named_modules())
    order = {n: i for i, n in enumerate(names.values())}
    specs, output_specs = [], []
    for g in DG.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
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
            m = _member_of(dep, idxs, item.root_idxs, name, fold_from, owner)
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
        consumers = [m for m in members if m.role not in ("out", "norm")]
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
    def numbered(why, i, s):
        return None if why is None else why.replace(f"group {s.name!r}", f"group {i} ({s.name!r})", 1)

    return [Group(i, s.paper_index, s.name, s.size, s.members, model, fold_pairs,
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
    >>> from intrafusion_viz._groups import resolve_group_keys
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
