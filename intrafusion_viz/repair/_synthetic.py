"""Inputs made from a model's BatchNorm statistics alone, for a statistics repair without any data.

ZeroQ (Cai et al., CVPR 2020, "distilled data") and DeepInversion (Yin et al., CVPR 2020) make inputs
whose activations have, at every BatchNorm, the mean and standard deviation that BatchNorm stored while
the network was trained: start from Gaussian noise and minimise, by Adam on the inputs,

    sum over BatchNorms of  mean_c (mu_c(x) - running_mean_c)^2 + mean_c (sigma_c(x) - running_std_c)^2

(per channel ``c``, over the batch and spatial positions; ZeroQ sums the squared differences over a
layer's channels, here they are averaged so that wide layers do not dominate).  A merged network's BatchNorm
statistics re-estimated on such inputs (``ifv.repair(result, model, synthetic_inputs(model, x),
mode="bn")``) need no training image at all; unlike the data-free repair's prediction
(:mod:`._data_free`), they also follow every layer *after* a merged one, whose inputs the merge
changed (``docs/results.md``, "The k-means draw decides at 70 %").
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from types import SimpleNamespace
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from .._state import saved_modes

__all__ = ["synthetic_inputs", "can_synthesize", "synthetic_flops", "synthetic_affordable", "SYNTHETIC_N",
           "SYNTHETIC_STEPS", "SYNTHETIC_FLOP_BUDGET"]

_BN = nn.modules.batchnorm._BatchNorm

# What prune(..., repair="synthetic") makes (docs/results/no_finetune_accuracy.md measured these).
SYNTHETIC_N, SYNTHETIC_STEPS = 64, 200
# The default call synthesises inputs only when that costs at most this many floating-point operations
# (3 x one forward pass x SYNTHETIC_N inputs x SYNTHETIC_STEPS): about ten minutes on one CPU core (two to
# three on a 4-core laptop) and well under a minute on a GPU.  A CIFAR ResNet18 (4e13) is inside on a CPU,
# an ImageNet ResNet50 (3e14) only on a GPU.
SYNTHETIC_FLOP_BUDGET = {"cpu": 5e13, "cuda": 1e16}
_CACHE: "OrderedDict[str, torch.Tensor]" = OrderedDict()  # fingerprint -> inputs, the last few models
_CACHE_SIZE = 2
_FLOPS: Dict[tuple, Optional[float]] = {}  # (architecture, input shape) -> forward FLOPs of one input


def synthetic_inputs(model: nn.Module, example: torch.Tensor, n: int = 64, steps: int = 200, lr: float = 0.1,
                     seed: int = 0, progress: bool = False) -> torch.Tensor:
    """A batch of ``n`` inputs whose activations match ``model``'s stored BatchNorm statistics (ZeroQ).

    Parameters
    ----------
    model : nn.Module
        The trained, unpruned model (read only: its weights, mode and ``requires_grad`` flags are left
        as they were).  It needs at least one BatchNorm with running statistics.
    example : Tensor
        One input (or a batch; only its shape from dimension 1 on, dtype and device are used).
    n : int
        Batch size, >= 2 (a batch statistic needs two samples); 64 is enough for the BatchNorm repair.
    steps, lr : int, float
        Adam steps on the inputs and their learning rate.
    seed : int
        Seed of the starting noise.
    progress : bool
        Show a tqdm progress bar over the steps.

    Returns
    -------
    Tensor, shape (n, *example.shape[1:])
        Detached, on ``example``'s device and dtype.

    Examples
    --------
    >>> x = synthetic_inputs(model, example)                      # doctest: +SKIP
    >>> fixed = ifv.repair(result, model, x, mode="bn")           # doctest: +SKIP
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (a batch statistic needs two samples), got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not torch.is_tensor(example) or example.dim() < 1 or not example.is_floating_point():
        raise TypeError("example must be a floating-point input tensor of the model (one sample or a batch), "
                        f"got {type(example).__name__}")
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats
             and m.running_mean is not None]
    if not norms:
        raise ValueError("the model has no BatchNorm with running statistics to match; repair merged channels "
                         "with ifv.repair(result, model, mode='data-free') or a batch of real inputs instead")
    from tqdm.auto import tqdm

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) + tuple(example.shape[1:])
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(device=example.device, dtype=example.dtype)
    x.requires_grad_(True)
    losses = []

    def hook(module, inputs, _output):
        a = inputs[0]
        dims = [d for d in range(a.dim()) if d != 1]
        mean = a.mean(dims)
        std = torch.sqrt(a.var(dims, unbiased=False) + module.eps)
        want_std = torch.sqrt(module.running_var + module.eps)
        losses.append(((mean - module.running_mean) ** 2).mean() + ((std - want_std) ** 2).mean())

    flags = [(p, p.requires_grad) for p in model.parameters()]
    hooks = [m.register_forward_hook(hook) for m in norms]
    try:
        with saved_modes(model), torch.enable_grad():  # every submodule gets its own train/eval mode back
            model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            opt = torch.optim.Adam([x], lr=lr)
            for _ in tqdm(range(steps), desc="synthetic inputs", disable=not progress):
                losses.clear()
                opt.zero_grad()
                model(x)
                loss = torch.stack(losses).sum()
                loss.backward()
                opt.step()
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return x.detach()


def bn_statistics_gap(model: nn.Module, x: torch.Tensor) -> float:
    """ZeroQ's loss of inputs ``x`` (summed over BatchNorms): how far their statistics are from the stored ones."""
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats
             and m.running_mean is not None]
    total = []

    def hook(module, inputs, _output):
        a = inputs[0].double()
        dims = [d for d in range(a.dim()) if d != 1]
        std = torch.sqrt(a.var(dims, unbiased=False) + module.eps)
        total.append(float(((a.mean(dims) - module.running_mean.double()) ** 2).mean()
                           + ((std - torch.sqrt(module.running_var.double() + module.eps)) ** 2).mean()))

    hooks = [m.register_forward_hook(hook) for m in norms]
    try:
        with saved_modes(model), torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return sum(total)


def _norms(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats and m.running_mean is not None]


def can_synthesize(model: nn.Module, example_inputs) -> bool:
    """Whether :func:`synthetic_inputs` can serve ``model``: it has a BatchNorm with running statistics and
    takes one floating-point input tensor (``prune``'s default call repairs with them only then)."""
    if not isinstance(model, nn.Module):
        return False
    if isinstance(example_inputs, (tuple, list)):
        if len(example_inputs) != 1:
            return False
        example_inputs = example_inputs[0]
    return (torch.is_tensor(example_inputs) and example_inputs.is_floating_point() and example_inputs.dim() >= 1
            and bool(_norms(model)))


def synthetic_flops(model: nn.Module, example: torch.Tensor, n: Optional[int] = None,
                    steps: Optional[int] = None) -> Optional[float]:
    """Floating-point operations of :func:`synthetic_inputs` (``3 x`` one forward pass ``x n x steps``), from
    torch's ``FlopCounterMode`` on one input; None when it cannot count them."""
    n = SYNTHETIC_N if n is None else n
    steps = SYNTHETIC_STEPS if steps is None else steps
    key = (type(model).__qualname__, tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()),
           tuple(example.shape[1:]), str(example.device))
    if key not in _FLOPS:
        from torch.utils.flop_counter import FlopCounterMode

        if len(_FLOPS) >= 64:  # a long session with many architectures: forget the old ones
            _FLOPS.clear()

        try:
            with saved_modes(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
                model.eval()
                model(example[:1])
            _FLOPS[key] = float(counter.get_total_flops())
        except Exception:  # noqa: BLE001 - the model cannot run the example (prune then says why): unknown
            _FLOPS[key] = None
    flops = _FLOPS[key]
    return None if flops is None else 3.0 * flops * n * steps


def synthetic_affordable(model: nn.Module, example_inputs) -> Tuple[bool, Optional[float]]:
    """``(affordable, flops)``: whether the default call's synthetic inputs fit ``SYNTHETIC_FLOP_BUDGET`` on the
    example's device (a cost that cannot be counted does not fit)."""
    example = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    flops = synthetic_flops(model, example)
    budget = SYNTHETIC_FLOP_BUDGET.get(example.device.type, SYNTHETIC_FLOP_BUDGET["cpu"])
    return flops is not None and flops <= budget, flops


def _fingerprint(model: nn.Module, example: torch.Tensor, n: int, steps: int, seed: int) -> str:
    """A digest of everything the inputs depend on: the model's tensors, the input shape and the settings."""
    h = hashlib.sha1(f"{type(model).__qualname__}|{tuple(example.shape[1:])}|{example.dtype}|{example.device}|"
                     f"{n}|{steps}|{seed}".encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        t = t.detach()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        if t.numel():
            h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_synthetic_inputs(model: nn.Module, example: torch.Tensor, seed: int = 0, progress: bool = False,
                            n: Optional[int] = None, steps: Optional[int] = None) -> torch.Tensor:
    """:func:`synthetic_inputs` of ``model`` (``SYNTHETIC_N`` inputs, ``SYNTHETIC_STEPS`` steps), remembered for
    the last two models: a sweep over sparsities makes them once."""
    n = SYNTHETIC_N if n is None else n
    steps = SYNTHETIC_STEPS if steps is None else steps
    key = _fingerprint(model, example, n, steps, seed)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if not progress:  # long work shows progress: anything over about a minute on one CPU core
        flops = synthetic_flops(model, example, n, steps)
        progress = flops is None or flops > 5e12
    x = synthetic_inputs(model, example, n=n, steps=steps, seed=seed, progress=progress)
    _CACHE[key] = x
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return x


def snapshot_affine(model: nn.Module, groups) -> Dict[str, SimpleNamespace]:
    """Copies of the BatchNorm weights and biases of ``groups``' norm members: what the BatchNorm repair on
    synthetic inputs gives back to BatchNorms folded by the merge, taken before anything changes."""
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        for m in g.members:
            bn = modules.get(m.name)
            if m.role == "norm" and isinstance(bn, _BN) and bn.affine and m.name not in out:
                out[m.name] = SimpleNamespace(weight=bn.weight.detach().clone(), bias=bn.bias.detach().clone())
    return out
