"""Plans: which channels to keep and where the others go.

Owns importance scores (``_importance``), the :class:`OTConfig` settings and the default-method rule
(``_config``), channel costs, masses and transport plans (``_transport``, with the p = 1 kernel in
``_l1``), centroid targets and size-bounded clusters (``_centroids``), Model Folding's Hartigan k-means
(``_hartigan``, ``method="fold"``), Lloyd's k-means for centroid targets (``_kmeans``), per-block
selection for grouped convs (``_blocks``), and the compact records of plans (``_compact``).

May import: ``groups`` and ``intrafusion_viz._state``.
"""
from ._config import OTConfig
from ._importance import IMPORTANCES, group_importance, resolve_importance
from ._transport import cost_matrix, masses, merge_matrices, selection_plan, transport_plan

__all__ = ["IMPORTANCES", "group_importance", "resolve_importance",
           "OTConfig", "cost_matrix", "masses", "merge_matrices", "selection_plan", "transport_plan"]
