"""Cost rows an exact plan never reads, computed only when the record's cost is read.

With the kept channels as targets, an exact solver and uniform masses, each kept channel keeps all
of its own mass in place, so the plan reads only the dropped channels' rows of the cost.
:func:`dropped_rows_cost` computes those; :class:`LazyCost` completes the rest on first read.
"""
from __future__ import annotations

import torch

__all__ = ["LazyCost", "kept_rows_unused", "dropped_rows_cost"]


def kept_rows_unused(config, source: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the exact plan never reads the kept channels' cost rows.

    With the kept channels as targets and an exact solver, each kept channel keeps ``min(a_i, b_j)``
    of its own mass in place (:func:`transport_plan`); when ``a_i <= b_j`` for every kept channel
    (uniform masses: ``1/n <= 1/k``) nothing of it is left to move, so its row is never used.
    """
    return (config.p >= 1 and config.target == "most_important" and config.solver == "emd"
            and config.target_mass != "free" and source.numel() > 0
            and float(source.max()) <= float(target.min()) * (1 - 1e-12))


class LazyCost:
    """A cost matrix whose kept channels' rows are computed on first use.

    Parameters
    ----------
    partial : Tensor, shape (n, k)
        float64; the dropped channels' rows are final, the kept channels' rows zero.
    targets : Tensor, shape (k, d)
        The unit-normalised kept channel vectors (the kept-vs-kept block is their pairwise L1 distance).
    kept : Tensor, shape (k,)

    After the plan is solved, :meth:`compact` keeps only the dropped rows of ``partial`` (the kept
    rows are zero until :meth:`full` computes them), which is what a record holds until it is read.
    """

    __slots__ = ("partial", "targets", "kept", "n")

    def __init__(self, partial: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor):
        self.partial, self.targets, self.kept, self.n = partial, targets, kept, None

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
        """The whole (n, k) cost, equal bit for bit to :func:`cost_matrix`'s."""
        from ._l1 import l1_distances

        cost = self.partial
        if self.targets is None:  # already completed
            return cost
        if self.n is not None:  # compacted: the dropped rows back in place, the kept rows zero
            cost = torch.zeros(self.n, len(self.kept), dtype=self.partial.dtype)
            cost.index_copy_(0, self._dropped(), self.partial)
            self.partial, self.n = cost, None
        cost[self.kept] = l1_distances(self.targets)
        cost[self.kept, torch.arange(len(self.kept))] = 0.0
        self.targets = None
        return cost

    def __getstate__(self):
        return {"partial": self.partial, "targets": self.targets, "kept": self.kept, "n": self.n}

    def __setstate__(self, state):
        self.n = None  # (states pickled before compact() existed have no "n")
        for name, value in state.items():
            setattr(self, name, value)


def dropped_rows_cost(features: torch.Tensor, kept: torch.Tensor, config, inplace: bool = False) -> LazyCost:
    """:func:`cost_matrix` at ``p = 1`` onto the kept channels with only the dropped rows computed.

    ``inplace=True``: ``features`` (a float CPU tensor that nobody reads afterwards) is unit-normalised
    in place and the dropped rows are read where they are, without a copy of them.

    Returns
    -------
    LazyCost
        ``.partial`` is what the plan reads; ``.full()`` gives :func:`cost_matrix`'s result exactly.
    """
    from ._l1 import l1_distances

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
        cost.index_copy_(0, dropped, l1_distances(x, targets, rows=dropped))
        return LazyCost(cost, targets, kept)
    targets = x.index_select(0, kept).div_(norms.index_select(0, kept))
    sources = x.index_select(0, dropped).div_(norms.index_select(0, dropped))
    cost = torch.zeros(len(x), len(kept), dtype=torch.float64)
    cost.index_copy_(0, dropped, l1_distances(sources, targets))
    return LazyCost(cost, targets, kept)

