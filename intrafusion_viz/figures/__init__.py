"""Plotly figures of what pruning did: transport plans, neuron similarity, merges, accuracy and size.

Every helper builds and returns a ``plotly.graph_objects.Figure`` (never shows it, changes no global
state) from what :func:`intrafusion_viz.prune` recorded (a ``GroupResult``), or from tidy records.
"""
from ._accuracy import accuracy_vs_sparsity, sweep_bars, sweep_heatmap
from ._groupmap import group_map
from ._merges import merge_gallery, producer_rows
from ._plans import plan_comparison, plan_heatmap, source_order
from ._similarity import embed_features, neuron_embedding, similarity_matrix
from ._size import cpu_latency_ms, model_size, size_comparison
from ._training import finetune_figure, fusion_embedding, fusion_plan, pipeline_gantt, pipeline_timeline

__all__ = [
    "plan_heatmap", "plan_comparison", "source_order",
    "similarity_matrix", "neuron_embedding", "embed_features",
    "merge_gallery", "producer_rows",
    "accuracy_vs_sparsity", "sweep_heatmap", "sweep_bars",
    "size_comparison", "model_size", "cpu_latency_ms",
    "pipeline_timeline", "fusion_embedding", "finetune_figure",
    "pipeline_gantt", "fusion_plan", "group_map",
]
