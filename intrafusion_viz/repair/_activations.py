"""Activations of a model on a batch: record layer outputs, run forwards, and write per-channel affine corrections.

The lowest module of ``repair``: data-aware repair, the data-free repair, the layer-drift diagnostics
and OTFusion's activation cost all record activations through it.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn

from .._state import saved_modes

_BN = nn.modules.batchnorm._BatchNorm


def _inputs_of(batch, max_samples: Optional[int]) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not torch.is_tensor(x):
        raise TypeError(f"batch must be a tensor of inputs or a pair (inputs, targets), got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError("batch is empty: pass a tensor of inputs (batch, ...) or a pair (inputs, targets)")
    return x if max_samples is None else x[:max_samples]


@contextlib.contextmanager
def _recording(model: nn.Module, names: Sequence[str]) -> Iterator[Dict[str, torch.Tensor]]:
    """Record the outputs of the named modules during forwards inside the block; hooks always removed."""
    modules = dict(model.named_modules())
    outputs: Dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(module, args, out):
            outputs[name] = out.detach().clone()  # a following ReLU(inplace=True) would overwrite it
            if isinstance(module, nn.Linear) and out.dim() > 2:  # channels last (tokens, ConvNeXt's MLP)
                outputs[name] = outputs[name].movedim(-1, 1)
        return hook

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield outputs
    finally:
        for h in handles:
            h.remove()


class BatchError(ValueError, RuntimeError):
    """A batch the model cannot run; a ``ValueError`` (bad input) that ``except RuntimeError`` (what the
    layers raised before) still catches."""


def _run(model: nn.Module, x: torch.Tensor, train: bool = False) -> None:
    """One forward pass under no_grad in eval (or train) mode; every submodule's mode restored.

    A batch the model cannot run (wrong shape, channels, dtype or device, a single sample without its
    batch dimension) raises our :class:`BatchError` (a ``ValueError``) that says so, instead of the layer's own message.
    """
    with saved_modes(model), torch.no_grad():
        model.train(train)
        try:
            model(x)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            detail = (str(err).strip().splitlines() or [""])[0][:200]
            hint = ""
            if x.dim() in (1, 3):
                hint = " It looks like a single sample: add the batch dimension (x[None], or x.unsqueeze(0))."
            elif train and x.shape[0] < 2:
                hint = " Statistics need a batch of several samples (at least 2; a few hundred is better)."
            raise BatchError(f"the model cannot run the batch of shape {tuple(x.shape)} "
                             f"({x.dtype}, {x.device}): {detail}. Pass inputs shaped like the model's "
                             f"example inputs, (batch, ...), on the model's device.{hint}") from err


def _per_channel(out: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) or (B, C) -> (B, C): spatial mean per sample and channel."""
    return out.flatten(2).mean(2) if out.dim() > 2 else out


def _observed_module(members, producer: str) -> str:
    """Where a producer's channels are read: its BatchNorm's output if one follows, else its own."""
    for m in members:
        if m.role == "norm" and m.fold_from == producer:
            return m.name
    return producer


def _producers(members) -> List:
    return [m for m in members if m.role == "out"]


def _pruned_positions(slots: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Position in the pruned layer of each kept channel: its original position minus the dropped ones before it.

    slots : (n,) original positions of the group's channels; kept : (k,) -> (k,) positions.
    """
    dropped = torch.ones(len(slots), dtype=torch.bool)
    dropped[kept] = False
    kept_slots = slots[kept]
    return kept_slots - (slots[dropped].unsqueeze(0) < kept_slots.unsqueeze(1)).sum(1)


def _reset_bn_statistics(model: nn.Module, x: torch.Tensor) -> None:
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass gives the batch statistics exactly
    try:
        _run(model, x, train=True)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum


def _apply_affine(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``module``'s output channel c become ``scale[c] * out[c] + shift[c]`` (in eval mode)."""
    if isinstance(module, _BN):
        if not module.affine:
            raise ValueError("repair needs affine BatchNorm layers (affine=True) to correct statistics")
        module.weight.mul_(scale.to(module.weight.dtype))
        module.bias.mul_(scale.to(module.bias.dtype)).add_(shift.to(module.bias.dtype))
        return
    out_dim = 1 if getattr(module, "transposed", False) else 0
    shape = [1] * module.weight.dim()
    shape[out_dim] = -1
    module.weight.mul_(scale.to(module.weight.dtype).view(shape))
    if module.bias is None:
        module.bias = nn.Parameter(torch.zeros(module.weight.shape[out_dim], dtype=module.weight.dtype,
                                               device=module.weight.device))
    module.bias.mul_(scale.to(module.bias.dtype)).add_(shift.to(module.bias.dtype))
