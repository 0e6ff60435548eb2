"""The surgery: merge (or cut) a group's channels along a plan.

Owns BatchNorm folding and restoring (``_fold``), the channel vectors a cost compares (``_features``),
magnitude scores of folded weights (``_scores``), the per-call fold memo (``_memo``), the work copy of
a model (``_copy``), the surgery itself, one implementation for every method and model (``_surgery``,
with channel positions in ``_positions``) and the merge through ``nn.MultiheadAttention``
(``_attention``).  Outgoing weights are plan-weighted averages, incoming weights plan-weighted sums,
so merging exact duplicates changes nothing.

May import: ``plan``, ``groups`` and ``intrafusion_viz._state``.
"""
from ._surgery import apply_merge, channel_features, fold_batchnorm, folded_weights

__all__ = ["apply_merge", "channel_features", "fold_batchnorm", "folded_weights"]
