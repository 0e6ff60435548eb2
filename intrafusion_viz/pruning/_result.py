"""The records :func:`intrafusion_viz.prune` returns: :class:`GroupResult` per group, :class:`PruneResult`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..plan._compact import read_field
from ..plan._lazy_cost import LazyCost
from ..plan._config import OTConfig

__all__ = ["GroupResult", "PruneResult", "num_kept"]


@dataclass
class GroupResult:
    """What happened to one group; figures read these fields instead of recomputing them.

    Attributes
    ----------
    index, paper_index, name : int, int, str
        As in :class:`Group`.
    n, k : int
        Channels before and after.
    sparsity : float
        Requested sparsity of this group.
    kept : Tensor, shape (k,)
        Kept channel indices (ascending): position j of the pruned layer is channel ``kept[j]``.
    importance : Tensor, shape (n,)
        float64 scores (higher = keep); NaN for a group that keeps every channel (it is not scored).
    cost : Tensor, shape (n, k) or None
        Transport cost (``None`` for default pruning).
    plan : Tensor, shape (n, k)
        Transport plan (default pruning: the selection plan, ``1/n`` at ``(kept[j], j)``).
    out_map, in_map : Tensor, shape (n, k)
        Merge matrices applied to producer rows and consumer columns.
    method : str
        The ``prune`` method that made this record (one of :data:`METHODS`; ``"default"`` for a group
        that ``on_unmergeable="default"`` pruned by selection).
    assignment : Tensor, shape (n,)
        The kept position each channel sends most of its mass to (-1 for channels dropped by
        default pruning).
    attention : dict
        ``{name: AttentionPlan}``: the per-head plans of the q/k/v dims of every
        ``nn.MultiheadAttention`` the group merged (empty otherwise; see :mod:`._attention`).

    ``plan``, ``out_map`` and ``in_map`` are dense float64 tensors when read, but :func:`prune` stores
    them compactly (:mod:`._compact`): a selection as its kept indices, an exact plan as its nonzeros,
    each map as the rule that derives it from the plan (:func:`merge_matrices`).  The first read of a
    field builds the dense tensor and keeps it in the record (as ``cost`` does), so later reads are
    free and return the same tensor; reading a map keeps the plan too.  Constructed by hand, the
    fields hold whatever tensors are given.
    """

    index: int
    paper_index: int
    name: str
    n: int
    k: int
    sparsity: float
    kept: torch.Tensor
    importance: torch.Tensor
    cost: Optional[torch.Tensor]
    plan: torch.Tensor
    out_map: torch.Tensor
    in_map: torch.Tensor
    members: list = field(default_factory=list, repr=False)
    method: str = "intra-fusion"
    attention: dict = field(default_factory=dict, repr=False)

    @property
    def assignment(self) -> torch.Tensor:
        has = self.plan.sum(1) > 0
        return torch.where(has, self.plan.argmax(1), torch.full_like(has, -1, dtype=torch.long))


def _cost_of(record: GroupResult) -> Optional[torch.Tensor]:
    cost = record.__dict__.get("_cost")
    if isinstance(cost, LazyCost):  # the kept rows, which the plan did not need, are computed now
        cost = record.__dict__["_cost"] = cost.full()
    return cost


def _set_cost(record: GroupResult, cost) -> None:
    record.__dict__["_cost"] = cost


GroupResult.cost = property(_cost_of, _set_cost, doc="Transport cost, shape (n, k), or None for default pruning.")


def _dense_field(name: str, doc: str) -> property:
    def get(record: GroupResult):
        return read_field(record, name)

    def put(record: GroupResult, value) -> None:
        record.__dict__["_" + name] = value

    return property(get, put, doc=doc)


GroupResult.plan = _dense_field("plan", "Transport plan, shape (n, k), float64 (built on first read, then kept).")
GroupResult.out_map = _dense_field("out_map", "Merge matrix of producer rows, shape (n, k) (built on first read).")
GroupResult.in_map = _dense_field("in_map", "Merge matrix of consumer columns, shape (n, k) (built on first read).")


@dataclass
class PruneResult:
    """The pruned model and a record per pruned group.

    Attributes
    ----------
    model : nn.Module
        The new, smaller model (the caller's model is unchanged unless ``inplace=True``).
    groups : list of GroupResult
        One per pruned group, in group order.
    method : str
    config : OTConfig
    params_before, params_after : int
    skipped : list of (int, str, str)
        ``(group index, group name, reason)`` of every selected group left as it was because its
        channels cannot be merged (or pruned); see ``on_unmergeable`` of :func:`prune`.
    """

    model: nn.Module
    groups: List[GroupResult]
    method: str
    config: OTConfig
    params_before: int
    params_after: int
    skipped: List[Tuple[int, str, str]] = field(default_factory=list)

    def group(self, key: Union[int, str]) -> GroupResult:
        """The record of a group, by index or by name."""
        for g in self.groups:
            if g.index == key or g.name == key:
                return g
        raise KeyError(f"group {key!r} was not pruned; pruned groups: {[g.index for g in self.groups]}")

    def summary(self) -> List[dict]:
        """One dict per group (index, paper index, name, n, k, sparsity): a tidy table."""
        return [dict(index=g.index, paper_group=f"G{g.paper_index}", name=g.name, n=g.n, k=g.k,
                     sparsity=g.sparsity) for g in self.groups]


def num_kept(n: int, sparsity: float) -> int:
    """Channels kept out of ``n`` at ``sparsity``: ``floor(n * (1 - sparsity))``, at least 1.

    The floor of the exact product, as the Intra-Fusion paper's code and Torch-Pruning's pruners intend
    (512 channels at 30 % keep 358).  Torch-Pruning computes ``int(n * (1 - sparsity))`` in floating
    point, which keeps one channel fewer whenever the exact product is a whole number that the float
    product lands just below (``n=10, sparsity=0.8``: ``10 * 0.19999999999999996`` gives 1 there, 2
    here).  Keeping 2 of 10 channels is what 80 % sparsity means, so this rule adds ``1e-9`` before the
    floor; the two agree everywhere else.
    """
    return max(1, int(math.floor(n * (1.0 - sparsity) + 1e-9)))
