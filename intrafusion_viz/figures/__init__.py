"""Plotly figures of what pruning did: transport plans, neuron similarity, merges, accuracy and size.

Every helper builds and returns a ``plotly.graph_objects.Figure`` (never shows it, changes no global
state) from what :func:`intrafusion_viz.prune` recorded, or from tidy sweep records.
"""
from ._accuracy import accuracy_vs_sparsity

__all__ = ["accuracy_vs_sparsity"]
