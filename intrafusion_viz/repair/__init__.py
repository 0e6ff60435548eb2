"""Statistics repair after a merge, and data-aware channel features.

Owns recording activations (``_activations``), re-estimating BatchNorm statistics and REPAIR on a batch
plus activation features (``_data_aware``), the data-free repair that predicts merged channels'
statistics from weights (``_data_free``), Model Folding's channel vectors, merge and DF_REPAIR
(``_fold_repair``, ``method="fold"``) and synthetic inputs made from BatchNorm statistics
(``_synthetic``).

May import: ``merge``, ``plan``, ``groups`` and ``intrafusion_viz._state``.
"""
from ._data_aware import REPAIR_MODES, activation_features, repair
from ._synthetic import synthetic_inputs

__all__ = ["REPAIR_MODES", "activation_features", "repair", "synthetic_inputs"]
