"""Cost rows an exact plan never reads, computed only when the record's cost is read.

With the kept channels as targets, an exact solver and uniform masses, each kept channel keeps all
of its own mass in place, so the plan reads only the dropped channels' rows of the cost (at 30 %
sparsity, 30 % of the rows).  :func:`dropped_rows_cost` computes those; :class:`LazyCost` completes
the rest on first read.  For ``p = 1`` the numbers are :func:`cost_matrix`'s bit for bit (the L1
kernel computes each entry alone); for ``p = 2`` each entry is the same float32 dot product, which a
matrix product of fewer rows may round differently in its last bit.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["LazyCost", "kept_rows_unused", "dropped_rows_cost", "dropped_rows_suffice"]


def kept_rows_unused(config, source: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the exact plan never reads the kept channels' cost rows.

    With the kept channels as targets and an exact solver, each kept channel keeps ``min(a_i, b_j)``
    of its own mass in place (:func:`transport_plan`); when ``a_i <= b_j`` for every kept channel
    (uniform masses: ``1/n <= 1/k``) nothing of it is left to move, so its row is never used.
    """
    return (config.p >= 1 and config.target == "most_important" and config.solver == "emd"
            and config.target_mass != "free" and source.numel() > 0
            and float(source.max()) <= float(target.min()) * (1 - 1e-12))


def dropped_rows_suffice(config, source: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether :func:`dropped_rows_cost` gives the plan its whole cost: unit vectors compared at
    ``p = 1`` or ``p = 2`` (not standardised) and :func:`kept_rows_unused`."""
    return (config.p in (1, 2) and config.normalize and not config.standardize
            and kept_rows_unused(config, source, target))


def _distances(a: torch.Tensor, b: Optional[torch.Tensor], p: float,
               rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(m, k) float64 distances between unit rows ``a`` (``a[rows]``) and ``b`` (default ``a``), as
    :func:`cost_matrix` computes them: the L1 kernel, or ``sqrt(2 - 2 a.b)`` for ``p = 2``."""
    if p == 1:
        from ._l1 import l1_distances

        return l1_distances(a, b, rows=rows)
    a = a if rows is None else a.index_select(0, rows)
    return (2.0 - 2.0 * (a @ (a if b is None else b).T)).double().clamp_min_(0).sqrt_()


class LazyCost:
    """A cost matrix whose kept channels' rows are computed on first use.

    Parameters
    ----------
    partial : Tensor, shape (n, k)
        float64; the dropped channels' rows are final, the kept channels' rows zero.
    targets : Tensor, shape (k, d)
        The unit-normalised kept channel vectors (the kept-vs-kept block is their pairwise distance).
    kept : Tensor, shape (k,)
    p : float
        1 or 2: the distance.

    After the plan is solved, :meth:`compact` keeps only the dropped rows of ``partial`` (the kept
    rows are zero until :meth:`full` computes them), which is what a record holds until it is read.
    """

    __slots__ = ("partial", "targets", "kept", "n", "p")

    def __init__(self, partial: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor, p: float = 1):
        self.partial, self.targets, self.kept, self.n, self.p = partial, targets, kept, None, p

    def compact(self) -> "LazyCost":
        """Hold the dropped rows of ``partial`` only (``n - k`` of its ``n`` rows); :meth:`full` puts them back."""
        if self.targets is not None and self.n is None:
            self.n = len(self.partial)
            self.partial = self.partial.index_select(0, self._dropped())
        return self

    def _dropped(self) -> torch.Tensor:
        dropped = torch.ones(self.n, dtype=torch.bool)
        dropped[self.kept] = False
        return torch.nonzero(dropped).flatten()

    def full(self) -> torch.Tensor:
        """The whole (n, k) cost (:func:`cost_matrix`'s; see the module docstring for ``p = 2``)."""
        cost = self.partial
        if self.targets is None:  # already completed
            return cost
        if self.n is not None:  # compacted: the dropped rows back in place, the kept rows zero
            cost = torch.zeros(self.n, len(self.kept), dtype=self.partial.dtype)
            cost.index_copy_(0, self._dropped(), self.partial)
            self.partial, self.n = cost, None
        cost[self.kept] = _distances(self.targets, None, self.p)
        cost[self.kept, torch.arange(len(self.kept))] = 0.0
        self.targets = None
        return cost

    def __getstate__(self):
        return {"partial": self.partial, "targets": self.targets, "kept": self.kept, "n": self.n, "p": self.p}

    def __setstate__(self, state):
        self.n, self.p = None, 1  # (states pickled before compact() or p existed have neither)
        for name, value in state.items():
            setattr(self, name, value)


def dropped_rows_cost(features: torch.Tensor, kept: torch.Tensor, config, inplace: bool = False) -> LazyCost:
    """:func:`cost_matrix` at ``p = 1`` or ``p = 2`` onto the kept channels with only the dropped rows computed.

    ``inplace=True``: ``features`` (a float CPU tensor that nobody reads afterwards) is unit-normalised
    in place and the dropped rows are read where they are, without a copy of them.

    Returns
    -------
    LazyCost
        ``.partial`` is what the plan reads; ``.full()`` gives :func:`cost_matrix`'s result.
    """
    p = 2 if config.p == 2 else 1
    x = features.detach().cpu()
    if not x.is_floating_point():
        x = x.double()
    # _unit_rows, row by row where the rows are needed: the same divisions, one pass fewer over x
    norms = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    kept = torch.as_tensor(kept, dtype=torch.long)
    dropped = torch.ones(len(x), dtype=torch.bool)
    dropped[kept] = False
    dropped = torch.nonzero(dropped).flatten()
    if inplace and x.data_ptr() == features.data_ptr() and x.is_contiguous():
        x.div_(norms)  # the same divisions, every row in place
        targets = x.index_select(0, kept)
        cost = torch.zeros(len(x), len(kept), dtype=torch.float64)
        cost.index_copy_(0, dropped, _distances(x, targets, p, rows=dropped))
        return LazyCost(cost, targets, kept, p)
    targets = x.index_select(0, kept).div_(norms.index_select(0, kept))
    sources = x.index_select(0, dropped).div_(norms.index_select(0, dropped))
    cost = torch.zeros(len(x), len(kept), dtype=torch.float64)
    cost.index_copy_(0, dropped, _distances(sources, targets, p))
    return LazyCost(cost, targets, kept, p)
