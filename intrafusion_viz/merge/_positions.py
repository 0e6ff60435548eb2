"""Where a group's channels sit in each layer, and where they sit after earlier cuts.

:func:`_slots`: a member's positions per channel (an ``(n, w)`` table); :class:`IndexTracker`: the
current position of every original index as the surgery shrinks dimensions.  The lowest module of
``merge`` after ``_memo``.
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import torch

from ..groups._trace import Member, UnsupportedLayerError

__all__ = ["IndexTracker", "_slots"]


class IndexTracker:
    """Current position of every original channel index of (module, dim) as dimensions shrink.

    One tracker per model being merged; ``cache`` holds what the surgery learns about that model
    once (which layers share a tensor).
    """

    def __init__(self):
        self._alive: Dict[Tuple[str, int], torch.Tensor] = {}
        self.cache: Dict[str, object] = {}

    def current(self, name: str, dim: int, idxs: Iterable[int]) -> torch.Tensor:
        alive = self._alive.get((name, dim))
        idxs = _as_index(idxs)
        if alive is None:
            return idxs
        pos = torch.cumsum(alive.long(), 0) - 1
        if not bool(alive[idxs].all()):
            raise RuntimeError(f"channels of {name} were removed twice; groups overlap unexpectedly")
        return pos[idxs]

    def remove(self, name: str, dim: int, size: int, idxs: Iterable[int]) -> None:
        alive = self._alive.setdefault((name, dim), torch.ones(size, dtype=torch.bool))
        alive[_as_index(idxs)] = False


def _as_index(idxs) -> torch.Tensor:
    """Indices as a CPU int64 tensor (a tensor is taken as it is, without a round trip through a list)."""
    if torch.is_tensor(idxs):
        return idxs.to("cpu", torch.long)
    return torch.as_tensor(list(idxs), dtype=torch.long)


def _slots(member: Member, n: int) -> torch.Tensor:
    """Local positions of the group's channels as an (n, m) table: row r holds channel r's positions."""
    local = torch.as_tensor(member.local_idxs, dtype=torch.long)
    root = torch.as_tensor(member.root_idxs, dtype=torch.long)
    order = torch.argsort(root * (local.max() + 1 if len(local) else 1) + local)
    local, root = local[order], root[order]
    counts = torch.bincount(root, minlength=n)
    if len(counts) != n or not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        raise UnsupportedLayerError(
            f"layer {member.name!r} ({member.layer_type}) maps the group's channels unevenly; "
            "it cannot be merged. Use method='default' or leave this group out (groups=[...])")
    return local.view(n, -1)
