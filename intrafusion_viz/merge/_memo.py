"""The BatchNorm-fold memo of one :func:`intrafusion_viz.prune` call, and the exact float64 scaling of a weight.

:func:`fold_memo`: inside the block, :func:`intrafusion_viz.merge._surgery.folded_weights` computes each
(layer, BatchNorm) fold once; a fold is reused only while none of the tensors it was computed from has
changed (same objects, same version counters).  Nothing outlives the block.  The lowest module of
``merge``: folding, channel vectors, scores and the surgery all use it.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["fold_memo", "memo_lookup", "memo_pop", "memo_store", "exact_scale"]

_local = threading.local()


@contextlib.contextmanager
def fold_memo() -> Iterator[None]:
    """Inside the block each BatchNorm fold (:func:`folded_weights`) is computed once per set of tensors."""
    outer = getattr(_local, "memo", None), getattr(_local, "aliases", None)
    if outer[0] is None:
        _local.memo, _local.aliases = {}, {}
    try:
        yield
    finally:
        _local.memo, _local.aliases = outer


def _source(t: torch.Tensor) -> tuple:
    """What identifies a tensor's values: itself and its version, or, for an untouched
    :func:`private_copy` clone, the tensor it was cloned from (at the version it had then)."""
    alias = _local.aliases.get(id(t))
    if alias is not None and t._version == alias[0] and alias[2]._version == alias[3]:
        return id(alias[2]), alias[3]
    return id(t), t._version


def _fold_key(layer: nn.Module, bn: nn.Module, bn_eps: str, tag: str = "") -> Optional[tuple]:
    tensors = (getattr(layer, "weight", None), getattr(layer, "bias", None), getattr(bn, "weight", None),
               getattr(bn, "bias", None), getattr(bn, "running_mean", None), getattr(bn, "running_var", None))
    key = (tag, bn_eps, float(getattr(bn, "eps", 0.0)), bool(getattr(layer, "transposed", False)),
           isinstance(layer, nn.Linear), getattr(bn, "affine", True))
    return key + tuple(_source(t) if t is not None else None for t in tensors), tensors


def memo_lookup(layer: nn.Module, bn: nn.Module, bn_eps: str, tag: str = ""):
    """The memoised ``(weight, bias)`` fold of ``layer`` and ``bn``, or ``None`` (no memo or a miss)."""
    memo = getattr(_local, "memo", None)
    if memo is None:
        return None
    key, _ = _fold_key(layer, bn, bn_eps, tag)
    hit = memo.get(key)
    return None if hit is None else hit[1]


def memo_pop(layer: nn.Module, bn: nn.Module, bn_eps: str, tag: str = ""):
    """:func:`memo_lookup`, and the entry forgotten: its tensors become the caller's to keep or change."""
    memo = getattr(_local, "memo", None)
    if memo is None:
        return None
    key, _ = _fold_key(layer, bn, bn_eps, tag)
    hit = memo.pop(key, None)
    return None if hit is None else hit[1]


def memo_store(layer: nn.Module, bn: nn.Module, bn_eps: str, folded: Tuple[torch.Tensor, torch.Tensor],
               tag: str = "") -> None:
    """Remember a fold inside :func:`fold_memo` (the source tensors are held so their ids stay theirs)."""
    memo = getattr(_local, "memo", None)
    if memo is not None:
        key, tensors = _fold_key(layer, bn, bn_eps, tag)
        memo[key] = (tensors, folded)


def exact_scale(x: torch.Tensor, factor: torch.Tensor, *, divide: bool = False,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x.double() * factor).to(x.dtype)`` (or ``/ factor``), bit for bit, in cache-sized pieces.

    The float64 product of a float32 weight and a float64 factor, rounded to float64 and then to
    float32, is what folding a BatchNorm in float64 and casting gives.  Done on the whole weight it
    makes two float64 copies of it (and torch's mixed-dtype kernels are slower still); done on
    pieces of about 64k entries along dim 0 the float64 buffer stays in cache: about 4x faster.

    Parameters
    ----------
    x : Tensor, shape (m, ...)
    factor : Tensor, float64, broadcastable to ``x`` (size m or 1 along dim 0)
    out : Tensor, shape of ``x``, optional
        May be ``x`` itself.
    """
    out = torch.empty_like(x) if out is None else out
    if x.dim() == 0 or x.device.type != "cpu" or x.numel() <= 1 << 16:
        result = x.double() / factor if divide else x.double() * factor
        return out.copy_(result)
    rows = max(1, (1 << 16) // max(1, x[0].numel()))
    buffer = torch.empty((min(rows, len(x)),) + tuple(x.shape[1:]), dtype=torch.float64)
    for start in range(0, len(x), rows):
        stop = min(start + rows, len(x))
        piece = buffer[:stop - start]
        piece.copy_(x[start:stop])
        f = factor[start:stop] if factor.dim() == x.dim() and factor.shape[0] != 1 else factor
        piece.div_(f) if divide else piece.mul_(f)
        out[start:stop].copy_(piece)
    return out
