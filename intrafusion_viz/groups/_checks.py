"""Checks around tracing: inputs that fit the model, and the tracer's limits reported as such.

Refuses inputs of the wrong dtype, shape or device with a message that says what to pass; stops
channel shuffles and blown-up index lists (:class:`TracerError`); finds layers that run only in
training mode (auxiliary heads) so that they are traced too.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional

import torch
import torch.nn as nn
import torch_pruning as tp

from ._group import TracerError
from .._state import as_tuple, dtype_problem, model_device

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
