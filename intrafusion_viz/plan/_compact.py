"""Plans and merge maps of :class:`intrafusion_viz.GroupResult` held compactly, made dense on first read.

A pruned group's plan and its two merge maps are ``(n, k)`` float64 matrices; held densely for every
group of a large network they cost 24 bytes x the sum of ``n k`` (6-10 GB on ConvNeXt-L or ViT-L/16,
several times the model).  Yet the plans are sparse: a selection (default pruning) has one nonzero per
kept channel, an exact transport plan at most ``n + k - 1``, a Model Folding plan one per channel.
:func:`intrafusion_viz.prune` therefore keeps

* a plan as a :class:`CompactPlan` (its kept indices for a selection, else its nonzeros; a plan with
  more nonzeros than a third of its entries, such as a Sinkhorn plan, stays dense), and
* each merge map as a :class:`DerivedMap` (the fusion rule it is derived from the plan with),

and :class:`intrafusion_viz.GroupResult` turns them into the dense tensors they stand for when a field
is read (the same numbers as building them densely: the nonzeros are put back where they were, and
the maps are :func:`merge_matrices` of that plan).  :class:`MergeMaps` gives the surgery one group's
maps at a time, just before that group is merged.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["CompactPlan", "DerivedMap", "MergeMaps", "compact_plan", "densify"]


class CompactPlan:
    """An ``(n, k)`` plan held as its nonzeros; :meth:`dense` gives the tensor back, bit for bit.

    Build it with :meth:`selection` (default pruning: ``1 / n`` at ``(kept[j], j)``, what
    :func:`selection_plan` gives) or :func:`compact_plan` (any plan).
    """

    __slots__ = ("n", "k", "rows", "cols", "values", "dtype", "device")

    def __init__(self, n: int, k: int, rows: torch.Tensor, cols: Optional[torch.Tensor],
                 values: Optional[torch.Tensor], dtype: torch.dtype = torch.float64,
                 device: torch.device = torch.device("cpu")):
        self.n, self.k, self.rows, self.cols, self.values = int(n), int(k), rows, cols, values
        self.dtype, self.device = dtype, device

    @classmethod
    def selection(cls, n: int, kept: torch.Tensor) -> "CompactPlan":
        """The selection plan of ``kept`` (``cols`` and ``values`` implied)."""
        kept = torch.as_tensor(kept, dtype=torch.long)
        return cls(n, len(kept), kept, None, None)

    @property
    def is_selection(self) -> bool:
        """Whether this is a selection plan (stored as its kept indices only)."""
        return self.values is None

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.n, self.k)

    @property
    def nbytes(self) -> int:
        """Bytes held (the dense plan would hold ``8 n k``)."""
        return sum(t.numel() * t.element_size() for t in (self.rows, self.cols, self.values) if t is not None)

    def dense(self) -> torch.Tensor:
        """The ``(n, k)`` plan as a new dense tensor."""
        if self.values is None:
            from ._transport import selection_plan

            return selection_plan(self.n, self.rows)
        plan = torch.zeros(self.n, self.k, dtype=self.dtype, device=self.device)
        plan[self.rows, self.cols] = self.values
        return plan

    def __repr__(self) -> str:
        what = "selection" if self.is_selection else f"{len(self.rows)} nonzeros"
        return f"CompactPlan({self.n}x{self.k}, {what})"


def compact_plan(plan: torch.Tensor):
    """``plan`` as a :class:`CompactPlan` when its nonzeros take less room than the dense tensor, else ``plan``.

    Each nonzero costs two int64 indices and its value (24 bytes against 8 per dense entry), so plans
    with more nonzeros than a third of their entries (Sinkhorn's) stay dense.
    """
    if not torch.is_tensor(plan) or plan.dim() != 2 or plan.layout != torch.strided:
        return plan
    rows, cols = torch.nonzero(plan, as_tuple=True)
    if 3 * len(rows) >= plan.numel():
        return plan
    return CompactPlan(plan.shape[0], plan.shape[1], rows, cols, plan[rows, cols], plan.dtype, plan.device)


class DerivedMap:
    """A merge map not stored: ``merge_matrices(plan, fusion)[which]`` of the record's plan when read."""

    __slots__ = ("fusion", "which")

    def __init__(self, fusion: str, which: int):
        self.fusion, self.which = fusion, which

    def build(self, plan: torch.Tensor) -> torch.Tensor:
        from ._transport import merge_matrices

        return merge_matrices(plan, self.fusion)[self.which]

    def __repr__(self) -> str:
        return f"DerivedMap({self.fusion!r}, {'out' if self.which == 0 else 'in'})"


def densify(value):
    """A plan field's value as a tensor: :class:`CompactPlan` made dense, anything else as it is."""
    return value.dense() if isinstance(value, CompactPlan) else value


class MergeMaps:
    """One group's ``(out_map, in_map, norm_map)``, built when the surgery reaches the group.

    Parameters
    ----------
    plan : CompactPlan or Tensor
    kept : Tensor, shape (k,)
    fusion : str
        The fusion rule of the maps (:func:`merge_matrices`); the BatchNorm map ``norm_map`` is
        ``out_map`` for ``"barycentric"`` and the selection of ``kept`` otherwise.
    """

    __slots__ = ("plan", "kept", "fusion")

    def __init__(self, plan, kept: torch.Tensor, fusion: str = "barycentric"):
        self.plan, self.kept, self.fusion = plan, kept, fusion

    @property
    def selection(self) -> bool:
        """True when the maps are known to be the selection of ``kept`` without building them."""
        return isinstance(self.plan, CompactPlan) and self.plan.is_selection and self.fusion == "barycentric"

    def build(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(out_map, in_map, norm_map)``, dense, as :func:`intrafusion_viz.prune` used to hold them."""
        from ._transport import merge_matrices, selection_plan

        if self.selection:  # merge_matrices of a selection plan: both maps are its 0/1 matrix (one tensor here)
            return (self._selection_map(),) * 3
        plan = densify(self.plan)
        out_map, in_map = merge_matrices(plan, self.fusion)
        if self.fusion == "barycentric":
            return out_map, in_map, out_map
        return out_map, in_map, merge_matrices(selection_plan(plan.shape[0], self.kept))[0]

    def _selection_map(self) -> torch.Tensor:
        """1 at ``(kept[j], j)``, 0 elsewhere: ``merge_matrices(selection_plan(n, kept))`` gives it for both maps."""
        n, k = self.plan.shape
        sel = torch.zeros(n, k, dtype=torch.float64)
        sel[torch.as_tensor(self.kept, dtype=torch.long), torch.arange(k)] = 1.0
        return sel

    def norm_map(self) -> torch.Tensor:
        """``build()[2]`` alone."""
        from ._transport import merge_matrices, selection_plan

        if self.selection:
            return self._selection_map()
        if self.fusion == "barycentric":
            return merge_matrices(densify(self.plan))[0]
        return merge_matrices(selection_plan(self.plan.shape[0], self.kept))[0]


_MISSING = object()


def read_field(record, name: str, cache: bool = True):
    """``record.<name>`` (``"plan"``, ``"out_map"`` or ``"in_map"``) as a dense tensor.

    ``cache=False`` builds it without keeping it in the record (what :func:`prune`'s own repair reads,
    so that a prune holds no dense plan afterwards); records of other types are read as they are.
    """
    raw = getattr(record, "__dict__", {}).get("_" + name, _MISSING)
    if raw is _MISSING:
        return getattr(record, name)
    if isinstance(raw, CompactPlan):
        value = raw.dense()
    elif isinstance(raw, DerivedMap):
        value = raw.build(read_field(record, "plan", cache))
    else:
        return raw
    if cache:
        record.__dict__["_" + name] = value
    return value
