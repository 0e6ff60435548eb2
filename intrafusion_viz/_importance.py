"""Channel importance: Torch-Pruning's estimators by name, or any callable ``group -> Tensor[n]``."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch_pruning as tp

__all__ = ["IMPORTANCES", "resolve_importance", "group_importance", "accumulate_gradients"]

IMPORTANCES = ("l1", "l2", "taylor", "lamp", "random")

Importance = Union[str, Callable[..., torch.Tensor]]


class _SeededRandom:
    """Random scores from a generator seeded per group, so a run can be repeated."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, group) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + getattr(group, "index", 0))
        return torch.rand(group.size, generator=g)


def resolve_importance(importance: Importance, seed: int = 0) -> Callable:
    """Map an importance name to an estimator; callables are returned unchanged."""
    if callable(importance):
        return importance
    if not isinstance(importance, str) or importance.lower() not in IMPORTANCES:
        raise ValueError(
            f"unknown importance {importance!r}; use one of {', '.join(map(repr, IMPORTANCES))}, "
            "a Torch-Pruning importance object, or a callable group -> Tensor[group.size]")
    name = importance.lower()
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return _SeededRandom(seed)


def group_importance(group, estimator: Callable) -> torch.Tensor:
    """Scores of a group's channels (higher = keep).

    Returns
    -------
    Tensor, shape (group.size,)
        float64 on CPU.
    """
    with torch.no_grad():
        scores = estimator(group)
    if scores is None:
        raise ValueError(f"importance returned None for group {group.index} ({group.name}): "
                         "the estimator found no layer it can score in this group")
    scores = torch.as_tensor(scores).detach().flatten().to("cpu", torch.float64)
    if scores.numel() != group.size:
        raise ValueError(f"importance for group {group.index} ({group.name}) has {scores.numel()} "
                         f"scores, expected group.size = {group.size}")
    if not torch.isfinite(scores).all():
        raise ValueError(f"importance for group {group.index} ({group.name}) has NaN or infinite scores")
    return scores


def accumulate_gradients(model: nn.Module, batch, loss_fn: Optional[Callable] = None) -> None:
    """Fill ``.grad`` of ``model``'s parameters with the loss gradient on ``batch`` (for Taylor).

    Runs in eval mode (BatchNorm statistics are not updated) and with gradients enabled, also when
    the caller is inside ``torch.no_grad()``.
    """
    if batch is None:
        raise ValueError("importance='taylor' needs data: pass batch=(inputs, targets) "
                         "(and loss_fn, default cross-entropy)")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("batch must be a pair (inputs, targets)")
    inputs, targets = batch
    device = next((p.device for p in model.parameters()), None)
    for name, t in (("inputs", inputs), ("targets", targets)):
        if torch.is_tensor(t) and device is not None and t.device != device:
            raise ValueError(f"batch {name} are on {t.device} but the model is on {device}; "
                             f"move the batch with .to({str(device)!r})")
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for p in model.parameters():
                p.requires_grad_(True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
    finally:
        model.train(was_training)
