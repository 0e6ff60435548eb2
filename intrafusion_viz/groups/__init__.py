"""Coupled channel groups: which layers' channels go together, and whether they can be merged.

Owns tracing a model with Torch-Pruning's dependency graph into :class:`Group` objects (a conv, its
BatchNorm, the next layer's input channels; every layer on a residual stream): ``_group`` (what a
group and a member are), ``_checks`` (inputs that fit, the tracer's limits), ``_trace`` (tracing,
the per-model cache, binding a traced recipe to a model), and the per-layer-type rules that say how
each member's channels merge (``_layer_rules``).

May import: ``intrafusion_viz._state`` only.
"""
from ._layer_rules import attention_problem, conv_blocks, kept_count, merge_problem, norm_blocks
from ._trace import Group, Member, TracerError, UnsupportedLayerError, find_groups, resolve_group_keys

__all__ = ["Group", "Member", "TracerError", "UnsupportedLayerError", "find_groups", "resolve_group_keys",
           "attention_problem", "conv_blocks", "kept_count", "merge_problem", "norm_blocks"]
