"""Channel importance: Torch-Pruning's estimators by name, or any callable ``group -> Tensor[n]``."""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, Optional, Union

import torch
import torch.nn as nn
import torch_pruning as tp

from .._state import dtype_problem, model_device, saved_modes

__all__ = ["IMPORTANCES", "resolve_importance", "group_importance", "accumulate_gradients", "taylor_gradients"]

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
    """Map an importance name (one of :data:`IMPORTANCES`) to an estimator; callables are returned unchanged."""
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


def _zero_safe(estimator: Callable) -> Callable:
    """Torch-Pruning's estimator whose normaliser leaves an all-zero group at zero (not 0/0 = NaN).

    Torch-Pruning divides a group's scores by their mean (or LAMP's running sums); a group whose
    weights (or, for Taylor, gradients: dead ReLUs) are all zero would score NaN.  Its channels are
    equally unimportant, so they score 0 and ties are broken by index.
    """
    normalizer = getattr(estimator, "normalizer", None)
    if not isinstance(estimator, tp.importance.Importance) or normalizer is None \
            or not hasattr(estimator, "_normalize"):
        return estimator
    safe = copy.copy(estimator)

    def normalize(scores: torch.Tensor) -> torch.Tensor:
        if not bool((scores != 0).any()):
            return scores
        return estimator._normalize(scores, normalizer)

    safe.normalizer = normalize
    return safe


def group_importance(group, estimator: Callable) -> torch.Tensor:
    """Scores of a group's channels (higher = keep).

    Parameters
    ----------
    group : Group
    estimator : callable
        ``group -> scores``: real (float) scores, one per channel.  Torch-Pruning importance objects
        are used with a normaliser that keeps an all-zero group finite.

    Returns
    -------
    Tensor, shape (group.size,)
        float64 on CPU.

    Raises
    ------
    TypeError
        Complex, integer or boolean scores (a ranking or the kept indices instead of scores?).
    ValueError
        None, the wrong number of scores, NaN or infinite scores.
    """
    where = f"importance for group {group.index} ({group.name!r})"
    with torch.no_grad():
        scores = _zero_safe(estimator)(group)
    if scores is None:
        raise ValueError(f"importance returned None for group {group.index} ({group.name}): "
                         "the estimator found no layer it can score in this group")
    try:
        scores = torch.as_tensor(scores)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{where} must be a tensor of {group.size} float scores, got "
                        f"{type(scores).__name__}") from err
    if scores.is_complex() or not scores.is_floating_point():
        raise TypeError(f"{where} must be real floating-point scores (higher = keep), got {scores.dtype}; "
                        "return the scores themselves (e.g. weight.abs().sum(1)), not a ranking or the kept "
                        "indices, and use .float() for whole-number scores")
    scores = scores.detach().flatten().to("cpu", torch.float64)
    if scores.numel() != group.size:
        raise ValueError(f"{where} has {scores.numel()} scores, expected group.size = {group.size}: "
                         "return one score per channel")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{where} has NaN or infinite scores; return finite scores (check the weights "
                         "or the data for NaN)")
    return scores


def _check_batch(model: nn.Module, batch):
    if batch is None:
        raise ValueError("importance='taylor' needs data: pass batch=(inputs, targets) "
                         "(and loss_fn, default cross-entropy)")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("batch must be a pair (inputs, targets) of tensors")
    inputs, targets = batch
    device = model_device(model)
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not torch.is_tensor(t):
            raise TypeError(f"batch {name} must be a tensor, got {type(t).__name__}; pass batch=(inputs, targets)")
        if device is not None and t.device != device:
            raise ValueError(f"batch {name} are on {t.device} but the model is on {device}; "
                             f"move the batch with .to({str(device)!r})")
    if len(inputs) != len(targets):
        raise ValueError(f"batch inputs and targets have different lengths ({len(inputs)} and {len(targets)}); "
                         "pass one target per input")
    return inputs, targets


def accumulate_gradients(model: nn.Module, batch, loss_fn: Optional[Callable] = None) -> None:
    """Fill ``.grad`` of ``model``'s parameters with the loss gradient on ``batch`` (for Taylor).

    Runs in eval mode (BatchNorm statistics are not updated; every module's mode is restored) and with
    gradients enabled, also when the caller is inside ``torch.no_grad()``.  Every parameter is made to
    require gradients; see :func:`taylor_gradients` for a version that puts everything back.

    Raises
    ------
    ValueError, TypeError
        A batch that is not ``(inputs, targets)`` tensors fitting the model, a loss that fails or is
        not a scalar.
    RuntimeError
        Inside ``torch.inference_mode()``, where no gradient can be computed.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("importance='taylor' needs gradients, which torch.inference_mode() forbids; "
                           "call prune outside the inference_mode block (torch.no_grad() is fine)")
    inputs, targets = _check_batch(model, batch)
    custom_loss = loss_fn is not None
    loss_fn = loss_fn or nn.functional.cross_entropy
    if not custom_loss and (targets.is_floating_point() or targets.is_complex()) and targets.dim() == 1:
        raise TypeError(f"batch targets are {targets.dtype} class labels; the default cross-entropy loss "
                        "needs integer class indices: pass targets.long(), or a loss_fn for other targets")
    with saved_modes(model):
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for p in model.parameters():
                p.requires_grad_(True)
            try:
                outputs = model(inputs)
            except Exception as err:
                problem = dtype_problem(model, [inputs])
                if problem is not None:
                    raise TypeError(f"Taylor batch: {problem}") from err
                raise ValueError(f"could not run the model on the Taylor batch inputs of shape "
                                 f"{tuple(inputs.shape)} ({type(err).__name__}: {err}); pass inputs shaped "
                                 "and typed like example_inputs") from err
            try:
                loss = loss_fn(outputs, targets)
            except Exception as err:
                raise ValueError(f"the Taylor loss failed on outputs of shape {tuple(outputs.shape)} and targets "
                                 f"of shape {tuple(targets.shape)} ({type(err).__name__}: {err}); pass targets "
                                 "the loss accepts (class indices for the default cross-entropy) or a fitting "
                                 "loss_fn") from err
            if not (torch.is_tensor(loss) and loss.numel() == 1 and loss.is_floating_point()):
                raise ValueError(f"loss_fn must return a scalar float tensor (e.g. reduce with .mean()), got "
                                 f"{getattr(loss, 'shape', type(loss).__name__)}")
            if not loss.requires_grad:
                raise ValueError("the Taylor loss does not depend on the model's parameters (no gradient); "
                                 "check loss_fn and that the model's forward uses its parameters")
            loss.reshape(()).backward()


@contextlib.contextmanager
def taylor_gradients(model: nn.Module, batch, loss_fn: Optional[Callable] = None) -> Iterator[None]:
    """Inside the block ``model`` holds the loss gradients on ``batch``; afterwards (also on error) every
    parameter has its own ``.grad`` object and ``requires_grad`` back, and every module its mode."""
    saved = [(p, p.grad, p.requires_grad) for p in model.parameters()]
    try:
        accumulate_gradients(model, batch, loss_fn)
        yield
    finally:
        for p, grad, requires_grad in saved:
            p.grad = grad
            p.requires_grad_(requires_grad)
