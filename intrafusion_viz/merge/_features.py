"""The channel vectors a transport cost compares: each channel's producer rows, biases and consumer columns."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..groups._layer_rules import merge_problem
from ..groups._trace import Group, UnsupportedLayerError
from ._fold import _fold_formula, folded_weights_as
from ._memo import exact_scale
from ._positions import _slots

__all__ = ["channel_features"]

_PRODUCERS = ("out", "depthwise")


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
    modules = dict(model.named_modules())
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
