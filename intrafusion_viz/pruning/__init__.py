"""``prune()``: the whole pipeline on a copy of the model, and its result records.

Resolve the groups and sparsities, score importance, plan (transport, clusters or selection), merge,
repair, and record every group's plan in a :class:`PruneResult`: ``_prune`` (``prune`` as its list
of steps), ``_resolve`` (settings, groups, sizes), ``_steps`` (score, plan, merge, repair, record),
``_result`` (the records).

May import: ``repair``, ``merge``, ``plan``, ``groups`` and ``intrafusion_viz._state``.
"""
from ._prune import METHODS, GroupResult, PruneResult, num_kept, prune

__all__ = ["METHODS", "GroupResult", "PruneResult", "num_kept", "prune"]
