"""Selection and transport per conv block: grouped convs and GroupNorm keep the same count in every block.

A group whose channels split into ``blocks`` equal blocks (a grouped conv's conv groups, GroupNorm's
groups, attention heads) is selected and planned block by block; the plan is block diagonal.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["top_per_block", "per_block"]


def top_per_block(importance: torch.Tensor, k: int, blocks: int) -> torch.Tensor:
    """The ``k / blocks`` most important channels of each of ``blocks`` equal blocks, ascending.

    Ties (an all-zero group) keep the lowest indices: a stable sort, not topk's arbitrary order.
    """
    n = len(importance)
    size, per = n // blocks, k // blocks
    kept = [b * size + torch.sort(-importance[b * size:(b + 1) * size], stable=True).indices[:per]
            for b in range(blocks)]
    return torch.sort(torch.cat(kept)).values


def per_block(n: int, k: int, blocks: int, solve, weights: Optional[torch.Tensor] = None):
    """Assemble a block-diagonal ``(kept, plan)`` from ``solve(rows, k_b) -> (local kept, plan_b)``.

    Each block's plan is scaled to carry its share of the mass (``weights[rows].sum()``, default
    ``|rows| / n``), so the whole plan keeps the marginals of the unblocked problem.
    """
    size, per = n // blocks, k // blocks
    kept = torch.empty(k, dtype=torch.long)
    plan = torch.zeros(n, k, dtype=torch.float64)
    for b in range(blocks):
        rows = torch.arange(b * size, (b + 1) * size)
        local, sub = solve(rows, per)
        sub = torch.as_tensor(sub, dtype=torch.float64)
        share = float(weights[rows].sum()) if weights is not None else size / n
        kept[b * per:(b + 1) * per] = rows[0] + torch.as_tensor(local, dtype=torch.long)
        plan[rows[0]:rows[0] + size, b * per:(b + 1) * per] = sub / sub.sum() * share
    return kept, plan
