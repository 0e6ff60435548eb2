"""Coupled channel groups, traced once per model with Torch-Pruning's DependencyGraph.

Tracing is the slow part of structured pruning (a forward pass plus a graph walk), so it is done
once per model *structure* and cached as a static recipe (:class:`Member` lists).  The recipe is
then bound to any model with the same structure (the caller's model, or a private copy that is
about to be pruned) without tracing again.
"""
from __future__ import annotations

import contextlib
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
from .._state import as_tuple, dtype_problem, model_device

__all__ = ["Member", "Group", "find_groups", "resolve_group_keys", "UnsupportedLayerError", "TracerError"]


class UnsupportedLayerError(ValueError):
    """A layer in a group cannot be merged (or pruned) by this toolkit."""


class TracerError(RuntimeError):
    """Torch-Pruning's dependency tracer cannot follow an operation of the model (a limit of the tracer,
    not a fault of the model or of its inputs)."""


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
        conv group), ``"shift"`` / ``"scale"`` (a bare per-channel ``nn.Parameter`` added to or
        concatenated with the channels, e.g. ``pos_embedding``, ``class_token``, or multiplying them,
        e.g. ``layer_scale``), or ``"other"`` (a layer type we can prune by selection but not merge).
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
                 modules: Optional[Dict[str, object]] = None,
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
        if modules is None:  # name -> module table (bind_groups builds it once for all groups)
            modules = _module_table(model)
        self._table, self._built = modules, None  # the items are built on first use (most groups never are)

    @property
    def _items(self) -> tuple:
        if self._built is None:
            items = []
            for m in self.members:
                node = tp.dependency.Node(self._table[m.name], None, m.name)
                node.pruning_dim = m.pruning_dim
                item = GroupItem(_DependencyView(_handler(m.handler_name), node), list(m.local_idxs))
                item.root_idxs = list(m.root_idxs)
                items.append(item)
            self._built, self._table = tuple(items), None
        return self._built

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


def _module_table(model: nn.Module) -> Dict[str, object]:
    modules = dict(model.named_modules())
    modules.update(model.named_parameters())  # bare nn.Parameters are members too
    return modules


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


def _tracer_op(err: BaseException) -> str:
    """The operation Torch-Pruning's tracer was at when it failed, with the layers around it, or ``""``.

    Read from the innermost traceback frame that holds a graph node (Torch-Pruning's index-mapping and
    graph-building code keep the node they work on in a local variable ``node``).
    """
    tb, node, graph = err.__traceback__, None, getattr(err, "graph", None)
    while tb is not None:
        local = tb.tb_frame.f_locals
        cand = local.get("node")
        dep = local.get("new_dep")  # the dependency whose index mapping was running
        if isinstance(getattr(dep, "target", None), tp.dependency.Node):
            cand = dep.target
        if isinstance(cand, tp.dependency.Node):
            node = cand
        graph = next((v for v in local.values() if isinstance(v, tp.DependencyGraph)), graph)
        tb = tb.tb_next
    if node is None:
        return ""
    op = type(node.grad_fn).__name__ if node.grad_fn is not None else type(node.module).__name__
    kind = getattr(node.type, "name", str(node.type)).lower()
    where = _node_place(graph, node)
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} operation ({op}){' ' + where if where else ''}"


def _node_place(graph, node) -> str:
    """'after layer 'a' and before layer 'b'': the closest layers with parameters around a graph node."""
    names = getattr(graph, "_module2name", {}) or {}

    def nearest(start, attr):
        seen, frontier = set(), list(getattr(start, attr))
        while frontier:
            nxt = frontier.pop(0)
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            name = names.get(nxt.module) if isinstance(nxt.module, nn.Module) else None
            if name and any(True for _ in nxt.module.parameters(recurse=False)):
                return name
            frontier.extend(getattr(nxt, attr))
        return None

    before, after = nearest(node, "inputs"), nearest(node, "outputs")
    return (f"after layer {before!r} and before layer {after!r}" if before and after
            else f"after layer {before!r}" if before else f"before layer {after!r}" if after else "")


_VIEWS = ("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "_ReshapeAliasBackward0")


def _shuffled_dim(perm_fn) -> Optional[int]:
    """The input dimension a reshape -> transpose/permute pair shuffles (ShuffleNet's channel shuffle), or None.

    ``perm_fn`` is a TransposeBackward0 / PermuteBackward0 node whose input comes from a reshape that split
    one dimension into several; if the permutation changes the order of those pieces, flattening them again
    interleaves that dimension's entries: a fixed permutation that Torch-Pruning's index mapping ignores.
    """
    name = type(perm_fn).__name__
    view = perm_fn.next_functions[0][0] if perm_fn.next_functions else None
    if view is None or type(view).__name__ not in _VIEWS or not hasattr(view, "_saved_self_sym_sizes"):
        return None
    try:
        sizes_in = [int(v) for v in view._saved_self_sym_sizes]
        sizes_out = [int(v) for v in view._input_metadata[0].shape]
    except Exception:
        return None
    if name == "TransposeBackward0":
        d0, d1 = (int(perm_fn._saved_dim0) % len(sizes_out), int(perm_fn._saved_dim1) % len(sizes_out))
        perm = list(range(len(sizes_out)))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    else:
        perm = [int(d) % len(sizes_out) for d in perm_fn._saved_dims]
    pos = {d: i for i, d in enumerate(perm)}
    j = 0
    for i, size in enumerate(sizes_in):  # output dims j..k-1 hold input dim i
        k, prod = j, 1
        while k < len(sizes_out) and (prod < size or (k == j)):
            prod *= sizes_out[k]
            k += 1
        if prod != size:
            return None  # not a plain split of dimensions
        pieces = [d for d in range(j, k) if sizes_out[d] > 1]
        if len(pieces) > 1 and i in (1, len(sizes_in) - 1) and \
                any(pos[a] > pos[b] for a, b in zip(pieces, pieces[1:])):
            return i
        j = k
    return None


def _check_no_channel_shuffle(DG, model: nn.Module) -> None:
    """Refuse models that permute channels by reshape -> transpose -> reshape (ShuffleNet's channel shuffle).

    Torch-Pruning's tracer maps channel indices through the reshapes but not through the transpose, so the
    groups it returns would remove the wrong input columns: the pruned model would silently compute another
    function.
    """
    for node in list(DG.module2node.values()):
        fn = node.grad_fn
        if fn is None or type(fn).__name__ not in ("TransposeBackward0", "PermuteBackward0"):
            continue
        dim = _shuffled_dim(fn)
        if dim is None:
            continue
        where = _node_place(DG, node)
        raise TracerError(
            f"{type(model).__name__} shuffles the entries of dimension {dim} (its channels) with a reshape, "
            f"{type(fn).__name__.replace('Backward0', '').lower()} and reshape (a channel shuffle, as in "
            f"ShuffleNet){' ' + where if where else ''}. Torch-Pruning's dependency tracer does not follow "
            "that permutation (a limitation of the tracer: Torch-Pruning would prune the wrong channels), so "
            "this toolkit refuses the model rather than change its function. Replace the shuffle by a fixed "
            "channel permutation layer, or prune the parts before and after it as separate models")


_INDEX_BUDGET = 2.0  # index lists may hold this many times the largest parameter dimension


class _IndexBlowup(Exception):
    """An index mapping of Torch-Pruning's tracer returned more indices than any layer has channels."""


@contextlib.contextmanager
def _index_budget(limit: int):
    """Stop Torch-Pruning's index mappings when one returns more than ``limit`` indices.

    On Swin Transformer and MaxViT (window partitions: reshapes and permutes of the channels-last
    activations), the tracer maps a group's channel indices through reshapes as if they flattened
    channels, 32 indices per index at each step, and the lists grow without bound (minutes and tens of
    GB, in Torch-Pruning's own pruner too).  A real mapping never needs more indices than the largest
    layer dimension (a flatten into a Linear gives exactly its ``in_features``), so past twice that the
    trace is stopped and reported instead.
    """
    from torch_pruning.dependency import index_mapping as im

    saved = {cls: cls.__dict__["__call__"] for cls in vars(im).values()
             if isinstance(cls, type) and cls.__name__.endswith("IndexMapping") and "__call__" in cls.__dict__}

    def guarded(call):
        def checked(self, idxs):
            out = call(self, idxs)
            if len(out) > limit:
                raise _IndexBlowup(f"{type(self).__name__} turned {len(idxs)} indices into {len(out)}, "
                                   f"more than {_INDEX_BUDGET:g} times the largest layer dimension")
            return out
        return checked

    for cls, call in saved.items():
        cls.__call__ = guarded(call)
    try:
        yield
    finally:
        for cls, call in saved.items():
            cls.__call__ = call


def _blowup_error(model: nn.Module, example_inputs, err: _IndexBlowup) -> TracerError:
    op = _tracer_op(err)
    shapes = [tuple(x.shape) for x in as_tuple(example_inputs) if torch.is_tensor(x)]
    return TracerError(
        f"Torch-Pruning's dependency tracer cannot map the channels of {type(model).__name__} through its "
        f"reshapes{' at ' + op if op else ''}: {err}. Its index lists grow without bound (as on Swin "
        "Transformer's and MaxViT's window partitions), which takes minutes and many GB before anything can "
        f"be pruned, so tracing stopped (example_inputs of shape {shapes}). This is a limitation of "
        "Torch-Pruning's tracer, not a problem with the model or its inputs; Torch-Pruning's own pruner "
        "cannot prune this model either. Prune a model without window partitions, or report it to Torch-Pruning")


def _groups_within_budget(DG, model: nn.Module, example_inputs):
    """``DG.get_all_groups`` for conv/linear roots, stopped with a TracerError when its index lists blow up."""
    largest = max((max(p.shape, default=1) for p in model.parameters()), default=1)
    limit = int(_INDEX_BUDGET * largest)
    groups = DG.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear))
    while True:
        try:
            with _index_budget(limit):
                group = next(groups)
        except StopIteration:
            return
        except _IndexBlowup as err:
            err.graph = DG
            raise _blowup_error(model, example_inputs, err) from err
        yield group


def _trace_error(model: nn.Module, example_inputs, err: Exception) -> Exception:
    """Say why tracing failed: the inputs' dtype, their shape, or Torch-Pruning's tracer itself."""
    inputs = as_tuple(example_inputs)
    shapes = [tuple(x.shape) for x in inputs if torch.is_tensor(x)]
    if isinstance(err, MemoryError):
        return TracerError(
            f"Torch-Pruning's dependency tracer ran out of memory on {type(model).__name__} with example_inputs "
            f"of shape {shapes}; this is a limit of the tracer: trace with the smallest input the model "
            "accepts (batch 1, small images)")
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
    op = _tracer_op(err)
    return TracerError(
        f"Torch-Pruning's dependency tracer failed on this model, {type(model).__name__}"
        f"{' at ' + op if op else ''} ({type(err).__name__}: {err}), although the model runs on "
        f"example_inputs of shape {shapes}. This is a limitation of Torch-Pruning's tracer, not a problem with "
        "the model or its inputs: Torch-Pruning cannot prune this model either. Replace that operation with "
        "standard layers (e.g. a channel shuffle by a fixed permutation), prune the rest of the model "
        "separately, or report it to Torch-Pruning")


class _called_layers:
    """Context: the names of the layers with parameters that run inside it (forward hooks, removed on exit)."""

    def __init__(self, model: nn.Module):
        self.model, self.names, self.hooks = model, set(), []

    def __enter__(self):
        for name, module in self.model.named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                self.hooks.append(module.register_forward_hook(
                    lambda mod, inp, out, name=name: self.names.add(name)))
        return self.names

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        return False


def _training_modes(model: nn.Module) -> None:
    """Training mode for the model's control flow (auxiliary heads), evaluation mode for the layers whose
    computation depends on it (BatchNorm keeps its statistics and takes batch 1, dropout is off)."""
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                               nn.modules.instancenorm._InstanceNorm)):
            module.eval()


def _forward_in_training_mode(model: nn.Module, example_inputs):
    _training_modes(model)
    try:
        return model(*as_tuple(example_inputs))
    finally:
        model.eval()


def _train_only_layers(model: nn.Module, example_inputs, called_in_eval) -> List[str]:
    """Layers with parameters that run in training mode but not in evaluation mode (e.g. GoogLeNet's and
    Inception v3's auxiliary heads).  One extra forward pass, only when some layer did not run in eval mode."""
    idle = [n for n, m in model.named_modules()
            if n not in called_in_eval and any(True for _ in m.parameters(recurse=False))]
    if not idle:
        return []
    try:
        with torch.no_grad(), _called_layers(model) as called:
            _forward_in_training_mode(model, example_inputs)
    except Exception as err:
        raise ValueError(
            f"{type(model).__name__} has layers that do not run in evaluation mode ({', '.join(map(repr, idle[:4]))}"
            f"{' ...' if len(idle) > 4 else ''}) and fails in training mode on example_inputs of shape "
            f"{[tuple(x.shape) for x in as_tuple(example_inputs) if torch.is_tensor(x)]} ({type(err).__name__}: "
            f"{err}), so the branches it runs only in training cannot be traced; pass example_inputs on which "
            "the model also runs in training mode (e.g. its training image size)") from err
    return [n for n in idle if n in called]


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
