"""Data-aware Intra-Fusion: compare channels by what they compute on data, and repair statistics after merging.

Two additions to the data-free engine, each needing only a small *unlabeled* batch (<= 512 samples):

* :func:`activation_features` -- a ``features=`` callable for :func:`intrafusion_viz.prune` that
  describes each channel by its activations on the batch (as OTFusion's activation-based cost)
  instead of by its weights.
* :func:`repair` -- after merging, give every merged channel back the output statistics of the
  channels it replaced: re-estimate BatchNorm statistics (``mode="bn"``), or correct each merged
  producer's per-channel mean and standard deviation to the plan-weighted statistics of its sources
  measured in the original model (``mode="repair"``, as REPAIR, Jordan et al. 2023; works without
  BatchNorm by rescaling the producer's weights and bias).
"""
from __future__ import annotations

import copy
from typing import Callable, Tuple

import torch
import torch.nn as nn

from ..merge._surgery import _slots
from ..groups._trace import Group, find_groups
from ._activations import (_apply_affine, _inputs_of, _observed_module, _per_channel, _producers,
                           _pruned_positions, _recording, _reset_bn_statistics, _run)

__all__ = ["activation_features", "repair", "REPAIR_MODES"]

REPAIR_MODES = ("bn", "repair", "data-free")


def activation_features(batch, *, max_samples: int = 512) -> Callable[[nn.Module, Group], torch.Tensor]:
    """A ``features=`` callable for :func:`intrafusion_viz.prune` that compares channels by their activations.

    Each channel is described by the outputs of the group's producing layers on ``batch`` (after
    the BatchNorm when one follows), averaged over spatial positions per sample; for a residual
    stream fed by several producers their vectors are concatenated.

    Parameters
    ----------
    batch : Tensor or (inputs, targets)
        Inputs shaped like the model's, on the model's device; labels are not used.
    max_samples : int
        Use at most this many samples of ``batch``.

    Returns
    -------
    callable
        ``features(model, group) -> Tensor, shape (group.size, n_samples * n_producers)``, on CPU in
        the model's dtype.  It runs one forward pass in eval mode under ``no_grad`` with forward
        hooks that are removed afterwards; ``model`` is left as it was.

    Examples
    --------
    >>> import torch, intrafusion_viz as ifv
    >>> from intrafusion_viz.repair._data_aware import activation_features
    >>> model, x = ifv.models.SmallCNN(), torch.randn(64, 1, 8, 8)
    >>> res = ifv.prune(model, x[:1], sparsity=0.5, features=activation_features(x))
    >>> [g.k for g in res.groups]
    [8, 16]
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    inputs = _inputs_of(batch, max_samples)

    def features(model: nn.Module, group: Group) -> torch.Tensor:
        producers = _producers(group.members)
        if not producers:
            raise ValueError(f"group {group.index} ({group.name!r}) has no producing layer to record")
        observed = [_observed_module(group.members, m.name) for m in producers]
        with _recording(model, observed) as outputs:
            _run(model, inputs)
        parts = []
        for m, name in zip(producers, observed):
            acts = _per_channel(outputs[name])  # (B, C)
            slots = _slots(m, group.size)  # (n, positions per channel)
            parts.append(acts[:, slots].permute(1, 0, 2).reshape(group.size, -1).cpu())
        return torch.cat(parts, dim=1)

    return features


def _channel_stats(outputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per channel over samples and positions: (B, C, ...) -> (C,), (C,) float64."""
    x = outputs.double().movedim(1, 0).reshape(outputs.shape[1], -1)
    return x.mean(1), x.std(1, unbiased=False)


def _source_weights(plan: torch.Tensor) -> torch.Tensor:
    """(n, k) plan -> (n, k) weights whose columns sum to 1: how much of each source a merged channel holds."""
    plan = plan.double()
    return plan / plan.sum(0, keepdim=True).clamp_min(1e-300)


def _kept_batchnorms(result) -> bool:
    """Whether the merge kept the BatchNorms as they were and averaged them (Model Folding's merge:
    ``method="fold"`` planned at once, which leaves ``fold_repair`` on the result) instead of folding them."""
    return getattr(result, "method", None) == "fold" and getattr(result, "fold_repair", None) is not None


@torch.no_grad()
def _restore_folded_affine(pruned: nn.Module, original, records, signed: bool = False) -> None:
    """Give BatchNorms that prune folded into their producer the original output scale and shift.

    ``original``: the unpruned model, or ``{name: object with .weight and .bias}`` of its BatchNorms
    (:func:`._synthetic.snapshot_affine`).  After folding, a BatchNorm is an identity and the producer
    already computes ``gamma * x_hat + beta``;
    re-estimating statistics would standardise that, so the BatchNorm gets ``|gamma|`` and ``beta``
    of the channels it merged (the producer's output keeps its sign).  ``signed``: for Model Folding's
    merge, which keeps the BatchNorms and only averages them: gamma itself, not ``|gamma|``, and without
    the DF_REPAIR factor that re-estimated statistics make redundant.
    """
    pruned_modules = dict(pruned.named_modules())
    # the unpruned model, or {name: its BatchNorm's weight and bias} taken before an in-place merge
    original_modules = dict(original.named_modules()) if isinstance(original, nn.Module) else original
    for g in records:  # only groups whose BatchNorms prune folded (see _data_free._folded)
        weights = _source_weights(g.plan)
        for m in g.members:
            if m.role != "norm" or m.fold_from is None:
                continue
            bn, source = pruned_modules[m.name], original_modules[m.name]
            if not bn.affine:
                continue
            slots = _slots(m, g.n)[:, 0]
            kept_positions = _pruned_positions(slots, g.kept)
            gamma = source.weight.double()[slots]
            gamma = gamma if signed else gamma.abs()
            beta = source.bias.double()[slots]
            bn.weight[kept_positions] = (weights.T @ gamma).to(bn.weight.dtype)
            bn.bias[kept_positions] = (weights.T @ beta).to(bn.bias.dtype)


@torch.no_grad()
def _repair_statistics(pruned: nn.Module, original: nn.Module, records, x: torch.Tensor, eps: float) -> None:
    """REPAIR: affine-correct every merged producer so each channel has its sources' mean and std."""
    # Every group is corrected, as REPAIR does: a pruned group's merged channels get their sources'
    # statistics, and every other channel its own, which undoes the shift that merging a group causes
    # in the layers after it.
    pruned_index = {g.index for g in records}
    cases = [(g.members, g.n, g.kept, _source_weights(g.plan)) for g in records]
    for g in find_groups(original, x[:1]):
        if g.index not in pruned_index:
            cases.append((g.members, g.size, torch.arange(g.size), torch.eye(g.size, dtype=torch.float64)))
    targets = {}
    for members, n, kept, weights in cases:
        for m in _producers(members):
            targets[m.name] = (members, n, kept, weights, m, _observed_module(members, m.name))
    observed = sorted({t[-1] for t in targets.values()})
    with _recording(original, observed) as outputs:
        _run(original, x)
    original_stats = {name: _channel_stats(outputs[name]) for name in observed}

    # Correct producers in forward order (hooks fire in that order), re-measuring before each one so
    # that later layers see the earlier corrections.
    with _recording(pruned, observed) as outputs:
        _run(pruned, x)
    order = list(outputs)
    modules = dict(pruned.named_modules())
    by_observed = {t[-1]: t[:-1] for t in targets.values()}
    for name in order:
        members, n, kept, weights, m = by_observed[name]
        with _recording(pruned, [name]) as outputs:
            _run(pruned, x)
        mean_now, std_now = _channel_stats(outputs[name])
        mean_src, std_src = original_stats[name]
        slots = _slots(m, n)[:, 0]
        positions = _pruned_positions(slots, kept)
        scale = torch.ones_like(mean_now)
        shift = torch.zeros_like(mean_now)
        scale[positions] = (weights.T @ std_src[slots]) / (std_now[positions] + eps)
        shift[positions] = weights.T @ mean_src[slots] - scale[positions] * mean_now[positions]
        _apply_affine(modules[name], scale, shift)


def _check_original(records, model: nn.Module, original: nn.Module, params_before=None) -> None:
    """Refuse an ``original_model`` that is not the model the records were made from (structure and sizes)."""
    hint = ("pass the unpruned model you gave to prune (unchanged; with prune(..., inplace=True) keep a "
            "copy before pruning)")
    if not isinstance(original, nn.Module):
        raise TypeError(f"original_model must be an nn.Module, got {type(original).__name__}; {hint}")
    if original is model:
        raise ValueError(f"original_model is the pruned model itself; {hint}")
    modules = dict(original.named_modules())
    for g in records:
        for m in g.members:
            module = modules.get(m.name)
            if module is None:
                raise ValueError(f"original_model has no layer {m.name!r} (group {g.index}, {g.name!r}): it is not "
                                 f"the model that was pruned; {hint}")
            if m.role in ("out", "in"):
                size = module.weight.shape[m.dim]
            elif m.role == "norm":
                size = getattr(module, "num_features", None)
            else:
                continue
            needed = max(m.local_idxs) + 1 if m.local_idxs else 0
            if size is None or size < needed:
                raise ValueError(f"original_model's layer {m.name!r} has {size} channels where the pruned group "
                                 f"{g.index} ({g.name!r}) needs {needed}: it is not the model that was pruned; {hint}")
    if params_before is not None:
        count = sum(p.numel() for p in original.parameters())
        if count != params_before:
            raise ValueError(f"original_model has {count} parameters, the model that was pruned had {params_before}: "
                             f"it is not the model that was pruned; {hint}")
    # Layers no pruned group touches are identical in the pruned model and its original, and so are
    # the biases of layers that only consume pruned channels.
    touched = {m.name for g in records for m in g.members}
    only_in = touched - {m.name for g in records for m in g.members if m.role != "in"}
    pruned_modules = dict(model.named_modules())
    for name, module in modules.items():
        other = pruned_modules.get(name)
        if other is None or next(module.children(), None) is not None or (name in touched and name not in only_in):
            continue
        items = module.state_dict().items() if name not in touched else [("bias", getattr(module, "bias", None))]
        for key, a in items:
            b = other.state_dict().get(key) if name not in touched else getattr(other, "bias", None)
            if a is None or b is None:
                continue
            if torch.is_tensor(a) and (a.shape != b.shape or not torch.equal(a.detach().cpu(), b.detach().cpu())):
                raise ValueError(f"original_model's {name}.{key} differs from the pruned model's, although no "
                                 f"pruned group touches it: it is not the model that was pruned (or the pruned "
                                 f"model was changed after prune; repair right after pruning); {hint}")


def repair(pruned, original_model: nn.Module, batch=None, mode: str = "bn", *, max_samples: int = 512,
           eps: float = 1e-5) -> nn.Module:
    """Give merged channels back the statistics of the channels they replaced; returns a NEW model.

    Parameters
    ----------
    pruned : PruneResult or nn.Module
        The result of :func:`intrafusion_viz.prune` on ``original_model`` (needed for
        ``mode="repair"`` and for BatchNorms that prune folded), or a pruned model (``mode="bn"`` only:
        every BatchNorm's statistics are re-estimated as they are).
    original_model : nn.Module
        The unpruned model; read only.
    batch : Tensor or (inputs, targets), optional
        A small unlabeled batch on the models' device; labels are not used.  Not needed (ignored)
        for ``mode="data-free"``.
    mode : {"bn", "repair", "data-free"}
        ``"bn"``: reset every BatchNorm's running statistics and re-estimate them on ``batch``
        (momentum ``None``, train mode, ``no_grad``); BatchNorms folded by prune first get the
        original ``|gamma|`` and ``beta`` of the channels they merged.  ``"repair"``: for every
        producer of a pruned group, in forward order, measure each merged channel's mean and std on
        ``batch`` (after its BatchNorm when one follows) and rescale it to the plan-weighted mean and
        std of its source channels in ``original_model`` (BatchNorm affine when there is one,
        otherwise the producer's weights and bias, so BN-free networks are repaired too).
        ``"data-free"``: no data; predict each merged channel's mean and variance from the stored
        BatchNorm statistics of the channels it merged and their correlation estimated from their
        weights (Model Folding's approximate REPAIR, for any plan) and give its BatchNorm those
        statistics and the plan-weighted affine of its sources (see :mod:`intrafusion_viz.repair._data_free`).
    max_samples : int
        Use at most this many samples of ``batch``.
    eps : float
        Added to measured standard deviations (dead channels keep scale ~0 instead of dividing by 0).

    Returns
    -------
    nn.Module
        A repaired copy in the pruned model's train/eval mode; ``pruned`` and ``original_model``
        are unchanged.

    Examples
    --------
    >>> import torch, intrafusion_viz as ifv
    >>> from intrafusion_viz.repair._data_aware import repair
    >>> model, x = ifv.models.vgg11_bn(width_mult=0.125), torch.randn(32, 3, 32, 32)
    >>> res = ifv.prune(model, x[:1], sparsity=0.5)
    >>> fixed = repair(res, model, x, mode="bn")
    >>> fixed is not res.model
    True
    """
    if mode not in REPAIR_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, REPAIR_MODES))}; got {mode!r}")
    records = getattr(pruned, "groups", None)
    model = getattr(pruned, "model", pruned)
    if not isinstance(model, nn.Module):
        raise TypeError(f"pruned must be a PruneResult or an nn.Module, got {type(pruned).__name__}")
    if mode in ("repair", "data-free") and records is None:
        raise ValueError(f"mode={mode!r} needs the PruneResult (it holds which channels were merged into which)")
    if records is not None:
        _check_original(records, model, original_model, getattr(pruned, "params_before", None))
    if mode == "data-free":
        from ._data_free import data_free_repair

        return data_free_repair(pruned, original_model)
    if batch is None:
        raise ValueError(f"mode={mode!r} needs a batch of inputs (unlabeled); mode='data-free' needs none")
    x = _inputs_of(batch, max_samples)
    fixed = copy.deepcopy(model)
    if mode == "bn":
        if records is not None:
            from ._data_free import _folded

            _restore_folded_affine(fixed, original_model, [g for g in records if _folded(pruned, g)],
                                   signed=_kept_batchnorms(pruned))
        _reset_bn_statistics(fixed, x)
    else:
        _repair_statistics(fixed, original_model, records, x, eps)
    return fixed
